/**
 * Reading files as strict UTF-8: a byte sequence that is not UTF-8 is an error that names the
 * file, the byte offset and the line, never a silent U+FFFD.
 */
import { readFile } from 'node:fs/promises'

/** Offset of the first byte that does not start a well-formed UTF-8 sequence, or -1. */
export function firstInvalidUtf8(b: Uint8Array): number {
  const n = b.length
  let i = 0
  while (i < n) {
    const c = b[i]
    if (c < 0x80) {
      i++
      continue
    }
    let need: number
    let lo = 0x80
    let hi = 0xbf
    if (c >= 0xc2 && c <= 0xdf) need = 1
    else if (c >= 0xe0 && c <= 0xef) {
      need = 2
      if (c === 0xe0) lo = 0xa0 // overlong
      if (c === 0xed) hi = 0x9f // surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      need = 3
      if (c === 0xf0) lo = 0x90 // overlong
      if (c === 0xf4) hi = 0x8f // above U+10FFFF
    } else return i
    if (i + need >= n) return i // cut short at the end
    const c1 = b[i + 1]
    if (c1 < lo || c1 > hi) return i
    for (let k = 2; k <= need; k++) {
      const ck = b[i + k]
      if (ck < 0x80 || ck > 0xbf) return i
    }
    i += need + 1
  }
  return -1
}

/** The error thrown for a file that is not valid UTF-8. */
export class Utf8Error extends Error {
  readonly path: string
  readonly offset: number
  constructor(path: string, bytes: Uint8Array, offset: number) {
    let line = 1
    for (let i = 0; i < offset; i++) if (bytes[i] === 0x0a) line++
    const shown = Array.from(bytes.subarray(offset, offset + 4), (x) => x.toString(16).padStart(2, '0')).join(' ')
    super(
      `${path}: invalid UTF-8 at byte offset ${offset} (line ${line}, bytes ${shown}); ` +
        `re-save the file as UTF-8`,
    )
    this.name = 'Utf8Error'
    this.path = path
    this.offset = offset
  }
}

/** Decode a whole buffer as strict UTF-8 (BOM dropped), or throw a `Utf8Error`. */
export function decodeUtf8(bytes: Uint8Array, path: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes)
  } catch {
    throw new Utf8Error(path, bytes, Math.max(0, firstInvalidUtf8(bytes)))
  }
}

/** Read a whole file as strict UTF-8. */
export async function readUtf8(path: string): Promise<string> {
  return decodeUtf8(await readFileOrExplain(path), path)
}

/** Read a file, turning the usual system errors into a sentence that names the file. */
export async function readFileOrExplain(path: string): Promise<Buffer> {
  try {
    return await readFile(path)
  } catch (e) {
    throw explainFsError(path, e)
  }
}

/** A clear error for ENOENT / EISDIR / EACCES and friends. */
export function explainFsError(path: string, e: unknown): Error {
  const code = (e as NodeJS.ErrnoException)?.code
  const why =
    code === 'ENOENT'
      ? 'no such file'
      : code === 'EISDIR'
        ? 'it is a directory, not a file'
        : code === 'EACCES' || code === 'EPERM'
          ? 'permission denied (on macOS, give the terminal Full Disk Access to read chat.db)'
          : (e as Error)?.message ?? String(e)
  const err = new Error(`cannot read ${path}: ${why}`)
  ;(err as NodeJS.ErrnoException).code = code
  return err
}
