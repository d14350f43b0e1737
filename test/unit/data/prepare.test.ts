import t from 'tap'
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { prepare } from '../../../lib/data/index.ts'

const FX = join(import.meta.dirname, '../../fixtures/data')
const CSV = join(FX, 'processed_messages.csv')
const lines = (p: string) => readFileSync(p, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l))

const ALL = [
  { input: 'want to grab dinner tonight?', output: 'yeah | bartaco?' },
  { input: 'perfect, see you at 7', output: 'sooo hungry (lol)' },
  { input: 'she said "hi", then left', output: 'wait what' },
  { input: 'line one line two', output: 'ok | got it (call me at 555-123-4567)' },
  { input: 'yo | you up?', output: 'yes' },
  { input: 'hey, café tomorrow?', output: 'sure — où?' },
]

t.test('the fixture CSV with default rules: exact pairs and drops', async (t) => {
  const dir = t.testdir({})
  const out = join(dir, 'train.jsonl')
  const r = await prepare({ sources: [CSV], out, valFraction: 0 })
  t.same(lines(out), ALL)
  t.notOk(readFileSync(out, 'utf8').includes('DONE'), 'no stop marker')
  t.match(readFileSync(out, 'utf8'), /^\{"input":"want to grab dinner tonight\?","output":"yeah \| bartaco\?"\}\n/, 'input then output, one object a line')
  t.equal(r.messagesRead, 25)
  t.equal(r.messagesKept, 16)
  t.same(r.dropped, { tapback: 0, system: 0, since: 2, group: 2, topContacts: 0, reaction: 2, attachment: 1, emoji: 1, empty: 1, malformed: 1 })
  t.equal(r.contactsKept, 3)
  t.same(r.contacts, [
    { contact: 'Alice Smith', messages: 14 },
    { contact: 'Bob', messages: 5 },
    { contact: 'Carol', messages: 2 },
  ])
  t.equal(r.merged, 2)
  t.equal(r.unanswered, 1)
  t.equal(r.pairs, 6)
  t.equal(r.train, 6)
  t.equal(r.val, 0)
  t.same(r.written, { train: out })
  t.same(r.sources, [{ path: CSV, kind: 'csv', messages: 25, pairs: 0 }])
  t.same(r.warnings, [`${CSV}: 1 unreadable row(s) skipped`])
  t.equal(r.reason, undefined)
  t.notOk(existsSync(join(dir, 'val.jsonl')))
  t.same(readdirSync(dir), ['train.jsonl'], 'no temporary file left behind')
})

t.test('each knob', async (t) => {
  const dir = t.testdir({})
  const out = join(dir, 'train.jsonl')
  const top2 = await prepare({ sources: [CSV], out, valFraction: 0, topContacts: 2 })
  t.equal(top2.dropped.topContacts, 2)
  t.same(lines(out), ALL.slice(0, 5))

  const since = await prepare({ sources: [CSV], out, valFraction: 0, since: '2000-01-01' })
  t.equal(since.dropped.since, 0)
  t.same(lines(out)[0], { input: 'old message', output: 'old reply' })

  const groups = await prepare({ sources: [CSV], out, valFraction: 0, includeGroups: true })
  t.equal(groups.dropped.group, 0)
  t.same(lines(out).at(-1), { input: "who's in", output: 'me (obviously)' })

  await prepare({ sources: [CSV], out, valFraction: 0, keepCase: true, keepEmoji: true, keepLinks: true, maxRepeat: 0 })
  t.same(lines(out).slice(0, 2), [
    { input: 'Want to grab dinner tonight?', output: 'Yeah | Bartaco?' },
    { input: 'PERFECT, see you at 7 🌮🌮', output: 'sooooooo hungry (lol)' },
  ])

  const win = await prepare({ sources: [CSV], out, valFraction: 0, replyWindowMinutes: 120 })
  t.equal(win.pairs, 7, 'the 100-minute reply counts with a 2-hour window')

  await prepare({ sources: [CSV], out, valFraction: 0, scrub: true })
  t.equal(lines(out)[3].output, 'ok | got it (call me at <phone>)')

  await prepare({ sources: [CSV], out, valFraction: 0, contextTurns: 2 })
  t.same(lines(out)[1], {
    input: 'perfect, see you at 7',
    output: 'sooo hungry (lol)',
    context: [
      { role: 'user', content: 'want to grab dinner tonight?' },
      { role: 'assistant', content: 'yeah | bartaco?' },
    ],
  })
  t.same(lines(out)[0].context, [])

  const r = await prepare({ sources: [CSV], out, mergeSeparator: ' / ', valFraction: 0 })
  t.equal(lines(out)[0].output, 'yeah / bartaco?')
  t.equal(r.pairs, 6)
})

