// Gathers one device round's logs ($OUT: gpu.txt, bench.log, js-round.json, peer.log, ops.log,
// model.log) into <card>-round3.json and prints the table mimic vs peer with ratios and ceilings.
//   node bench/gpu/round3.mjs $OUT
// Ceilings: copy bandwidth and bf16 GEMM rate measured by the peer in the same call; decode bound =
// copy ÷ bytes per token (2.24 GB, ../shared/DESIGN.md); training floor = bf16 rate ÷ 17.2 GFLOP a
// token with recomputation (12.9 without).
import fs from 'node:fs'
import path from 'node:path'

const dir = process.argv[2] || process.env.OUT || '/tmp/out'
const read = (f) => { try { return fs.readFileSync(path.join(dir, f), 'utf8') } catch { return '' } }
const card = read('gpu.txt').split(',')[0].trim() || 'unknown'
const slug = card.toLowerCase().includes('h200') ? 'h200' : card.toLowerCase().includes('h100') ? 'h100' : 'gpu'
const bench = read('bench.log')
const num = (re) => { const m = bench.match(re); return m ? Number(m[1]) : null }
let js = {}
try { js = JSON.parse(read('js-round.json')).phases?.bench ?? {} } catch {}
const peer = {}
for (const line of read('peer.log').split('\n')) {
  if (!line.startsWith('{')) continue
  try {
    const o = JSON.parse(line)
    if (o.what === 'peft_lora_train') peer[`peft_${o.bs}x${o.seq}`] = { tok_s: o.tok_s, peak_GiB: o.peak_GiB }
    else if (o.what !== 'device') peer[o.what] = o.value
  } catch {}
}
const rows = (f) => { const t = read(f); const m = t.match(/(\d+) rows, (\d+) failed/); return m ? `${m[1] - m[2]}/${m[1]}` : 'n/a' }
const copy = peer.copy_GBps ?? null, tflops = peer.bf16_gemm_TFLOPs ?? null
const bytesPerToken = 2.24e9
const decodeBound = copy ? (copy * 1e9) / bytesPerToken : null
const floorRec = tflops ? (tflops * 1e12) / 17.2e9 : null, floorNo = tflops ? (tflops * 1e12) / 12.9e9 : null
const out = {
  card,
  round: 3,
  ceilings: { copy_GBps: copy, bf16_gemm_TFLOPs: tflops, decode_bound_tok_s: decodeBound, train_floor_recompute_tok_s: floorRec,
    train_floor_no_recompute_tok_s: floorNo, bytes_per_decode_token: bytesPerToken },
  mimic_cpp: {
    decode_tok_s: num(/BENCH decode_tok_s ([\d.]+)/),
    decode_tok_s_greedy: num(/BENCH decode_tok_s_greedy ([\d.]+)/),
    decode_tok_s_lora16_greedy: num(/BENCH decode_tok_s_lora16_greedy ([\d.]+)/),
    decode_tok_s_gemv_eager: num(/BENCH decode_tok_s_gemv_eager ([\d.]+)/),
    decode_tok_s_dequant_cublas: num(/BENCH decode_tok_s_dequant_cublas ([\d.]+)/),
    ttft100_ms: num(/BENCH ttft100_ms ([\d.]+)/),
    prefill512_tok_s: num(/BENCH prefill512_tok_s ([\d.]+)/),
    load_gpu_nf4_s: num(/BENCH load_gpu_nf4_s ([\d.]+)/),
    train_8x512_recompute: { tok_s: num(/recompute=1 tok_s ([\d.]+)/), peak_GiB: num(/recompute=1 tok_s [\d.]+ peak_device_GiB ([\d.]+)/) },
    train_8x512_no_recompute: { tok_s: num(/recompute=0 tok_s ([\d.]+)/), peak_GiB: num(/recompute=0 tok_s [\d.]+ peak_device_GiB ([\d.]+)/) },
  },
  mimic_js: js,
  peer_same_call: peer,
  checks: { cuda_op_rows: rows('ops.log'), model_rows: rows('model.log'),
    js: (read('js.log').match(/JS ROUND: [^\n]*/) || ['n/a'])[0] },
}
const r = (a, b) => (a != null && b ? a / b : null)
const jsT = (k) => js[k]?.tok_s ?? null, jsP = (k) => js[k]?.peak_GiB ?? null
out.ratios = {
  train_8x512_recompute_vs_peft_bf16_no_ckpt: r(jsT('train_8x512_recompute'), peer.peft_8x512?.tok_s),
  train_2x512_recompute_vs_peft_bf16_2x512: r(jsT('train_2x512_recompute'), peer.peft_2x512?.tok_s),
  decode_vs_hf_generate: r(js.decode_tok_s, peer.hf_generate_decode_tok_s),
  decode_js_vs_bound: r(js.decode_tok_s, decodeBound),
  decode_cpp_vs_bound: r(out.mimic_cpp.decode_tok_s, decodeBound),
  train_8x512_recompute_vs_floor: r(jsT('train_8x512_recompute'), floorRec),
}
fs.writeFileSync(path.join(dir, `${slug}-round3.json`), JSON.stringify(out, null, 1) + '\n')

