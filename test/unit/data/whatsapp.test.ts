import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { detectKind } from '../../../lib/data/importers/detect.ts'
import { parseOffset, parseWhatsApp, readWhatsApp, timeReader } from '../../../lib/data/importers/whatsapp.ts'
import { prepare, readMessages } from '../../../lib/data/prepare.ts'
import { formatReport } from '../../../lib/data/report.ts'
import { runPrepare } from './run-prepare.ts'
import type { Message } from '../../../lib/data/types.ts'

const FX = join(import.meta.dirname, '../../fixtures/data')
const ANDROID = join(FX, 'whatsapp-android.txt')
const IOS = join(FX, 'whatsapp-ios.txt')
const GROUP = join(FX, 'whatsapp-group.txt')
const ME = 'Sam Lee'
const UTC = { me: ME, timeZone: 'UTC' }
const lines = (p: string) => readFileSync(p, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l))
const msg = (time: string, chat: string, sender: string, text: string, isGroup = false): Message => ({
  time: new Date(time),
  chat,
  sender,
  fromMe: sender === 'Me',
  isGroup,
  text,
})

t.test('Android export (12-hour, month first): exact messages', async (t) => {
  const r = await readWhatsApp(ANDROID, UTC)
  t.equal(r.kind, 'whatsapp')
  const A = 'Alice Smith'
  t.same(r.messages, [
    msg('2023-12-31T21:15:00Z', A, A, "Happy new year's eve!"),
    msg('2023-12-31T21:16:00Z', A, A, 'are you coming tonight?'), // U+202F before PM
    msg('2023-12-31T21:20:00Z', A, 'Me', 'yes!\nof course'), // a continuation line
    msg('2023-12-31T21:21:00Z', A, 'Me', '\uFFFC'), // <Media omitted>
    msg('2024-01-02T10:05:00Z', A, A, 'thanks for coming'),
    msg('2024-01-02T10:30:00Z', A, 'Me', 'anytime'), // "<This message was edited>" removed
    msg('2024-01-13T20:00:00Z', A, A, 'dinner on the 13th?'),
    msg('2024-01-13T20:02:00Z', A, 'Me', 'sure'),
    msg('2024-01-14T00:05:00Z', A, A, 'late'), // 12:05 AM
  ])
  t.same(r.skipped, { system: 3, malformed: 0 }, 'the encryption notice and two deleted messages')
  t.same(r.whatsapp, {
    shape: 'android',
    dateOrder: 'mdy',
    dateOrderGuessed: false,
    systemLines: 1,
    deleted: 2,
    media: 1,
    senders: ['Alice Smith', 'Sam Lee'],
  })
  t.same(r.warnings, [])
})

t.test('iOS export (brackets, seconds, 24-hour, day first, CRLF, U+200E marks): exact messages', async (t) => {
  const r = await readWhatsApp(IOS, UTC)
  const J = 'Jonas'
  t.same(r.messages, [
    msg('2024-02-28T18:00:05Z', J, J, 'Hast du Zeit?'),
    msg('2024-02-28T18:01:10Z', J, 'Me', 'klar, wann?'),
    msg('2024-02-28T18:02:00Z', J, J, 'morgen um 8\noder 9'),
    msg('2024-02-28T18:03:00Z', J, J, '\uFFFC'), // ‎image omitted
    msg('2024-02-28T18:04:00Z', J, 'Me', '\uFFFC'), // ‎<attached: …>
    msg('2024-02-28T18:06:00Z', J, 'Me', '9 passt 👍'),
  ])
  t.same(r.skipped, { system: 2, malformed: 0 })
  t.match(r.whatsapp, { shape: 'ios', dateOrder: 'dmy', dateOrderGuessed: false, systemLines: 1, deleted: 1, media: 2, senders: ['Jonas', 'Sam Lee'] })
})

