import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { runPrepare } from './run-prepare.ts'

const FX = join(import.meta.dirname, '../../fixtures/data')
const CSV = join(FX, 'processed_messages.csv')

const run = runPrepare

t.test('mimic prepare writes train/val and prints the report', async (t) => {
  const dir = t.testdir({})
  const out = join(dir, 'train.jsonl')
  const r = await run([CSV, '--out', out, '--facts', join(FX, 'facts.jsonl'), '--fact-repeats', '2'])
  t.equal(r.code, undefined)
  t.equal(r.err, '')
  t.match(r.out, /messages read\s+25\n/)
  t.match(r.out, /messages kept\s+16\n/)
  t.match(r.out, /\n  since\s+2\n  group\s+2\n  reaction\s+2\n  attachment\s+1\n  emoji\s+1\n  empty\s+1\n  malformed\s+1\n/)
  t.match(r.out, /contacts kept\s+3\n/)
  t.match(r.out, /pairs\s+6 \(1 contact turns unanswered\)\n/)
  t.match(r.out, /fact pairs\s+4\n/)
  t.match(r.out, new RegExp(`written\\s+train 9 → ${out}, val 1 → ${join(dir, 'val.jsonl')}`))
  t.equal(readFileSync(out, 'utf8').trimEnd().split('\n').length, 9)
})

t.test('flags reach prepare; --json', async (t) => {
  const dir = t.testdir({})
  const out = join(dir, 'train.jsonl')
  const r = await run([CSV, '-o', out, '--since', '2000-01-01', '--top-contacts', '1', '--reply-window', '120', '--val-fraction', '0',
    '--context-turns', '1', '--keep-case', '--keep-emoji', '--include-groups', '--scrub', '--json'])
  t.equal(r.code, undefined, r.err)
  const rep = JSON.parse(r.out)
  t.equal(rep.dropped.topContacts, 7)
  t.equal(rep.dropped.group, 0)
  t.equal(rep.val, 0)
  const first = JSON.parse(readFileSync(out, 'utf8').split('\n')[0])
  t.same(first, { input: 'old message', output: 'old reply', context: [] })
  t.ok(readFileSync(out, 'utf8').includes('PERFECT, see you at 7 🌮🌮'))
})

t.test('errors: exit code 1 and a message', async (t) => {
  const dir = t.testdir({ 'old.csv': 'Timestamp,Readable Time,Sender,Sender ID,Message,Group Chat,Group Chat Name,Sent by Me,To\n1500000000,,Zed,,hi,0,,0,Zed\n' })
  const missing = await run([join(dir, 'nope.csv'), '--out', join(dir, 't.jsonl')])
  t.equal(missing.code, 1)
  t.match(missing.err, /^mimic prepare: cannot read .*nope\.csv: no such file\n$/)
  const empty = await run([join(dir, 'old.csv'), '--out', join(dir, 't.jsonl')])
  t.equal(empty.code, 1)
  t.match(empty.out, /nothing written: every message was dropped by the rules: since 1/)
  const bad = await run([CSV, '--out', join(dir, 't.jsonl'), '--val-fraction', '2'])
  t.match(bad.err, /--val-fraction must be a number in \[0, 1\)/)
  const noOut = await run([CSV])
  t.match(noOut.err, /required option '-o, --out <file>' not specified/)
})
