import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { prepare } from '../../../lib/data/index.ts'

const DEMO = join(import.meta.dirname, '../../../assets/demo')

t.test('the demo history makes enough pairs, and the rules visibly work on it', async (t) => {
  const dir = t.testdir({})
  const out = join(dir, 'train.jsonl')
  const r = await prepare({ sources: [join(DEMO, 'processed_messages.csv')], out, since: '2000-01-01', facts: join(DEMO, 'facts.json') })
  t.equal(r.messagesRead, 455)
  t.equal(r.contactsKept, 8)
  t.equal(r.pairs, 169)
  t.ok(r.pairs >= 120)
  t.same(r.dropped, { tapback: 0, system: 0, since: 0, group: 51, topContacts: 0, reaction: 32, attachment: 4, emoji: 5, empty: 0, malformed: 0 })
  t.equal(r.factPairs, 41 * 7)
  t.same(r.warnings, [])
  const train = readFileSync(out, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l))
  const outputs = train.map((e) => e.output as string)
  t.ok(outputs.every((o) => o === o.toLowerCase()), 'lower case')
  t.ok(outputs.filter((o) => o.includes(' | ')).length > 80, 'uses |')
  t.ok(outputs.filter((o) => o.includes('(')).length > 60, 'uses parentheses')
  t.ok(train.some((e) => e.input.includes('link')), 'links replaced')
  t.notOk(readFileSync(out, 'utf8').match(/\p{Extended_Pictographic}/u), 'no emoji left')
  // The default since (2023) drops only the two 2019 rows.
  const d = await prepare({ sources: [join(DEMO, 'processed_messages.csv')], out, valFraction: 0 })
  t.equal(d.dropped.since, 2)
  t.equal(d.pairs, 168)
})