t.test('validation split and facts', async (t) => {
  const dir = t.testdir({})
  const out = join(dir, 'train.jsonl')
  const r = await prepare({ sources: [CSV], out, facts: join(FX, 'facts.json'), factRepeats: 3 })
  t.equal(r.val, 1, '5% of 6 pairs rounds up to one')
  t.equal(r.factPairs, 17 * 3)
  t.equal(r.train, 5 + 51)
  t.same(r.written, { train: out, val: join(dir, 'val.jsonl') })
  const val = lines(join(dir, 'val.jsonl'))
  const train = lines(out)
  t.equal(val.length, 1)
  t.ok(ALL.some((e) => e.input === val[0].input), 'val holds a conversation pair')
  t.notOk(train.some((e) => e.input === val[0].input), 'and train does not')
  t.equal(train.filter((e) => e.input === 'how tall are you?').length, 3, 'facts repeated, train only')
  const again = await prepare({ sources: [CSV], out: join(dir, 'b.jsonl'), facts: join(FX, 'facts.json'), factRepeats: 3 })
  t.equal(again.written.val, join(dir, 'b.val.jsonl'))
  t.same(lines(join(dir, 'b.val.jsonl')), val, 'deterministic')

  const custom = await prepare({ sources: [CSV], out, valOut: join(dir, 'v', 'held.jsonl'), valFraction: 0.5 })
  t.equal(custom.val, 3)
  t.equal(lines(join(dir, 'v', 'held.jsonl')).length, 3)
})

t.test('JSONL sources pass through and mix with histories', async (t) => {
  const dir = t.testdir({
    'extra.jsonl': '{"input": "Keep THIS 😂", "output": "as is", "context": [{"role": "user", "content": "x"}]}\n',
  })
  const out = join(dir, 'train.jsonl')
  const r = await prepare({ sources: [CSV, join(dir, 'extra.jsonl')], out, valFraction: 0 })
  t.equal(r.pairs, 7)
  t.same(lines(out).at(-1), { input: 'Keep THIS 😂', output: 'as is' }, 'untouched, context only when asked')
  await prepare({ sources: [join(dir, 'extra.jsonl')], out, valFraction: 0, contextTurns: 1 })
  t.same(lines(out), [{ input: 'Keep THIS 😂', output: 'as is', context: [{ role: 'user', content: 'x' }] }])
})

t.test('nothing comes out: a reason, no file', async (t) => {
  const dir = t.testdir({
    'old.csv': 'Timestamp,Readable Time,Sender,Sender ID,Message,Group Chat,Group Chat Name,Sent by Me,To\n1500000001,,Me,,yo,0,,1,Zed\n1500000000,,Zed,,hi,0,,0,Zed\n',
    'mine.csv': 'Timestamp,Readable Time,Sender,Sender ID,Message,Group Chat,Group Chat Name,Sent by Me,To\n1700000001,,Me,,yo,0,,1,Zed\n',
    'slow.csv': 'Timestamp,Readable Time,Sender,Sender ID,Message,Group Chat,Group Chat Name,Sent by Me,To\n1700009000,,Me,,yo,0,,1,Zed\n1700000000,,Zed,,hi,0,,0,Zed\n',
    'header.csv': 'Timestamp,Readable Time,Sender,Sender ID,Message,Group Chat,Group Chat Name,Sent by Me,To\n',
  })
  const out = join(dir, 'train.jsonl')
  const old = await prepare({ sources: [join(dir, 'old.csv')], out })
  t.match(old.reason, /every message was dropped by the rules: since 2 \(every message is older than since 2023-01-01; pass an earlier since\)/)
  t.same(old.written, {})
  t.equal(old.train, 0)
  const mine = await prepare({ sources: [join(dir, 'mine.csv')], out })
  t.match(mine.reason, /all 1 kept messages were sent by you/)
  const slow = await prepare({ sources: [join(dir, 'slow.csv')], out })
  t.match(slow.reason, /no message of a contact was answered by you within 30 minutes/)
  const empty = await prepare({ sources: [join(dir, 'header.csv')], out })
  t.equal(empty.reason, 'the sources hold no messages')
  t.match(empty.warnings, [/header\.csv: no messages in it/])
  t.same(readdirSync(dir).sort(), ['header.csv', 'mine.csv', 'old.csv', 'slow.csv'], 'no file written, no temp left')

  // An earlier train.jsonl is not replaced by nothing.
  writeFileSync(out, '{"input":"a","output":"b"}\n')
  await prepare({ sources: [join(dir, 'old.csv')], out })
  t.equal(readFileSync(out, 'utf8'), '{"input":"a","output":"b"}\n')
})

t.test('bad options and sources', async (t) => {
  const dir = t.testdir({})
  const out = join(dir, 'train.jsonl')
  await t.rejects(prepare({ sources: [], out }), { message: 'prepare: no sources given' })
  await t.rejects(prepare({ sources: [CSV], out, since: 'last tuesday' }), { message: 'since: not a date: last tuesday' })
  await t.rejects(prepare({ sources: [CSV], out, valFraction: 1 }), { message: /valFraction must be in \[0, 1\)/ })
  await t.rejects(prepare({ sources: [CSV], out, topContacts: -1 }), { message: /topContacts must be an integer/ })
  await t.rejects(prepare({ sources: [CSV], out, replyWindowMinutes: 0 }), { message: /replyWindowMinutes must be > 0/ })
  await t.rejects(prepare({ sources: [CSV, join(dir, 'nope.db')], out }), { message: /cannot read .*nope\.db: no such file/ })
  t.same(readdirSync(dir), [])
  const dry = await prepare({ sources: [CSV], out, dryRun: true })
  t.equal(dry.train, 5)
  t.same(readdirSync(dir), [], 'dry run writes nothing')
})
