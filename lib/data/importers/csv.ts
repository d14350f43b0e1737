/**
 * Importer for `processed_messages.csv`, the file the macOS "iMessage analysis" app writes:
 *
 *   Timestamp,Readable Time,Sender,Sender ID,Message,Group Chat,Group Chat Name,Sent by Me,To
 *
 * Timestamp is unix seconds (maybe with a fraction); Sender is `Me` or the contact; Group Chat
 * is 1/0; To is the contact of a direct chat (empty in groups). Rows come newest first; the
 * messages are handed back oldest first. Streaming: the file is never held whole in memory;
 * records with quotes are parsed by csv-parse (see `RecordStream`).
 */
import { createReadStream } from 'node:fs'
import { parse as parseSync } from 'csv-parse/sync'
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

/**
 * Splits CSV text into records as it streams in. A record ends at a newline outside quotes;
 * quote state flips at every `"` (an escaped `""` flips twice), so a record is complete when
 * its quote count is even. Records without a quote are split at commas (exact under RFC 4180);
 * records with quotes are parsed by csv-parse, batched per chunk. Records come out in order.
 */
export class RecordStream {
  private tail = ''
  private line = 0 // lines consumed so far (1-based line of the next record = line + 1)
  constructor(
    private readonly path: string,
    private readonly onRecord: (r: string[], line: number) => void,
  ) {}

  push(text: string, end = false): void {
    const s = this.tail + text
    let pos = 0
    const out: (string[] | number)[] = [] // a row, or an index into the quoted batch
    const lines: number[] = []
    let batch = ''
    let batchLines: number[] = []
    let nQuoted = 0
    const n = s.length
    let nextQ = s.indexOf('"') // kept ahead of pos, so lines without quotes cost no rescans
    while (pos < n) {
      let nl = s.indexOf('\n', pos)
      if (nl < 0) {
        if (!end) break
        nl = n
      }
      if (nextQ >= 0 && nextQ < pos) nextQ = s.indexOf('"', pos)
      let q = nextQ
      if (q < 0 || q > nl) {
        // No quote: the line is the record.
        let stop = nl
        if (stop > pos && s.charCodeAt(stop - 1) === 13) stop-- // \r\n
        this.line++
        if (stop > pos) {
          out.push(s.slice(pos, stop).split(','))
          lines.push(this.line)
        }
        pos = nl + 1
        continue
      }
      // Quoted: extend over newlines until the quote count is even.
      let quotes = 0
      let recEnd = -1
      let scan = pos
      let nLines = 0
      for (;;) {
        let lineEnd = s.indexOf('\n', scan)
        if (lineEnd < 0) {
          if (!end) break
          lineEnd = n
        }
        while (q >= 0 && q < lineEnd) {
          quotes++
          q = s.indexOf('"', q + 1)
        }
        nLines++
        if (quotes % 2 === 0 || lineEnd === n) {
          recEnd = lineEnd
          break
        }
        scan = lineEnd + 1
      }
      if (recEnd < 0) break // incomplete: wait for more text
      batch += s.slice(pos, recEnd) + '\n'
      batchLines.push(this.line + 1)
      this.line += nLines
      out.push(nQuoted++)
      lines.push(this.line - nLines + 1)
      pos = recEnd + 1
    }
    this.tail = s.slice(pos)
    let parsed: string[][] = []
    if (batch) {
      try {
        parsed = parseSync(batch, { relax_column_count: true, skip_empty_lines: true })
      } catch {
        parsed = this.explain(batch, batchLines)
      }
      if (parsed.length !== nQuoted) parsed = this.explain(batch, batchLines)
    }
    for (let i = 0; i < out.length; i++) {
      const r = out[i]
      this.onRecord(typeof r === 'number' ? parsed[r] : r, lines[i])
    }
  }

  /** Parse a failed batch record by record, to name the line of the bad one. */
  private explain(batch: string, batchLines: number[]): string[][] {
    const recs: string[] = []
    // Re-split the batch the same way (each record was written followed by one newline).
    let pos = 0
    for (let k = 0; k < batchLines.length; k++) {
      let quotes = 0
      let i = pos
      for (; i < batch.length; i++) {
        const c = batch.charCodeAt(i)
        if (c === 34) quotes++
        else if (c === 10 && quotes % 2 === 0) break
      }
      recs.push(batch.slice(pos, i))
      pos = i + 1
    }
    return recs.map((r, k) => {
      try {
        const p = parseSync(r, { relax_column_count: true })
        if (p.length !== 1) throw new Error(`one record expected, found ${p.length}`)
        return p[0]
      } catch (e) {
        throw new Error(`${this.path}: cannot parse CSV at line ${batchLines[k]}: ${(e as Error).message}`)
      }
    })
  }
}

/** Read a processed_messages.csv. */
export async function readCsv(path: string): Promise<ImportResult> {
  const messages: Message[] = []
  let malformed = 0
  let idx: Record<string, number> | undefined
  let iTs = 0, iSender = 0, iText = 0, iGroup = 0, iGroupName = 0, iMe = 0, iTo = 0, iSenderId = -1

  // Contacts repeat on every row: share one string per contact instead of a million copies.
  const names = new Map<string, string>()
  const intern = (x: string): string => {
    const y = names.get(x)
    if (y !== undefined) return y
    names.set(x, x)
    return x
  }
  const onRecord = (r: string[]) => {
    if (!idx) {
      idx = columnIndexes(r, path)
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
    const ts = r[iTs]
    const secs = ts ? +ts : NaN
    if (r.length <= iText || !(secs === secs)) {
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
    messages.push({ time: new Date(secs * 1000), chat: intern(chat), sender: intern(sender), fromMe, isGroup, text: r[iText] ?? '' })
  }

  const records = new RecordStream(path, onRecord)
  const decoder = new TextDecoder('utf-8', { fatal: true }) // drops a leading BOM
  try {
    for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
      let s: string
      try {
        s = decoder.decode(chunk, { stream: true })
      } catch {
        throw await utf8ErrorOf(path)
      }
      records.push(s)
    }
    let last: string
    try {
      last = decoder.decode()
    } catch {
      throw await utf8ErrorOf(path)
    }
    records.push(last, true)
  } catch (e) {
    if (e instanceof Utf8Error) throw e
    if ((e as NodeJS.ErrnoException).code && (e as NodeJS.ErrnoException).syscall) throw explainFsError(path, e)
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
