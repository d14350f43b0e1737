/**
 * Benchmark of `prepare()` on a generated history of 1,000,000 messages (CSV).
 *
 * Run (from the repository root; tap's own TypeScript loader, no extra dependency):
 *
 *   TS_NODE_TRANSPILE_ONLY=1 node --import @tapjs/typescript/import bench/prepare.ts [messages]
 *
 * Prints the generation time, then the time of prepare() (read + rules + pairs + split +
 * write) and messages per second; `--json` prints one JSON line instead. Aim: the million in
 * under 10 s on 2 cores.
 */
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir, cpus } from 'node:os'
import { join } from 'node:path'
import { prepare } from '../lib/data/prepare.ts'
import { generateCsv } from './prepare-gen.ts'

const args = process.argv.slice(2)
const json = args.includes('--json')
const n = Number(args.find((a) => /^\d+$/.test(a)) ?? 1_000_000)
const dir = await mkdtemp(join(tmpdir(), 'mimic-bench-prepare-'))
try {
  const csv = join(dir, 'processed_messages.csv')
  let t0 = performance.now()
  await generateCsv(csv, n)
  const gen = (performance.now() - t0) / 1000
  const size = (await stat(csv)).size
  if (!json) console.log(`generated ${n.toLocaleString('en-US')} messages (${(size / 1e6).toFixed(1)} MB) in ${gen.toFixed(2)} s`)
  t0 = performance.now()
  const r = await prepare({ sources: [csv], out: join(dir, 'train.jsonl'), since: '2021-01-01' })
  const secs = (performance.now() - t0) / 1000
  const rate = r.messagesRead / secs
  const rss = process.memoryUsage().rss / 1e6
  if (json) {
    console.log(JSON.stringify({ messages: r.messagesRead, seconds: secs, messagesPerSecond: rate, train: r.train, val: r.val, rssMB: rss }))
  } else {
    console.log(`prepare: ${r.messagesRead.toLocaleString('en-US')} messages → ${r.train} train + ${r.val} val pairs in ${secs.toFixed(2)} s`)
    console.log(`         ${Math.round(rate).toLocaleString('en-US')} messages/s  (rss ${rss.toFixed(0)} MB, ${cpus().length} cpus, node ${process.version})`)
    console.log(`         dropped: ${JSON.stringify(r.dropped)}`)
  }
} finally {
  await rm(dir, { recursive: true, force: true })
}