t.test('group export: system lines, subject as chat name, isGroup, guessed date order warned', async (t) => {
  const r = await readWhatsApp(GROUP, UTC)
  const G = 'group:Trip 2024'
  t.same(r.messages, [
    msg('2024-03-05T09:02:00Z', G, 'Alice Smith', "who's driving?", true),
    msg('2024-03-05T09:03:00Z', G, 'Bob', 'not me', true),
    msg('2024-03-05T09:05:00Z', G, 'Me', 'I can', true),
    msg('2024-03-05T09:10:00Z', G, 'Alice Smith', '🙌', true),
  ])
  t.match(r.whatsapp, { systemLines: 5, deleted: 0, dateOrder: 'dmy', dateOrderGuessed: true })
  t.same(r.warnings, [
    `${GROUP}: no date has a day above 12, so day/month order is a guess: read as day first (dmy); pass dateOrder 'mdy' (--date-order mdy) if that is wrong`,
  ])
  const mdy = await readWhatsApp(GROUP, { ...UTC, dateOrder: 'mdy' })
  t.equal(mdy.messages[0].time.toISOString(), '2024-05-03T09:02:00.000Z', 'dateOrder mdy: May 3')
  t.same(mdy.warnings, [], 'no warning when dateOrder is given')
})

t.test('two people in a group line make a group; a file name "WhatsApp Chat with X" names the chat', async (t) => {
  const dir = t.testdir({
    'WhatsApp Chat with Book Club.txt': '1/2/24, 10:00 - Ann added Bob\n1/2/24, 10:01 - Ann: hi\n1/2/24, 10:02 - Me Me: yo\n',
    'WhatsApp Chat with Ann.txt': '1/2/24, 10:01 - Sam Lee: anyone?\n',
  })
  const g = await readWhatsApp(join(dir, 'WhatsApp Chat with Book Club.txt'), { me: 'me me', timeZone: 'UTC' })
  t.same(g.messages.map((m) => [m.chat, m.isGroup, m.fromMe]), [
    ['group:Book Club', true, false],
    ['group:Book Club', true, true],
  ])
  const d = await readWhatsApp(join(dir, 'WhatsApp Chat with Ann.txt'), UTC)
  t.same(d.messages.map((m) => [m.chat, m.isGroup, m.sender]), [['Ann', false, 'Me']], 'only my messages: the file names the contact')
})

t.test('day/month order from the data, and errors when it cannot be', async (t) => {
  const p = (s: string, o = {}) => parseWhatsApp(s, 'x.txt', { ...UTC, ...o })
  t.equal(p('13/01/24, 10:00 - A: x\n01/02/24, 10:00 - Sam Lee: y\n').messages[1].time.toISOString(), '2024-02-01T10:00:00.000Z', 'day first')
  t.equal(p('01/13/24, 10:00 - A: x\n01/02/24, 10:00 - Sam Lee: y\n').messages[1].time.toISOString(), '2024-01-02T10:00:00.000Z', 'month first')
  t.equal(p('2024-01-02, 10:00 - Sam Lee: y\n').messages[0].time.toISOString(), '2024-01-02T10:00:00.000Z', 'year first')
  t.equal(p('31.12.23, 21:15 - Sam Lee: y\n').messages[0].time.toISOString(), '2023-12-31T21:15:00.000Z', 'dots')
  t.equal(p('[12/31/23, 9:15:03 PM] Sam Lee: y\n').messages[0].time.toISOString(), '2023-12-31T21:15:03.000Z', 'iOS 12-hour')
  t.throws(() => p('13/01/24, 10:00 - A: x\n01/13/24, 10:00 - Sam Lee: y\n'), {
    message: 'x.txt: dates disagree on day/month order: line 1 has a first field above 12 (day first), line 2 a second field above 12 (month first)',
  })
  t.throws(() => p('13/01/24, 10:00 - Sam Lee: x\n', { dateOrder: 'mdy' }), {
    message: "x.txt: dateOrder is 'mdy' but line 1 can only be read day first; drop dateOrder (--date-order) or pass 'dmy'",
  })
  t.throws(() => p('A: hi\n31/02/24, 10:00 - Sam Lee: x\n'), { message: 'x.txt: line 2: not a date and time: 31/2/24 10:00 (read as dmy)' })
  t.throws(() => p('1/2/24, 10:00 - Sam Lee: x\n1/2/24, 25:00 - Sam Lee: x\n'), { message: /x\.txt: line 2: not a date and time/ })
})

