// Tokens/s per configuration, mimic vs the PyTorch peer of the same device call, as an SVG.
//   node bench/chart.mjs [bench/results/h200-round9.json] [bench/results/tokens-per-second.svg]
// Each configuration's bars share one linear scale (its own largest value), so configurations of
// very different speeds (decode vs training) stay readable; the numbers are printed on the bars.
import fs from 'node:fs'

const src = process.argv[2] || 'bench/results/h200-round9.json'
const dst = process.argv[3] || 'bench/results/tokens-per-second.svg'
const R = JSON.parse(fs.readFileSync(src, 'utf8'))
// A round without the JS phase (mimic_js null) charts the C++ bench's figures, and says so.
const js = R.mimic_js || {}, peer = R.peer_same_call || {}, cpp = R.mimic_cpp || {}
const via = R.mimic_js ? 'JS session.next' : 'C++ bench, greedy'
const groups = [
  { name: 'train 8×512 (mimic: NF4 + recompute; peer: PEFT bf16, no ckpt)', mimic: js.train_8x512_recompute?.tok_s ?? cpp.train_8x512_recompute?.tok_s, peer: peer.peft_8x512?.tok_s },
  { name: 'train 8×512 (mimic: NF4, no recompute)', mimic: js.train_8x512_norecompute?.tok_s ?? cpp.train_8x512_no_recompute?.tok_s, peer: peer.peft_8x512?.tok_s },
  { name: 'train 2×512 (mimic: NF4 + recompute; peer: PEFT bf16)', mimic: js.train_2x512_recompute?.tok_s ?? cpp.train_2x512_recompute?.tok_s, peer: peer.peft_2x512?.tok_s },
  { name: `decode batch 1 (mimic: ${via}; peer: HF generate)`, mimic: js.decode_tok_s ?? cpp.decode_tok_s_greedy, peer: peer.hf_generate_decode_tok_s,
    bound: R.ceilings?.decode_bound_tok_s },
  { name: `decode batch 1 with LoRA r=16 on all seven (mimic: ${via})`, mimic: js.decode_lora16_tok_s ?? cpp.decode_tok_s_lora16_greedy, peer: null,
    bound: R.ceilings?.decode_bound_tok_s },
  { name: 'prefill 512 tokens (mimic only)', mimic: js.prefill512_tok_s ?? cpp.prefill512_tok_s, peer: null },
]
const W = 860, left = 20, barMax = 560, rowH = 22, gap = 34
let y = 58
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;')
const fmt = (x) => Math.round(x).toLocaleString('en-US')
const parts = []
for (const g of groups) {
  const max = Math.max(g.mimic || 0, g.peer || 0, g.bound || 0) || 1
  parts.push(`<text x="${left}" y="${y}" font-size="13" font-weight="bold">${esc(g.name)}</text>`)
  y += 8
  const bars = [['mimic', g.mimic, '#2b6cb0'], ['peer', g.peer, '#a0aec0']]
  if (g.bound) bars.push(['bandwidth bound', g.bound, '#e2e8f0'])
  for (const [label, v, color] of bars) {
    if (v == null) continue
    const w = Math.max(1, (v / max) * barMax)
    parts.push(`<rect x="${left + 120}" y="${y}" width="${w.toFixed(1)}" height="${rowH - 6}" fill="${color}"/>`)
    parts.push(`<text x="${left}" y="${y + 12}" font-size="12">${label}</text>`)
    parts.push(`<text x="${left + 126 + w}" y="${y + 12}" font-size="12">${fmt(v)} tok/s</text>`)
    y += rowH
  }
  if (g.mimic && g.peer) parts.push(`<text x="${left + 120}" y="${y + 10}" font-size="11" fill="#4a5568">${(g.mimic / g.peer).toFixed(2)}× the peer</text>`)
  y += gap
}
const H = y + 10
const title = `tokens/s per configuration — ${esc(R.card)}, round ${R.round ?? ''} (peer measured ${R.mimic_js ? 'in the same device call' : 'on the same machine'})`
const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="${left}" y="26" font-size="15" font-weight="bold">${title}</text>
<text x="${left}" y="44" font-size="11" fill="#4a5568">each configuration on its own linear scale; source ${esc(src)}</text>
${parts.join('\n')}
</svg>
`
fs.writeFileSync(dst, svg)
console.log(`wrote ${dst} (${groups.length} configurations)`)