const f = (x, d = 0) => (x == null ? '—' : Number(x).toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }))
const lines = [
  `## round 3 — ${card} (one device call; peer in the same call)`,
  `ceilings: copy ${f(copy)} GB/s, bf16 GEMM ${f(tflops)} TFLOP/s → decode bound ${f(decodeBound)} tok/s (2.24 GB/token), train floor ${f(floorRec)} tok/s (recompute)`,
  '| what | mimic | peer (same call) | ratio vs peer | vs ceiling | target |',
  '|---|---|---|---|---|---|',
  `| train 8×512, recompute (JS) | ${f(jsT('train_8x512_recompute'))} tok/s, ${f(jsP('train_8x512_recompute'), 2)} GiB | PEFT bf16 no ckpt ${f(peer.peft_8x512?.tok_s)} tok/s, ${f(peer.peft_8x512?.peak_GiB, 1)} GiB | ${f(out.ratios.train_8x512_recompute_vs_peft_bf16_no_ckpt, 2)}× | ${f(out.ratios.train_8x512_recompute_vs_floor, 2)} of floor | ≥ 2.5×, ≤ 8 GiB |`,
  `| train 8×512, no recompute (JS) | ${f(jsT('train_8x512_norecompute'))} tok/s, ${f(jsP('train_8x512_norecompute'), 2)} GiB | (same) | ${f(r(jsT('train_8x512_norecompute'), peer.peft_8x512?.tok_s), 2)}× | ${f(r(jsT('train_8x512_norecompute'), floorNo), 2)} of floor | |`,
  `| train 2×512, recompute (JS) | ${f(jsT('train_2x512_recompute'))} tok/s, ${f(jsP('train_2x512_recompute'), 2)} GiB | PEFT bf16 2×512 ${f(peer.peft_2x512?.tok_s)} tok/s | ${f(out.ratios.train_2x512_recompute_vs_peft_bf16_2x512, 2)}× | | ≥ 15,000 |`,
  `| decode batch 1 (JS, greedy, session.next) | ${f(js.decode_tok_s)} tok/s (run-ahead off: ${f(js.decode_tok_s_no_run_ahead)}) | HF generate ${f(peer.hf_generate_decode_tok_s, 1)} tok/s | ${f(out.ratios.decode_vs_hf_generate, 1)}× | ${f(out.ratios.decode_js_vs_bound, 2)} of bound | ≥ 0.70 |`,
  `| decode batch 1 (C++, top-k 40; graph) | ${f(out.mimic_cpp.decode_tok_s)} tok/s (greedy ${f(out.mimic_cpp.decode_tok_s_greedy)}) | | | ${f(out.ratios.decode_cpp_vs_bound, 2)} of bound | |`,
  `| decode batch 1, LoRA r=16 on all seven (JS / C++, greedy) | ${f(js.decode_lora16_tok_s)} / ${f(out.mimic_cpp.decode_tok_s_lora16_greedy)} tok/s | | | ${f(r(js.decode_lora16_tok_s, decodeBound), 2)} of bound | |`,
  `| decode, same call: eager GEMV / dequant+cuBLAS | ${f(out.mimic_cpp.decode_tok_s_gemv_eager)} / ${f(out.mimic_cpp.decode_tok_s_dequant_cublas)} tok/s | | | | |`,
  `| prefill 512 (JS / C++) | ${f(js.prefill512_tok_s)} / ${f(out.mimic_cpp.prefill512_tok_s)} tok/s | | | | ≥ 40,000 |`,
  `| TTFT, 100-token prompt (JS / C++) | ${f(js.ttft100_ms, 1)} / ${f(out.mimic_cpp.ttft100_ms, 1)} ms | | | | ≤ 15 ms |`,
  `| load 3B → NF4 on GPU (JS) | ${f(js.load_s, 2)} s | | | | ≤ 2 s |`,
  `checks: CUDA op rows ${out.checks.cuda_op_rows}, model rows ${out.checks.model_rows}; ${out.checks.js}`,
]
console.log(lines.join('\n'))
fs.writeFileSync(path.join(dir, 'table.md'), lines.join('\n') + '\n')
