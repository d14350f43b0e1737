/**
 * Importer for `processed_messages.csv`, the file the macOS "iMessage analysis" app writes:
 *
 *   Timestamp,Readable Time,Sender,Sender ID,Message,Group Chat,Group Chat Name,Sent by Me,To
 *
 * Timestamp is unix seconds (maybe with a fraction); Sender is `Me` or the contact; Group Chat
 * is 1/0; To is the contact of a direct chat (empty in groups). Rows come newest first; the
 * messages are handed back oldest first. Streaming: the file is never held whole in memory.
 */
import { createReadStream } from 'node:fs'
import { parse } from 'csv-parse'
import type { ImportResult, Message } from '../types.ts'
import { explainFsError, firstInvalidUtf8, readFileOrExplain, Utf8Error } from './text.ts'

/** The app's header, in order. */
export const CSV_COLUMNS = [
  'Timestamp',
  'Readable Time',
  'Sender',
  'Sender ID',
  'Message',
  'Group Chat',
  'Group Chat Name',
  'Sent by Me',
  'To',
] as const

/** The columns the importer cannot do without. */
const REQUIRED = ['Timestamp', 'Sender', 'Message', 'Group Chat', 'Sent by Me', 'To'] as const

const truthy = (s: string | undefined): boolean => {
  if (!s) return false
  const c = s.charCodeAt(0)
  // '1', 't'/'T' (true), 'y'/'Y' (yes)
  return c === 49 || c === 116 || c === 84 || c === 121 || c === 89
}

/** Map header names to column indexes, or throw naming what is missing. */
function columnIndexes(header: string[], path: string): Record<string, number> {
  const idx: Record<string, number> = {}
  header.forEach((h, i) => (idx[h.trim()] = i))
  const missing = REQUIRED.filter((c) => idx[c] === undefined)
  if (missing.length) {
    throw new Error(
      `${path}: not the CSV of the iMessage analysis app: header is "${header.join(',').slice(0, 200)}", ` +
        `missing column(s) ${missing.map((m) => `"${m}"`).join(', ')}; expected "${CSV_COLUMNS.join(',')}"`,
    )
  }
  return idx
}

/** Read a processed_messages.csv. */
export async function readCsv(path: string): Promise<ImportResult> {
  const messages: Message[] = []
  let malformed = 0
  let idx: Record<string, number> | undefined
  let iTs = 0, iSender = 0, iText = 0, iGroup = 0, iGroupName = 0, iMe = 0, iTo = 0, iSenderId = -1

  const parser = parse({ bom: true, relax_column_count: true, skip_empty_lines: true })
  let failed: Error | undefined
  const done = new Promise<void>((resolve, reject) => {
    parser.on('error', (e) => {
      failed ??= e
      reject(e)
    })
    parser.on('end', resolve)
    parser.on('close', () => (failed ? reject(failed) : resolve()))
  })
  done.catch(() => {}) // awaited below; this only stops an early rejection counting as unhandled
  parser.on('data', (r: string[]) => {
    if (failed) return
    if (!idx) {
      try {
        idx = columnIndexes(r, path)
      } catch (e) {
        failed = e as Error
        parser.destroy(failed)
        return
      }
      iTs = idx['Timestamp']
      iSender = idx['Sender']
      iSenderId = idx['Sender ID'] ?? -1
      iText = idx['Message']
      iGroup = idx['Group Chat']
      iGroupName = idx['Group Chat Name'] ?? -1
      iMe = idx['Sent by Me']
      iTo = idx['To']
      return
    }
    const secs = Number(r[iTs])
    if (r.length <= iText || !Number.isFinite(secs) || r[iTs] === '') {
      malformed++
      return
    }
    const isGroup = truthy(r[iGroup])
    const fromMe = truthy(r[iMe]) || r[iSender] === 'Me'
    const sender = fromMe ? 'Me' : r[iSender] || (iSenderId >= 0 ? r[iSenderId] : '') || ''
    let chat: string
    if (isGroup) chat = 'group:' + ((iGroupName >= 0 && r[iGroupName]) || r[iTo] || 'unnamed')
    else {
      const to = r[iTo]
      chat = to && to !== 'Me' ? to : sender !== 'Me' ? sender : ''
    }
    if (!chat) {
      malformed++
      return
    }
    messages.push({ time: new Date(secs * 1000), chat, sender, fromMe, isGroup, text: r[iText] ?? '' })
  })

  const decoder = new TextDecoder('utf-8', { fatal: true })
  let stream
  try {
    stream = createReadStream(path, { highWaterMark: 1 << 20 })
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      let s: string
      try {
        s = decoder.decode(chunk, { stream: true })
      } catch {
        throw await utf8ErrorOf(path)
      }
      if (failed) break
      if (!parser.write(s)) await new Promise((r) => {
        parser.once('drain', r)
        parser.once('close', r)
      })
      if (failed) break
    }
    if (!failed) {
      try {
        const tail = decoder.decode()
        if (tail) parser.write(tail)
      } catch {
        throw await utf8ErrorOf(path)
      }
    }
  } catch (e) {
    parser.destroy()
    if (e instanceof Utf8Error) throw e
    if ((e as NodeJS.ErrnoException).code && (e as NodeJS.ErrnoException).syscall) throw explainFsError(path, e)
    throw csvError(path, e)
  }
  if (!failed) parser.end()
  try {
    await done
  } catch (e) {
    throw csvError(path, e)
  }
  if (!idx) throw new Error(`${path}: the CSV is empty (no header line)`)
  messages.reverse() // the app writes newest first
  return { kind: 'csv', messages, pairs: [], skipped: { malformed } }
}

function csvError(path: string, e: unknown): Error {
  if (e instanceof Error && e.message.startsWith(path)) return e
  const err = e as Error & { lines?: number }
  const where = err.lines ? ` (near line ${err.lines})` : ''
  return new Error(`${path}: cannot parse CSV${where}: ${err.message}`)
}

async function utf8ErrorOf(path: string): Promise<Utf8Error> {
  const bytes = await readFileOrExplain(path)
  return new Utf8Error(path, bytes, Math.max(0, firstInvalidUtf8(bytes)))
}
