/**
 * Atomic file writes: the bytes go to a temporary file in the same folder, are flushed to disk
 * (fsync), and only then renamed over the target, so a reader sees the old file or the new one,
 * never half of one. A failed write (a full disk, a read-only folder) removes the temporary
 * file and leaves the target untouched; the error says what happened and to which file.
 *
 * The file system is injectable so that tests can simulate ENOSPC.
 */
import * as fsp from 'node:fs/promises';
import path from 'node:path';

/** The few file-system calls atomic writes need; `node:fs/promises` is one. */
export interface WriteFs {
  open(file: string, flags: 'w'): Promise<{ writeFile(data: Uint8Array | string): Promise<void>; sync(): Promise<void>; close(): Promise<void> }>;
  rename(from: string, to: string): Promise<void>;
  rm(file: string, options: { force?: boolean; recursive?: boolean }): Promise<void>;
  mkdir(dir: string, options: { recursive: true }): Promise<unknown>;
}

/** The real file system. */
export const nodeFs: WriteFs = fsp as unknown as WriteFs;

let counter = 0;
/** A temporary name next to `file` (hidden, unique within this process). */
export function tempName(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${(counter++).toString(36)}.tmp`);
}

/** Turns a low-level write error into one that says what to do. */
export function writeError(e: unknown, file: string, bytes?: number): Error {
  const err = e as NodeJS.ErrnoException;
  const size = bytes === undefined ? '' : ` (${(bytes / 1e6).toFixed(bytes < 1e6 ? 3 : 1)} MB)`;
  let why: string;
  switch (err.code) {
    case 'ENOSPC': why = `no space left on the device${size}; free some space and run again`; break;
    case 'EDQUOT': why = `disk quota exceeded${size}; free some space and run again`; break;
    case 'EROFS': why = 'the file system is read-only; choose another output folder'; break;
    case 'EACCES': case 'EPERM': why = 'permission denied; choose a folder you can write to'; break;
    default: why = err.message ?? String(e);
  }
  const out = new Error(`mimic: cannot write ${file}: ${why}. Nothing was replaced: the previous file (if any) is intact.`);
  (out as NodeJS.ErrnoException).code = err.code;
  (out as Error & { cause?: unknown }).cause = e;
  return out;
}

/** Writes `data` to a flushed temporary file next to `file` and returns its name (not yet renamed). */
export async function writeTemp(file: string, data: Uint8Array | string, fs: WriteFs = nodeFs): Promise<string> {
  const tmp = tempName(file);
  try {
    await fs.mkdir(path.dirname(file), { recursive: true });
    const h = await fs.open(tmp, 'w');
    try {
      await h.writeFile(data);
      await h.sync();
    } finally {
      await h.close();
    }
    return tmp;
  } catch (e) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw writeError(e, file, typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength);
  }
}

/** fsyncs a folder so that renames in it survive a power cut (best effort: not every platform can). */
export async function syncDir(dir: string): Promise<void> {
  let h: fsp.FileHandle | undefined;
  try {
    h = await fsp.open(dir, 'r');
    await h.sync();
  } catch {
    // Windows and some file systems cannot open or fsync a folder; the rename is still atomic.
  } finally {
    await h?.close().catch(() => undefined);
  }
}

/** Writes one file atomically (temp + fsync + rename). */
export async function writeFileAtomic(file: string, data: Uint8Array | string, fs: WriteFs = nodeFs): Promise<void> {
  await writeFilesAtomic([[file, data]], fs);
}

/**
 * Writes several files so that none is replaced unless all of them could be written: every
 * temporary file is written and flushed first, then they are renamed one after another.
 */
export async function writeFilesAtomic(files: [string, Uint8Array | string][], fs: WriteFs = nodeFs): Promise<void> {
  const temps: string[] = [];
  try {
    for (const [file, data] of files) temps.push(await writeTemp(file, data, fs));
  } catch (e) {
    for (const t of temps) await fs.rm(t, { force: true }).catch(() => undefined);
    throw e;
  }
  for (let i = 0; i < files.length; i++) {
    try {
      await fs.rename(temps[i], files[i][0]);
    } catch (e) {
      for (const t of temps.slice(i)) await fs.rm(t, { force: true }).catch(() => undefined);
      throw writeError(e, files[i][0]);
    }
  }
  if (fs === nodeFs) for (const d of new Set(files.map(([f]) => path.dirname(f)))) await syncDir(d);
}
