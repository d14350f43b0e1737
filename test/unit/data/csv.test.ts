import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parse } from 'csv-parse/sync'
import { readCsv, RecordStream } from '../../../lib/data/importers/csv.ts'
import { readMessages } from '../../../lib/data/prepare.ts'

const FIXTURE = join(import.meta.dirname, '../../fixtures/data/processed_messages.csv')
const HEADER = 'Timestamp,Readable Time,Sender,Sender ID,Message,Group Chat,Group Chat Name,Sent by Me,To'

t.test('reads the app CSV: 25 messages oldest first, one broken row counted', async (t) => {
  const r = await readCsv(FIXTURE)
  t.equal(r.kind, 'csv')
  t.equal(r.messages.length, 25)
  t.same(r.skipped, { malformed: 1 })
  const times = r.messages.map((m) => m.time.getTime())
  t.same(times, [...times].sort((a, b) => a - b), 'oldest first')
  t.same(r.messages[0], {
    time: new Date('2022-06-01T00:00:00Z'),
    chat: 'Alice Smith',
    sender: 'Alice Smith',
    fromMe: false,
    isGroup: false,
    text: 'old message',
  })
  const bartaco = r.messages.find((m) => m.text === 'Bartaco?')!
  t.equal(bartaco.time.getTime(), 1709290980250, 'fractional unix seconds')
  t.equal(bartaco.fromMe, true)
  t.equal(bartaco.sender, 'Me')
  t.equal(bartaco.chat, 'Alice Smith', 'my direct message belongs to the To contact')
  t.ok(r.messages.find((m) => m.text === 'She said "hi", then left'), 'quoted "" escapes and commas')
  t.ok(r.messages.find((m) => m.text === 'line one\nline two'), 'newline inside a quoted field')
  t.ok(r.messages.find((m) => m.text === 'hey, café tomorrow?'), 'non-ASCII')
  const group = r.messages.filter((m) => m.isGroup)
  t.same(group.map((m) => [m.chat, m.sender, m.text]), [
    ['group:Weekend Crew', 'Carol', "who's in"],
    ['group:Weekend Crew', 'Me', 'me (obviously)'],
  ])
  t.same(await readMessages(FIXTURE), r.messages, 'readMessages is the same')
})

t.test('every record agrees with csv-parse on the whole file', async (t) => {
  const text = readFileSync(FIXTURE, 'utf8')
  const expected = parse(text, { relax_column_count: true })
  for (const chunk of [1, 2, 3, 7, 64, 1 << 20]) {
    const got: string[][] = []
    const rs = new RecordStream('x.csv', (r) => got.push(r))
    for (let i = 0; i < text.length; i += chunk) rs.push(text.slice(i, i + chunk))
    rs.push('', true)
    t.same(got, expected, `fed in chunks of ${chunk}`)
  }
})

t.test('a record without a final newline, \\n endings, BOM', async (t) => {
  const dir = t.testdir({
    'a.csv': '\uFEFF' + HEADER + '\n1700000000,,Zed,,"hi, there",0,,0,Zed\n1699999990,,Me,,yo,0,,1,Zed',
  })
  const r = await readCsv(join(dir, 'a.csv'))
  t.same(r.messages.map((m) => [m.text, m.fromMe, m.chat]), [
    ['yo', true, 'Zed'],
    ['hi, there', false, 'Zed'],
  ])
})

t.test('columns are found by name, "True"/"False" flags accepted', async (t) => {
  const dir = t.testdir({
    'b.csv': 'To,Message,Sent by Me,Group Chat,Sender,Timestamp\nZed,hello,False,False,Zed,1700000000\nZed,hey,True,False,Me,1700000001\n',
  })
  const r = await readCsv(join(dir, 'b.csv'))
  t.same(r.messages.map((m) => [m.text, m.fromMe]), [
    ['hey', true],
    ['hello', false],
  ])
})

t.test('wrong header: a clear error naming the file and the missing columns', async (t) => {
  const dir = t.testdir({ 'w.csv': 'date,from,body\n2024-01-01,Zed,hi\n' })
  await t.rejects(readCsv(join(dir, 'w.csv')), {
    message: /w\.csv: not the CSV of the iMessage analysis app: header is "date,from,body", missing column\(s\) "Timestamp", "Sender", "Message"/,
  })
})

t.test('unterminated quote: error with the line', async (t) => {
  const dir = t.testdir({ 'q.csv': HEADER + '\n1700000000,,Zed,,ok,0,,0,Zed\n1700000001,,Zed,,"broken,0,,0,Zed\n' })
  await t.rejects(readCsv(join(dir, 'q.csv')), { message: /q\.csv: cannot parse CSV at line 3/ })
})

t.test('invalid UTF-8: file, byte offset and line', async (t) => {
  const dir = t.testdir({})
  const p = join(dir, 'bad.csv')
  const head = Buffer.from(HEADER + '\n1700000000,,Zed,,caf')
  writeFileSync(p, Buffer.concat([head, Buffer.from([0xe9]), Buffer.from(',0,,0,Zed\n')]))
  await t.rejects(readCsv(p), { message: `${p}: invalid UTF-8 at byte offset ${head.length} (line 2, bytes e9 2c 30 2c); re-save the file as UTF-8` })
  // cut short at the very end
  const p2 = join(dir, 'cut.csv')
  writeFileSync(p2, Buffer.concat([Buffer.from(HEADER + '\n1700000000,,Zed,,caf'), Buffer.from([0xc3])]))
  await t.rejects(readCsv(p2), { message: /invalid UTF-8 at byte offset \d+ \(line 2/ })
})

t.test('empty and header-only files', async (t) => {
  const dir = t.testdir({ 'e.csv': '', 'h.csv': HEADER + '\r\n' })
  await t.rejects(readCsv(join(dir, 'e.csv')), { message: /e\.csv: the CSV is empty/ })
  const r = await readCsv(join(dir, 'h.csv'))
  t.equal(r.messages.length, 0)
})

t.test('missing file', async (t) => {
  await t.rejects(readCsv('/nonexistent/x.csv'), { message: 'cannot read /nonexistent/x.csv: no such file' })
})
