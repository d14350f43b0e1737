// Gathers round 5's logs ($OUT: gpu.txt, serve-1.json, serve-32.json, batch.log, model.log)
// into <card>-round5-serve.json and prints the table: serve at 1 vs 32 clients (aggregate tok/s,
// ratio, p50/p99, errors), the C++ batched-step rates by batch size, the batch-vs-single rows.
//   node bench/gpu/round5.mjs $OUT
import fs from 'node:fs'
import path from 'node:path'

const dir = process.argv[2] || process.env.OUT || '/tmp/out'
const read = (f) => { try { return fs.readFileSync(path.join(dir, f), 'utf8') } catch { return '' } }
const json = (f) => { try { return JSON.parse(read(f)) } catch { return null } }
const card = read('gpu.txt').split(',')[0].trim() || 'unknown'
const slug = card.toLowerCase().includes('h200') ? 'h200' : card.toLowerCase().includes('h100') ? 'h100' : 'gpu'
const s1 = json('serve-1.json'), s32 = json('serve-32.json')
const steps = []
for (const m of read('batch.log').matchAll(/BENCH batch S=(\d+) route (\w+) step_ms ([\d.]+) tok_s ([\d.]+) \(forward alone ([\d.]+) ms, ([\d.]+) tok\/s\)/g))
  steps.push({ S: +m[1], route: m[2], step_ms: +m[3], tok_s: +m[4], forward_ms: +m[5], forward_tok_s: +m[6] })
const rowsOf = (t) => t.split('\n').filter((l) => l.startsWith('ROW ') && l.includes('|')).map((l) => {
  const c = l.slice(4).split('|').map((x) => x.trim())
  return { op: c[0], check: c[1], max_rel: Number(c[2]), tol: Number(c[3]), pass: c[4] === 'PASS' }
}).filter((r) => r.op !== 'op')
const allRows = [...rowsOf(read('model.log')), ...rowsOf(read('batch.log'))]
const batchRows = allRows.filter((r) => r.op.startsWith('batch'))
const ratio = s1?.tokensPerSecond && s32?.tokensPerSecond ? s32.tokensPerSecond / s1.tokensPerSecond : null
const out = {
  card, round: 5, what: 'mimic serve under load (POST /v1/completions, 128 max tokens, temperature 0.7 top-k 40), 3B-shaped random NF4 model, --max-sessions 32',
  batch_checks: [...read('model.log').split('\n'), ...read('batch.log').split('\n')].filter((l) => l.startsWith('BATCHCHECK')).map((l) => l.slice(11)),
  serve_1_client: s1, serve_32_clients: s32, aggregate_ratio_32_vs_1: ratio, target_ratio: 8,
  cpp_batched_step: steps,
  checks: { rows: allRows.length, failed: allRows.filter((r) => !r.pass).map((r) => `${r.op} | ${r.check} | ${r.max_rel}`), batch_rows: batchRows },
}
fs.writeFileSync(path.join(dir, `${slug}-round5-serve.json`), JSON.stringify(out, null, 1) + '\n')
const f = (x, d = 0) => (x == null || Number.isNaN(x) ? '—' : Number(x).toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }))
const lines = [
  `## round 5 — ${card}: serve, 3B NF4, continuous batching on the GPU`,
  '| clients | aggregate tok/s | req/s | p50 ms | p99 ms | errors | requests |',
  '|---|---|---|---|---|---|---|',
  ...[[1, s1], [32, s32]].map(([c, s]) => `| ${c} | ${f(s?.tokensPerSecond, 1)} | ${f(s?.requestsPerSecond, 2)} | ${f(s?.p50Ms)} | ${f(s?.p99Ms)} | ${s?.errors ?? '—'} | ${s ? `${s.requestsDone}/${s.requestsPlanned}` : '—'} |`),
  `32 vs 1 client: ${f(ratio, 2)}× (target ≥ 8×)`,
  '| S (C++ batched step) | route | step ms | tok/s (greedy sampling incl.) | forward alone tok/s |',
  '|---|---|---|---|---|',
  ...steps.map((s) => `| ${s.S} | ${s.route} | ${f(s.step_ms, 2)} | ${f(s.tok_s)} | ${f(s.forward_tok_s)} |`),
  ...out.batch_checks,
  `checks: ${allRows.length - out.checks.failed.length}/${allRows.length} rows pass; batch rows: ${batchRows.filter((r) => r.pass).length}/${batchRows.length}`,
]
console.log(lines.join('\n'))
