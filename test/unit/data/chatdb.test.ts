import t from 'tap'
import Database from 'better-sqlite3'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { appleDate, decodeAttributedBody, isTapback, readChatDb } from '../../../lib/data/importers/chatdb.ts'
import { prepare } from '../../../lib/data/prepare.ts'

/** The macOS Messages schema (the columns the importer reads, plus a few of the others). */
const SCHEMA = `
CREATE TABLE handle (ROWID INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, id TEXT NOT NULL, country TEXT,
  service TEXT NOT NULL, uncanonicalized_id TEXT, person_centric_id TEXT, UNIQUE (id, service));
CREATE TABLE chat (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL, style INTEGER,
  state INTEGER, account_id TEXT, properties BLOB, chat_identifier TEXT, service_name TEXT, room_name TEXT,
  account_login TEXT, is_archived INTEGER DEFAULT 0, last_addressed_handle TEXT, display_name TEXT,
  group_id TEXT, is_filtered INTEGER DEFAULT 0, successful_query INTEGER);
CREATE TABLE message (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL, text TEXT,
  replace INTEGER DEFAULT 0, service_center TEXT, handle_id INTEGER DEFAULT 0, subject TEXT, country TEXT,
  attributedBody BLOB, version INTEGER DEFAULT 0, type INTEGER DEFAULT 0, service TEXT, account TEXT,
  account_guid TEXT, error INTEGER DEFAULT 0, date INTEGER, date_read INTEGER, date_delivered INTEGER,
  is_delivered INTEGER DEFAULT 0, is_finished INTEGER DEFAULT 0, is_emote INTEGER DEFAULT 0,
  is_from_me INTEGER DEFAULT 0, is_empty INTEGER DEFAULT 0, is_read INTEGER DEFAULT 0,
  is_system_message INTEGER DEFAULT 0, is_service_message INTEGER DEFAULT 0, cache_has_attachments INTEGER DEFAULT 0,
  cache_roomnames TEXT, item_type INTEGER DEFAULT 0, other_handle INTEGER DEFAULT 0, group_title TEXT,
  group_action_type INTEGER DEFAULT 0, associated_message_guid TEXT, associated_message_type INTEGER DEFAULT 0,
  associated_message_range_location INTEGER DEFAULT 0, associated_message_range_length INTEGER DEFAULT 0,
  thread_originator_guid TEXT, date_edited INTEGER DEFAULT 0, date_retracted INTEGER DEFAULT 0);
CREATE TABLE chat_message_join (chat_id INTEGER REFERENCES chat (ROWID) ON DELETE CASCADE,
  message_id INTEGER REFERENCES message (ROWID) ON DELETE CASCADE, message_date INTEGER DEFAULT 0,
  PRIMARY KEY (chat_id, message_id));
CREATE TABLE chat_handle_join (chat_id INTEGER REFERENCES chat (ROWID) ON DELETE CASCADE,
  handle_id INTEGER REFERENCES handle (ROWID) ON DELETE CASCADE, UNIQUE(chat_id, handle_id));
`

/** A typedstream NSAttributedString as Messages writes it, holding `text`. */
export function attributedBody(text: string): Buffer {
  const utf8 = Buffer.from(text, 'utf8')
  let len: Buffer
  if (utf8.length < 0x80) len = Buffer.from([utf8.length])
  else if (utf8.length < 0x10000) len = Buffer.from([0x81, utf8.length & 0xff, utf8.length >> 8])
  else {
    len = Buffer.alloc(5)
    len[0] = 0x82
    len.writeUInt32LE(utf8.length, 1)
  }
  return Buffer.concat([
    Buffer.from('\x04\x0bstreamtyped\x81\xe8\x03\x84\x01@\x84\x84\x84\x12NSAttributedString\x00\x84\x84\x08NSObject\x00\x85\x92\x84\x84\x84\x08NSString\x01\x94\x84\x01\x2b', 'latin1'),
    len,
    utf8,
    Buffer.from('\x86\x84\x02iI\x01\x05\x92\x84\x84\x84\x0cNSDictionary\x00\x94\x84\x01i\x01\x92\x84\x96\x96\x1d__kIMMessagePartAttributeName\x86', 'latin1'),
  ])
}

const NS = 1_000_000_000n
/** Apple time: nanoseconds since 2001-01-01 UTC. */
const apple = (iso: string) => (BigInt(Date.parse(iso) - Date.UTC(2001, 0, 1)) / 1000n) * NS

const LONG = 'So here is the whole plan for the trip: we leave friday at six, drive up to the cabin, ' +
  'stop for tacos on the way, and then Saturday we hike the ridge trail — bring boots and a jacket!'