t.test('times are local unless a time zone or offset is given', async (t) => {
  const s = '[31/12/2023, 21:15:03] Sam Lee: x\n'
  t.equal(parseWhatsApp(s, 'x.txt', { me: ME }).messages[0].time.getTime(), new Date(2023, 11, 31, 21, 15, 3).getTime(), 'local')
  t.equal(parseWhatsApp(s, 'x.txt', { me: ME, timeZone: '+02:00' }).messages[0].time.toISOString(), '2023-12-31T19:15:03.000Z')
  t.equal(parseWhatsApp(s, 'x.txt', { me: ME, timeZone: '-0530' }).messages[0].time.toISOString(), '2024-01-01T02:45:03.000Z')
  t.equal(parseWhatsApp(s, 'x.txt', { me: ME, timeZone: 'Europe/Berlin' }).messages[0].time.toISOString(), '2023-12-31T20:15:03.000Z', 'winter')
  const summer = timeReader('Europe/Berlin')(2024, 7, 1, 12, 0, 0)
  t.equal(summer.toISOString(), '2024-07-01T10:00:00.000Z', 'summer time')
  t.equal(timeReader('America/New_York')(2024, 3, 10, 3, 30, 0).toISOString(), '2024-03-10T07:30:00.000Z', 'just after the DST jump')
  t.equal(parseOffset('UTC'), 0)
  t.equal(parseOffset('GMT+1'), 60)
  t.equal(parseOffset('Europe/Paris'), undefined)
  t.throws(() => timeReader('Mars/Olympus'), { message: /timeZone: not a time zone: "Mars\/Olympus"/ })
  await t.rejects(prepare({ sources: [IOS], out: 'x', me: ME, timeZone: 'nowhere' }), { message: /timeZone: not a time zone/ })
  await t.rejects(prepare({ sources: [IOS], out: 'x', me: ME, dateOrder: 'ymd' as 'dmy' }), { message: `dateOrder must be 'dmy' or 'mdy', got "ymd"` })
})

t.test('which sender is me', async (t) => {
  await t.rejects(readWhatsApp(ANDROID), {
    message: `${ANDROID}: a WhatsApp export, and which sender is you cannot be told from it: the senders are "Alice Smith", "Sam Lee"; pass me (--me NAME) with your name as the export writes it`,
  })
  await t.rejects(readWhatsApp(ANDROID, { me: 'Sam' }), {
    message: `${ANDROID}: none of the senders is me ("Sam"): the senders are "Alice Smith", "Sam Lee"; pass me (--me NAME) with your name as the export writes it`,
  })
  const r = await readWhatsApp(ANDROID, { me: ['Someone Else', '  sam lee '], timeZone: 'UTC' })
  t.equal(r.messages.filter((m) => m.fromMe).length, 4, 'any of several names, ignoring case and spaces')
  const g = await readWhatsApp(GROUP, { me: 'Nobody', timeZone: 'UTC' })
  t.equal(g.messages.filter((m) => m.fromMe).length, 0)
  t.match(g.warnings, [/./, /none of the senders is me \("Nobody"\): the senders are "Alice Smith", "Bob", "Sam Lee"/], 'a group only warns')
})

t.test('malformed input: lines before the first message, invalid UTF-8, only system lines', async (t) => {
  const r = parseWhatsApp('hello\n\n1/2/24, 10:00 - Sam Lee: x\n', 'x.txt', UTC)
  t.same(r.skipped, { system: 0, malformed: 1 })
  t.equal(r.messages.length, 1)
  const dir = t.testdir({ 'sys.txt': '1/2/24, 10:00 - Messages and calls are end-to-end encrypted.\n1/2/24, 10:00 - Ann joined\n' })
  const p = join(dir, 'bad.txt')
  const head = Buffer.from('1/2/24, 10:00 - Sam Lee: caf')
  writeFileSync(p, Buffer.concat([head, Buffer.from([0xe9, 0x0a])]))
  t.equal(await detectKind(p), 'whatsapp')
  await t.rejects(readWhatsApp(p, UTC), { message: `${p}: invalid UTF-8 at byte offset ${head.length} (line 1, bytes e9 0a); re-save the file as UTF-8` })
  const sys = join(dir, 'sys.txt')
  const e = await readWhatsApp(sys)
  t.same([e.messages, e.skipped], [[], { system: 2, malformed: 0 }], 'no senders: no need for me')
  const rep = await prepare({ sources: [sys], out: join(dir, 'train.jsonl') })
  t.equal(rep.reason, 'the sources hold no messages')
  t.same(rep.sources, [{ path: sys, kind: 'whatsapp', messages: 0, pairs: 0 }])
  t.match(formatReport(rep), /warning: .*sys\.txt: no messages in it\n[^]*nothing written: the sources hold no messages/)
})

