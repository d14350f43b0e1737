/**
 * Which importer reads a file, chosen by its content, not its name: the SQLite magic header,
 * a CSV header line, a first JSON line holding `input` and `output`, or a first line that is
 * a WhatsApp message (`12/31/23, 9:15 PM - Name: …` or `[31/12/2023, 21:15:03] Name: …`). Anything else is an
 * error that says what the file looks like.
 */
import { open } from 'node:fs/promises'
import type { ImportResult, SourceKind } from '../types.ts'
import { readChatDb } from './chatdb.ts'
import { CSV_COLUMNS, readCsv } from './csv.ts'
import { readJsonl } from './jsonl.ts'
import { explainFsError } from './text.ts'
import { isWhatsAppLine, readWhatsApp, type WhatsAppOptions } from './whatsapp.ts'

const SQLITE_MAGIC = 'SQLite format 3\0'

/** Look at the first bytes of `path` and name its kind, or throw saying what it is. */
export async function detectKind(path: string): Promise<SourceKind> {
  let head: Buffer
  let size: number
  try {
    const fh = await open(path, 'r')
    try {
      const st = await fh.stat()
      if (st.isDirectory()) throw Object.assign(new Error('directory'), { code: 'EISDIR' })
      size = st.size
      head = Buffer.alloc(Math.min(size, 64 * 1024))
      await fh.read(head, 0, head.length, 0)
    } finally {
      await fh.close()
    }
  } catch (e) {
    throw explainFsError(path, e)
  }
  return kindOf(head, size, path)
}

/** The kind of a file from its first bytes (exported for tests). */
export function kindOf(head: Buffer, size: number, path: string): SourceKind {
  if (size === 0) throw new Error(`${path}: the file is empty`)
  if (head.subarray(0, 16).toString('latin1') === SQLITE_MAGIC) {
    if (size < 512) throw new Error(`${path}: an SQLite file cut short (${size} bytes; a database is at least one 512-byte page)`)
    return 'chatdb'
  }
  if (SQLITE_MAGIC.startsWith(head.subarray(0, Math.min(16, head.length)).toString('latin1'))) {
    throw new Error(`${path}: an SQLite file cut short (${size} bytes, not even a full header)`)
  }
  // Text from here on: look at the first non-empty line (a cut-off multibyte char is fine).
  let text = head.toString('utf8')
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1)
  const nul = text.indexOf('\0')
  if (nul >= 0 && nul < 1024) {
    const hex = Array.from(head.subarray(0, 8), (b) => b.toString(16).padStart(2, '0')).join(' ')
    throw new Error(
      `${path}: binary data (starts ${hex}), not a chat.db (SQLite), a processed_messages.csv, a WhatsApp export (.txt) or a JSONL of {input, output}`,
    )
  }
  const first = text.split(/\r?\n/).find((l) => l.trim() !== '')?.trim() ?? ''
  if (!first) throw new Error(`${path}: the file holds only blank lines`)
  if (first.startsWith('{')) {
    let obj: Record<string, unknown> | undefined
    try {
      obj = JSON.parse(first)
    } catch {
      throw new Error(
        `${path}: starts with "{" but its first line is not a JSON object (a pretty-printed JSON document? JSONL needs one {"input", "output"} object per line)`,
      )
    }
    if (obj && typeof obj === 'object' && 'input' in obj && 'output' in obj) return 'jsonl'
    throw new Error(
      `${path}: JSON lines, but the first object has keys ${JSON.stringify(Object.keys(obj ?? {}))} instead of "input" and "output"`,
    )
  }
  if (isWhatsAppLine(first)) return 'whatsapp'
  if (first.startsWith('[')) {
    throw new Error(`${path}: a JSON array; give pairs as JSONL, one {"input", "output"} object per line`)
  }
  if (first.includes(',') || first.includes('Timestamp')) {
    // The CSV importer checks the header itself and names any missing column.
    return 'csv'
  }
  throw new Error(
    `${path}: plain text that is none of: a chat.db (SQLite), a processed_messages.csv (header "${CSV_COLUMNS.join(',')}"), ` +
      `a JSONL of {"input", "output"}, a WhatsApp chat export (lines like "12/31/23, 9:15 PM - Name: text" ` +
      `or "[31/12/2023, 21:15:03] Name: text"); it starts "${first.slice(0, 60)}"`,
  )
}

/** Read any supported file (`whatsapp` options matter only for WhatsApp exports). */
export async function importFile(path: string, whatsapp: WhatsAppOptions = {}): Promise<ImportResult> {
  const kind = await detectKind(path)
  if (kind === 'whatsapp') return readWhatsApp(path, whatsapp)
  if (kind === 'chatdb') return readChatDb(path)
  if (kind === 'csv') return readCsv(path)
  return readJsonl(path)
}
