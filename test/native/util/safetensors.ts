/**
 * A tiny safetensors reader/writer for tests: reads F32, F16, BF16, I32, I64 and U8 tensors into
 * typed arrays, and writes F32 files (used to build corrupt checkpoints). Not a product reader —
 * the addon's C++ reader is the one that validates.
 */
import { readFileSync, writeFileSync } from 'node:fs';

export interface Tensor {
  dtype: string;
  shape: number[];
  data: Float32Array | Int32Array | Uint8Array;
}

export interface Header {
  [name: string]: { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>;
}

export function readHeader(file: string): { header: Header; headerLen: number; buf: Buffer } {
  const buf = readFileSync(file);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8')) as Header;
  return { header, headerLen, buf };
}

function f16(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, m = h & 1023;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

export function readSafetensors(file: string): Record<string, Tensor> {
  const { header, headerLen, buf } = readHeader(file);
  const base = 8 + headerLen;
  const out: Record<string, Tensor> = {};
  for (const [name, v] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const info = v as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const [b, e] = info.data_offsets;
    const bytes = buf.subarray(base + b, base + e);
    const copy = new Uint8Array(bytes); // aligned copy
    let data: Tensor['data'];
    switch (info.dtype) {
      case 'F32': data = new Float32Array(copy.buffer, 0, copy.length / 4); break;
      case 'I32': data = new Int32Array(copy.buffer, 0, copy.length / 4); break;
      case 'U8': data = copy; break;
      case 'I64': {
        const big = new BigInt64Array(copy.buffer, 0, copy.length / 8);
        data = Int32Array.from(big, (x) => Number(x));
        break;
      }
      case 'F16': case 'BF16': {
        const u16 = new Uint16Array(copy.buffer, 0, copy.length / 2);
        data = new Float32Array(u16.length);
        for (let i = 0; i < u16.length; i++) {
          if (info.dtype === 'BF16') data[i] = new Float32Array(new Uint32Array([u16[i] << 16]).buffer)[0];
          else data[i] = f16(u16[i]);
        }
        break;
      }
      default: throw new Error(`test reader: unsupported dtype ${info.dtype}`);
    }
    out[name] = { dtype: info.dtype, shape: info.shape, data };
  }
  return out;
}

/** Writes raw header JSON + data (the header may lie on purpose). */
export function writeRaw(file: string, header: unknown, data: Uint8Array): void {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([len, json, data]));
}