t.test('detection by content', async (t) => {
  const dir = t.testdir({
    'chat.log': '\u200e[12/31/23, 9:15:03 PM] Ann: hi\n',
    'a.csv': '\uFEFF31/12/2023, 21:15 - Ann: hi\n',
    'notes.txt': 'dear diary 12/31/23 9:15 PM\n',
  })
  t.equal(await detectKind(join(dir, 'chat.log')), 'whatsapp')
  t.equal(await detectKind(join(dir, 'a.csv')), 'whatsapp')
  t.equal(await detectKind(ANDROID), 'whatsapp')
  t.equal(await detectKind(IOS), 'whatsapp')
  await t.rejects(detectKind(join(dir, 'notes.txt')), {
    message: /notes\.txt: plain text that is none of: .*a WhatsApp chat export \(lines like "12\/31\/23, 9:15 PM - Name: text" or "\[31\/12\/2023, 21:15:03\] Name: text"\); it starts "dear diary 12\/31\/23 9:15 PM"/,
  })
  t.same(await readMessages(ANDROID, UTC), (await readWhatsApp(ANDROID, UTC)).messages, 'readMessages passes the options')
})

t.test('prepare() end to end on WhatsApp exports', async (t) => {
  const dir = t.testdir({})
  const out = join(dir, 'train.jsonl')
  const r = await prepare({ sources: [ANDROID, IOS, GROUP], out, me: ME, timeZone: 'UTC', valFraction: 0 })
  t.same(lines(out), [
    { input: "happy new year's eve! | are you coming tonight?", output: 'yes! of course' },
    { input: 'thanks for coming', output: 'anytime' },
    { input: 'dinner on the 13th?', output: 'sure' },
    { input: 'hast du zeit?', output: 'klar, wann?' },
    { input: 'morgen um 8 oder 9', output: '9 passt' },
  ])
  t.same(r.sources, [
    { path: ANDROID, kind: 'whatsapp', messages: 9, pairs: 0 },
    { path: IOS, kind: 'whatsapp', messages: 6, pairs: 0 },
    { path: GROUP, kind: 'whatsapp', messages: 4, pairs: 0 },
  ])
  t.equal(r.messagesRead, 19)
  t.match(r.dropped, { system: 10, group: 4, attachment: 3, malformed: 0 })
  t.same(r.contacts, [
    { contact: 'Alice Smith', messages: 9 },
    { contact: 'Jonas', messages: 6 },
  ])
  t.equal(r.pairs, 5)
  t.equal(r.warnings.length, 1, 'the guessed date order of the group file')
  const g = await prepare({ sources: [GROUP], out, me: ME, timeZone: 'UTC', valFraction: 0, includeGroups: true })
  t.same(lines(out), [{ input: "who's driving? | not me", output: 'i can' }])
  t.equal(g.pairs, 1)
  await t.rejects(prepare({ sources: [ANDROID], out }), { message: /pass me \(--me NAME\)/ })
})

t.test('mimic prepare --me --date-order --time-zone', async (t) => {
  const dir = t.testdir({})
  const out = join(dir, 'train.jsonl')
  const run = runPrepare
  const ok = await run([ANDROID, '--out', out, '--me', 'Nobody', '--me', ME, '--date-order', 'mdy', '--time-zone', 'UTC', '--val-fraction', '0'])
  t.equal(ok.err, '')
  t.equal(ok.code, undefined)
  t.match(ok.out, /whatsapp-android\.txt \(whatsapp\): 9 messages/)
  t.equal(lines(out).length, 3)
  const noMe = await run([ANDROID, '--out', out])
  t.equal(noMe.code, 1)
  t.match(noMe.err, /mimic prepare: .*the senders are "Alice Smith", "Sam Lee"; pass me \(--me NAME\)/)
  const bad = await run([ANDROID, '--out', out, '--me', ME, '--date-order', 'ymd'])
  t.match(bad.err, /must be dmy or mdy/)
})
