/**
 * Importer for the macOS Messages database (`~/Library/Messages/chat.db`), opened read-only.
 *
 * - The conversation is the chat (`chat_message_join` → `chat`): a message from me carries no
 *   useful handle. `chat.style` 43 is a group, 45 a direct chat. A message in no chat falls
 *   back to its handle as a direct chat (`handle #N` when the handle row is missing too).
 * - `message.date` counts nanoseconds since 2001-01-01 UTC; very old databases count seconds
 *   (told apart by magnitude).
 * - Text is `message.text` when non-empty, otherwise the string inside `attributedBody`, a
 *   typedstream NSAttributedString (see `decodeAttributedBody`).
 * - Tapbacks (`associated_message_type` 2000–2007, 3000–3007) and system rows (`item_type` ≠ 0)
 *   are skipped and counted.
 */
import Database from 'better-sqlite3'
import type { ImportResult, Message } from '../types.ts'

/** 2001-01-01T00:00:00Z in unix milliseconds (Apple's "reference date"). */
export const APPLE_EPOCH_MS = Date.UTC(2001, 0, 1)

/** Apple time (ns since 2001, or s in old databases) → Date. */
export function appleDate(value: number | bigint | null): Date {
  const v = Number(value ?? 0)
  // Seconds since 2001 stay below ~1e10 for centuries; nanoseconds are ~1e17 and up.
  const ms = Math.abs(v) > 1e11 ? v / 1e6 : v * 1000
  return new Date(APPLE_EPOCH_MS + ms)
}

/**
 * The text of a typedstream `attributedBody`: it follows the bytes 01 2B as a length-prefixed
 * UTF-8 string. Length: one byte below 0x80; 0x81 then 2 bytes little-endian; 0x82 then 4.
 * Returns '' when the blob holds no such string.
 */
export function decodeAttributedBody(blob: Uint8Array | null | undefined): string {
  if (!blob) return ''
  const n = blob.length
  for (let i = 0; i + 2 < n; i++) {
    if (blob[i] !== 0x01 || blob[i + 1] !== 0x2b) continue
    let p = i + 2
    const b = blob[p++]
    let len: number
    if (b < 0x80) len = b
    else if (b === 0x81 && p + 2 <= n) {
      len = blob[p] | (blob[p + 1] << 8)
      p += 2
    } else if (b === 0x82 && p + 4 <= n) {
      len = (blob[p] | (blob[p + 1] << 8) | (blob[p + 2] << 16)) + blob[p + 3] * 0x1000000
      p += 4
    } else continue
    if (p + len > n) continue
    return new TextDecoder('utf-8').decode(blob.subarray(p, p + len))
  }
  return ''
}

/** True for a tapback (reaction) row. */
export const isTapback = (t: number | null): boolean =>
  t != null && ((t >= 2000 && t <= 2007) || (t >= 3000 && t <= 3007))

type Row = [
  id: number,
  text: string | null,
  body: Buffer | null,
  date: number | bigint | null,
  fromMe: number,
  itemType: number | null,
  assocType: number | null,
  handle: string | null,
  chatId: string | null,
  chatName: string | null,
  style: number | null,
  handleId: number | null,
]

/** Read a chat.db. */
export async function readChatDb(path: string): Promise<ImportResult> {
  let db: Database.Database
  try {
    db = new Database(path, { readonly: true, fileMustExist: true })
  } catch (e) {
    throw new Error(`${path}: cannot open as SQLite: ${(e as Error).message}`)
  }
  try {
    let tables: Set<string>
    try {
      tables = new Set(
        (db.prepare("SELECT name FROM sqlite_master WHERE type='table'").pluck().all() as string[]),
      )
    } catch (e) {
      throw new Error(`${path}: an SQLite file that cannot be read (truncated or damaged?): ${(e as Error).message}`)
    }
    if (!tables.has('message')) {
      throw new Error(
        `${path}: an SQLite database but not a macOS Messages chat.db (no "message" table; tables: ${[...tables].slice(0, 8).join(', ') || 'none'})`,
      )
    }
    const cols = (t: string): Set<string> =>
      tables.has(t)
        ? new Set((db.prepare(`PRAGMA table_info(${t})`).all() as { name: string }[]).map((c) => c.name))
        : new Set()
    const m = cols('message')
    for (const c of ['text', 'date', 'is_from_me']) {
      if (!m.has(c)) throw new Error(`${path}: the "message" table has no "${c}" column: not a Messages chat.db`)
    }
    const hasChats = tables.has('chat') && tables.has('chat_message_join')
    const chatCols = cols('chat')
    const hasHandles = tables.has('handle') && m.has('handle_id')
    const sql = `SELECT m.ROWID, m.text, ${m.has('attributedBody') ? 'm.attributedBody' : 'NULL'}, m.date, m.is_from_me,
        ${m.has('item_type') ? 'm.item_type' : '0'}, ${m.has('associated_message_type') ? 'm.associated_message_type' : '0'},
        ${hasHandles ? 'h.id' : 'NULL'},
        ${hasChats ? 'c.chat_identifier' : 'NULL'}, ${hasChats && chatCols.has('display_name') ? 'c.display_name' : 'NULL'},
        ${hasChats && chatCols.has('style') ? 'c.style' : 'NULL'}, ${m.has('handle_id') ? 'm.handle_id' : 'NULL'}
      FROM message m
      ${hasHandles ? 'LEFT JOIN handle h ON h.ROWID = m.handle_id' : ''}
      ${hasChats ? 'LEFT JOIN chat_message_join cmj ON cmj.message_id = m.ROWID LEFT JOIN chat c ON c.ROWID = cmj.chat_id' : ''}
      ORDER BY m.date, m.ROWID`
    const messages: Message[] = []
    let tapback = 0
    let system = 0
    let malformed = 0
    const seen = new Set<number>()
    try {
      for (const r of db.prepare(sql).raw().iterate() as IterableIterator<Row>) {
        const [id, text, body, date, fromMe, itemType, assocType, handle, chatId, chatName, style, handleId] = r
        if (seen.has(id)) continue // a message joined to two chats: keep the first
        seen.add(id)
        if (itemType != null && itemType !== 0) {
          system++
          continue
        }
        if (isTapback(assocType)) {
          tapback++
          continue
        }
        const isGroup = style === 43
        // No chat row (and maybe no handle row): fall back to the handle's number as the chat.
        const chat = isGroup ? chatName || chatId : chatId || handle || (handleId ? `handle #${handleId}` : null)
        if (!chat) {
          malformed++
          continue
        }
        const me = fromMe === 1
        messages.push({
          time: appleDate(date),
          chat,
          sender: me ? 'Me' : handle || chat,
          fromMe: me,
          isGroup,
          text: text ? text : decodeAttributedBody(body),
        })
      }
    } catch (e) {
      throw new Error(`${path}: cannot read messages (truncated or damaged database?): ${(e as Error).message}`)
    }
    return { kind: 'chatdb', messages, pairs: [], skipped: { tapback, system, malformed } }
  } finally {
    db.close()
  }
}
