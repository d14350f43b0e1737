/**
 * safetensors in TypeScript: the format every Hugging Face tool reads (an 8-byte little-endian
 * header length, a JSON header `{name: {dtype, shape, data_offsets}}`, then the raw tensors).
 *
 * The writer is deterministic (tensors in name order, header padded with spaces to 8 bytes, as
 * the Rust reference does) so that two equal adapters are equal byte for byte. The reader
 * checks every offset and shape against the file's size before it trusts them, and converts
 * F32 / F16 / BF16 / F64 to Float32Array.
 */
import { readFile } from 'node:fs/promises';

export type Dtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I32' | 'I64' | 'U8' | 'I8';

/** A tensor to write: fp32 data and its shape (the product of the shape must equal the length). */
export interface TensorIn {
  data: Float32Array;
  shape: number[];
}

/** A tensor read back: always converted to fp32. */
export interface TensorOut {
  data: Float32Array;
  shape: number[];
  /** The dtype stored in the file. */
  dtype: Dtype;
}

const BYTES: Record<Dtype, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I32: 4, I64: 8, U8: 1, I8: 1 };

/**
 * Serializes tensors as a safetensors file (F32, or BF16 when `dtype: 'BF16'`, rounded to
 * nearest even as torch does). `metadata` goes into `__metadata__` (default `{format: 'pt'}`).
 */
export function encodeSafetensors(tensors: Record<string, TensorIn>, options: { metadata?: Record<string, string>; dtype?: 'F32' | 'BF16' } = {}): Buffer {
  const dtype = options.dtype ?? 'F32';
  const width = BYTES[dtype];
  const names = Object.keys(tensors).sort();
  const header: Record<string, unknown> = { __metadata__: options.metadata ?? { format: 'pt' } };
  let offset = 0;
  for (const name of names) {
    const t = tensors[name];
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) {
      throw new Error(`mimic: tensor ${name} has ${t.data.length} values but shape [${t.shape.join(', ')}] needs ${n}`);
    }
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + n * width] };
    offset += n * width;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + head.length + offset);
  out.writeBigUInt64LE(BigInt(head.length), 0);
  head.copy(out, 8);
  let at = 8 + head.length;
  for (const name of names) {
    const src = tensors[name].data;
    if (dtype === 'F32') {
      Buffer.from(src.buffer, src.byteOffset, src.byteLength).copy(out, at);
      // Float32Array is host-endian; every platform Node supports is little-endian.
      at += src.byteLength;
    } else {
      const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
      for (let i = 0; i < src.length; i++) {
        const x = u[i];
        const isNaN = (x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0;
        const r = isNaN ? ((x >>> 16) | 0x40) : ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16);
        out.writeUInt16LE(r & 0xffff, at);
        at += 2;
      }
    }
  }
  return out;
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** Parses a safetensors buffer. `source` names the file in error messages. */
export function decodeSafetensors(buf: Buffer, source = 'safetensors data'): { tensors: Record<string, TensorOut>; metadata: Record<string, string> } {
  const bad = (why: string) => new Error(`mimic: ${source} is not a valid safetensors file: ${why}`);
  if (buf.length < 8) throw bad(`only ${buf.length} bytes`);
  const n = buf.readBigUInt64LE(0);
  if (n > BigInt(buf.length - 8)) throw bad(`the header claims ${n} bytes but the file has ${buf.length - 8} after the length`);
  let header: Record<string, { dtype: Dtype; shape: number[]; data_offsets: [number, number] }>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + Number(n)).toString('utf8'));
  } catch (e) {
    throw bad(`the header is not JSON (${(e as Error).message})`);
  }
  const base = 8 + Number(n);
  const metadata = (header.__metadata__ ?? {}) as unknown as Record<string, string>;
  const tensors: Record<string, TensorOut> = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const width = BYTES[info?.dtype];
    if (!width) throw bad(`tensor ${name} has unsupported dtype ${info?.dtype}`);
    const [b, e] = info.data_offsets ?? [];
    const count = (info.shape ?? []).reduce((a, x) => a * x, 1);
    if (!Number.isInteger(b) || !Number.isInteger(e) || b < 0 || e < b || base + e > buf.length) {
      throw bad(`tensor ${name}'s data [${b}, ${e}) lies outside the file (truncated?)`);
    }
    if (e - b !== count * width) throw bad(`tensor ${name} has ${e - b} bytes but shape [${info.shape}] × ${info.dtype} needs ${count * width}`);
    const raw = buf.subarray(base + b, base + e);
    const data = new Float32Array(count);
    switch (info.dtype) {
      case 'F32':
        if (raw.byteOffset % 4 === 0) data.set(new Float32Array(raw.buffer, raw.byteOffset, count));
        else for (let i = 0; i < count; i++) data[i] = raw.readFloatLE(i * 4);
        break;
      case 'F64': for (let i = 0; i < count; i++) data[i] = raw.readDoubleLE(i * 8); break;
      case 'F16': for (let i = 0; i < count; i++) data[i] = halfToFloat(raw.readUInt16LE(i * 2)); break;
      case 'BF16': {
        const u = new Uint32Array(data.buffer);
        for (let i = 0; i < count; i++) u[i] = raw.readUInt16LE(i * 2) << 16;
        break;
      }
      case 'I32': for (let i = 0; i < count; i++) data[i] = raw.readInt32LE(i * 4); break;
      case 'I64': for (let i = 0; i < count; i++) data[i] = Number(raw.readBigInt64LE(i * 8)); break;
      case 'U8': for (let i = 0; i < count; i++) data[i] = raw[i]; break;
      case 'I8': for (let i = 0; i < count; i++) data[i] = raw.readInt8(i); break;
    }
    tensors[name] = { data, shape: info.shape.slice(), dtype: info.dtype };
  }
  return { tensors, metadata };
}

/** Reads and parses a safetensors file. */
export async function readSafetensors(file: string): Promise<{ tensors: Record<string, TensorOut>; metadata: Record<string, string> }> {
  let buf: Buffer;
  try {
    buf = await readFile(file);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new Error(`mimic: cannot read ${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`);
  }
  return decodeSafetensors(buf, file);
}