/** Build the test chat.db; returns its path. */
export function buildChatDb(path: string): string {
  const db = new Database(path)
  db.exec(SCHEMA)
  db.prepare("INSERT INTO handle (ROWID, id, service) VALUES (1, '+15550001111', 'iMessage'), (2, 'erin@example.com', 'iMessage')").run()
  db.prepare(`INSERT INTO chat (ROWID, guid, style, chat_identifier, display_name) VALUES
    (1, 'iMessage;-;+15550001111', 45, '+15550001111', ''),
    (2, 'iMessage;-;erin@example.com', 45, 'erin@example.com', NULL),
    (3, 'iMessage;+;chat99', 43, 'chat99', 'Hike Club')`).run()
  db.prepare('INSERT INTO chat_handle_join VALUES (1, 1), (2, 2), (3, 1), (3, 2)').run()
  const ins = db.prepare(`INSERT INTO message (ROWID, guid, text, handle_id, attributedBody, date, is_from_me, item_type,
    associated_message_guid, associated_message_type) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
  const join = db.prepare('INSERT INTO chat_message_join (chat_id, message_id, message_date) VALUES (?, ?, ?)')
  const rows: [number, string | null, number, Buffer | null, bigint, number, number, string | null, number, number][] = [
    // id, text, handle, body, date, fromMe, item_type, assoc guid, assoc type, chat
    [1, 'Are you coming Saturday?', 1, attributedBody('Are you coming Saturday?'), apple('2024-05-01T12:00:00Z'), 0, 0, null, 0, 1],
    [2, '', 0, attributedBody("Yes!! (if it doesn't rain)"), apple('2024-05-01T12:05:00Z'), 1, 0, null, 0, 1],
    [3, 'Liked “Yes!! (if it doesn’t rain)”', 1, null, apple('2024-05-01T12:06:00Z'), 0, 0, 'p:0/msg2', 2001, 1],
    [4, null, 1, null, apple('2024-05-01T12:07:00Z'), 0, 1, null, 0, 1],
    [5, null, 2, attributedBody(LONG), apple('2024-05-02T09:00:00Z'), 0, 0, null, 0, 2],
    [6, 'Wow that is long', 0, null, apple('2024-05-02T09:01:00Z'), 1, 0, null, 0, 2],
    [7, '\uFFFC', 2, null, apple('2024-05-02T09:02:00Z'), 0, 0, null, 0, 2],
    [8, 'hike at 9', 1, null, apple('2024-05-03T08:00:00Z'), 0, 0, null, 0, 3],
    [9, 'im in', 0, null, apple('2024-05-03T08:01:00Z'), 1, 0, null, 0, 3],
    [10, null, 0, null, apple('2024-05-03T08:02:00Z'), 1, 0, 'p:0/msg8', 3000, 3],
  ]
  for (const [id, text, h, body, date, me, item, ag, at, chat] of rows) {
    ins.run(id, `guid-${id}`, text, h, body, date, me, item, ag, at)
    join.run(chat, id, date)
  }
  db.close()
  return path
}

t.test('decodeAttributedBody: short, 0x81 and 0x82 lengths, no string', async (t) => {
  t.equal(decodeAttributedBody(attributedBody('hi there')), 'hi there')
  t.equal(decodeAttributedBody(attributedBody(LONG)), LONG)
  const huge = 'x'.repeat(70000) + ' é'
  t.equal(decodeAttributedBody(attributedBody(huge)), huge)
  t.equal(decodeAttributedBody(null), '')
  t.equal(decodeAttributedBody(Buffer.from('no typedstream here')), '')
  t.equal(decodeAttributedBody(Buffer.from([0x01, 0x2b, 0x10, 0x41])), '', 'length past the end')
})

t.test('appleDate: nanoseconds and (old databases) seconds since 2001', async (t) => {
  t.equal(appleDate(apple('2024-05-01T12:00:00Z')).toISOString(), '2024-05-01T12:00:00.000Z')
  t.equal(appleDate(Number(apple('2024-05-01T12:00:00Z') / NS)).toISOString(), '2024-05-01T12:00:00.000Z')
  t.equal(appleDate(0).toISOString(), '2001-01-01T00:00:00.000Z')
})

t.test('isTapback', async (t) => {
  t.same([0, 1999, 2000, 2007, 2008, 3000, 3007, 3008, 1000].map(isTapback), [false, false, true, true, false, true, true, false, false])
})

t.test('reads a chat.db: chats, groups, attributedBody, tapbacks and system rows skipped', async (t) => {
  const dir = t.testdir({})
  const r = await readChatDb(buildChatDb(join(dir, 'chat.db')))
  t.equal(r.kind, 'chatdb')
  t.same(r.skipped, { tapback: 2, system: 1, malformed: 0 })
  t.same(
    r.messages.map((m) => [m.time.toISOString(), m.chat, m.sender, m.fromMe, m.isGroup, m.text]),
    [
      ['2024-05-01T12:00:00.000Z', '+15550001111', '+15550001111', false, false, 'Are you coming Saturday?'],
      ['2024-05-01T12:05:00.000Z', '+15550001111', 'Me', true, false, "Yes!! (if it doesn't rain)"],
      ['2024-05-02T09:00:00.000Z', 'erin@example.com', 'erin@example.com', false, false, LONG],
      ['2024-05-02T09:01:00.000Z', 'erin@example.com', 'Me', true, false, 'Wow that is long'],
      ['2024-05-02T09:02:00.000Z', 'erin@example.com', 'erin@example.com', false, false, '\uFFFC'],
      ['2024-05-03T08:00:00.000Z', 'Hike Club', '+15550001111', false, true, 'hike at 9'],
      ['2024-05-03T08:01:00.000Z', 'Hike Club', 'Me', true, true, 'im in'],
    ],
  )
})

t.test('prepare on a chat.db: exact pairs and drops', async (t) => {
  const dir = t.testdir({})
  const db = buildChatDb(join(dir, 'chat.db'))
  const out = join(dir, 'train.jsonl')
  const rep = await prepare({ sources: [db], out, valFraction: 0 })
  t.equal(rep.messagesRead, 7)
  t.equal(rep.messagesKept, 4)
  t.same(rep.dropped, { tapback: 2, system: 1, since: 0, group: 2, topContacts: 0, reaction: 0, attachment: 1, emoji: 0, empty: 0, malformed: 0 })
  t.equal(readFileSync(out, 'utf8'), [
    '{"input":"are you coming saturday?","output":"yes!! (if it doesn\'t rain)"}',
    `{"input":${JSON.stringify(LONG.toLowerCase())},"output":"wow that is long"}`,
    '',
  ].join('\n'))
})

t.test('bad databases: not SQLite, truncated, SQLite without messages', async (t) => {
  const dir = t.testdir({ 'text.db': 'just some text, not a database\n' })
  const good = buildChatDb(join(dir, 'good.db'))
  const bytes = readFileSync(good)
  writeFileSync(join(dir, 'trunc.db'), bytes.subarray(0, 4096 + 100))
  writeFileSync(join(dir, 'tiny.db'), bytes.subarray(0, 10))
  const other = new Database(join(dir, 'other.db'))
  other.exec('CREATE TABLE notes (id INTEGER, body TEXT)')
  other.close()
  await t.rejects(prepare({ sources: [join(dir, 'trunc.db')], out: join(dir, 'o.jsonl') }), {
    message: /trunc\.db: .*(truncated|damaged|malformed)/,
  })
  await t.rejects(prepare({ sources: [join(dir, 'tiny.db')], out: join(dir, 'o.jsonl') }), {
    message: /tiny\.db: an SQLite file cut short \(10 bytes/,
  })
  await t.rejects(prepare({ sources: [join(dir, 'other.db')], out: join(dir, 'o.jsonl') }), {
    message: /other\.db: an SQLite database but not a macOS Messages chat\.db \(no "message" table; tables: notes\)/,
  })
  await t.rejects(prepare({ sources: [join(dir, 'text.db')], out: join(dir, 'o.jsonl') }), {
    message: /text\.db: not the CSV of the iMessage analysis app/,
  })
  await t.rejects(readChatDb(join(dir, 'missing.db')), { message: /missing\.db: cannot open as SQLite/ })
  t.notOk(existsSync(join(dir, 'o.jsonl')), 'nothing written')
})

t.test('macos-ts chat.db (third-party fixture, MIT)', async (t) => {
  const r = await readChatDb(join(import.meta.dirname, '../../fixtures/data/macos-ts-chat.db'))
  t.equal(r.messages.length, 15)
  t.same(r.skipped, { tapback: 0, system: 0, malformed: 0 })
  t.equal(r.messages.filter((m) => m.isGroup).length, 6)
  t.same(new Set(r.messages.map((m) => m.chat)), new Set(['+15551234567', 'alice@example.com', 'Weekend Plans']))
  t.ok(r.messages.find((m) => m.text === 'Check out this cool project!' && m.chat === 'alice@example.com'), 'attributedBody-only row')
  const times = r.messages.map((m) => m.time.getTime())
  t.same(times, [...times].sort((a, b) => a - b))
})

const GPL = join(import.meta.dirname, '../../../../shared/samples/imessage-exporter-test.db')
t.test('imessage-exporter test.db (read from ../shared, never copied: GPL)', { skip: !existsSync(GPL) && 'not present' }, async (t) => {
  const r = await readChatDb(GPL) // opened read-only, in place
  t.same(r.messages.map((m) => m.text), [
    'https://www.ghacks.net/2020/01/23/lastpass-no-longer-listed-on-the-chrome-web-store/',
    'I’m going to try to eat as quick as possible and then come over',
  ])
  t.same(r.messages.map((m) => m.chat), ['handle #1', 'handle #1'], 'no chat and no handle rows: the handle number')
})
