// NF4 against bitsandbytes: every packed byte, absmax, double-quantization field and the
// dequantized weights of the fixture's bf16 weight; the row-tiled NF4 matmuls against a plain
// dequantize-then-multiply; the whole tiny model in NF4 against bitsandbytes' Linear4bit logits.
import t from 'tap';
import { native } from '../../lib/native.ts';
import { expectedTensors, maxRelErr, modelDir } from './util/fixtures.ts';

interface Nf4Quantized {
  packed: Uint8Array; absmax: Float32Array; dequant: Float32Array;
  absmaxU8?: Uint8Array; absmax2?: Float32Array; code2?: Float32Array; offset?: number;
}
interface Nf4Hooks {
  _nf4Quantize(w: Float32Array, M: number, K: number, doubleQuant: boolean): Nf4Quantized;
  _nf4Matmul(w: Float32Array, M: number, K: number, doubleQuant: boolean, x: Float32Array, N: number,
    dout: Float32Array): { out: Float32Array; dx: Float32Array };
}
const hooks = native() as unknown as Nf4Hooks;
const exp = expectedTensors();
const w = exp['nf4.weight_bf16'].data as Float32Array;
const [M, K] = exp['nf4.weight_bf16'].shape;

/** Round to bfloat16 (nearest even), as bitsandbytes' bf16 dequant output is stored. */
function bf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  u[0] = (u[0] + 0x7fff + ((u[0] >> 16) & 1)) & 0xffff0000;
  return f[0];
}
function mismatches(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let n = a.length === b.length ? 0 : Math.max(a.length, b.length);
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) n++;
  return n;
}

t.test('plain NF4: packed bytes, absmax and dequant identical to bitsandbytes', async (t) => {
  const q = hooks._nf4Quantize(w, M, K, false);
  t.equal(q.packed.length, M * K / 2, 'two codes per byte');
  t.equal(mismatches(q.packed, exp['nf4.plain.packed'].data), 0, 'packed bytes');
  t.equal(mismatches(q.absmax, exp['nf4.plain.absmax'].data), 0, 'absmax');
  t.equal(mismatches(Array.from(q.dequant, bf16), exp['nf4.plain.dequant'].data), 0, 'dequant (bf16-rounded)');
  t.notOk('absmaxU8' in q, 'no double-quantization fields');
  // the packing order, independently of bitsandbytes' bytes: element 0 is the high nibble
  const code = exp['nf4.code'].data as Float32Array;
  t.equal(q.dequant[0], Math.fround(code[q.packed[0] >> 4] * q.absmax[0]));
  t.equal(q.dequant[1], Math.fround(code[q.packed[0] & 15] * q.absmax[0]));
});

t.test('double-quantized NF4: every field identical to bitsandbytes', async (t) => {
  const q = hooks._nf4Quantize(w, M, K, true);
  t.equal(mismatches(q.packed, exp['nf4.dq.packed'].data), 0, 'packed bytes');
  t.equal(mismatches(q.absmaxU8!, exp['nf4.dq.absmax_u8'].data), 0, 'absmax codes (u8)');
  t.equal(mismatches(q.absmax2!, exp['nf4.dq.absmax2'].data), 0, 'absmax2');
  t.equal(q.offset, (exp['nf4.dq.offset'].data as Float32Array)[0], 'offset = mean(absmax)');
  t.equal(mismatches(q.code2!, exp['nf4.dq.code2'].data), 0, 'code2 = create_dynamic_map(signed=True), generated');
  t.equal(mismatches(Array.from(q.dequant, bf16), exp['nf4.dq.dequant'].data), 0, 'dequant (bf16-rounded)');
});

t.test('edge cases: an all-zero block, a partial last block, extreme values', async (t) => {
  const z = new Float32Array(128);
  for (let i = 64; i < 128; i++) z[i] = (i - 96) / 10;
  const q = hooks._nf4Quantize(z, 2, 64, false);
  t.equal(q.absmax[0], 0);
  t.same(Array.from(q.dequant.subarray(0, 64)), new Array(64).fill(0), 'a zero block dequantizes to zeros');
  t.equal(q.dequant[64], Math.fround(-3.2), 'the block extreme is exact (code ±1 · absmax)');
  const odd = Float32Array.from({ length: 3 * 30 }, (_, i) => Math.sin(i));
  const qo = hooks._nf4Quantize(odd, 3, 30, true);
  t.equal(qo.absmax.length, 2, '90 values: one full and one partial block');
  t.equal(qo.packed.length, 45);
  t.ok(maxRelErr(qo.dequant, odd) < 0.2, 'dequant stays within one quantization step');
});

t.test('NF4 matmuls equal dequantize-then-multiply', async (t) => {
  for (const [m, k, n, dq] of [[48, 192, 5, false], [33, 64, 70, true], [64, 64, 1, false]] as const) {
    const W = Float32Array.from({ length: m * k }, (_, i) => Math.sin(i * 0.37) * (1 + (i % 7)));
    const x = Float32Array.from({ length: n * k }, (_, i) => Math.cos(i * 0.11));
    const dout = Float32Array.from({ length: n * m }, (_, i) => Math.sin(i * 0.53));
    const deq = hooks._nf4Quantize(W, m, k, dq).dequant;
    const { out, dx } = hooks._nf4Matmul(W, m, k, dq, x, n, dout);
    const wantOut = new Float64Array(n * m), wantDx = new Float64Array(n * k);
    for (let r = 0; r < n; r++)
      for (let j = 0; j < m; j++) {
        let s = 0;
        for (let c = 0; c < k; c++) s += x[r * k + c] * deq[j * k + c];
        wantOut[r * m + j] = s;
        for (let c = 0; c < k; c++) wantDx[r * k + c] += dout[r * m + j] * deq[j * k + c];
      }
    const eo = maxRelErr(out, wantOut), ed = maxRelErr(dx, wantDx);
    t.ok(eo < 1e-5 && ed < 1e-5, `[${m}x${k}] N=${n} dq=${dq}: forward ${eo.toExponential(1)}, backward ${ed.toExponential(1)}`);
  }
});

t.test('the whole model in NF4 matches bitsandbytes Linear4bit logits within 1e-4', async (t) => {
  const model = await native().loadModel(modelDir, { device: 'cpu', quant: 'nf4', threads: 2 });
  t.teardown(() => model.dispose());
  t.equal(model.quant, 'nf4');
  const ids = exp.input_ids.data as Int32Array;
  const [B, T] = exp.input_ids.shape;
  const V = exp.nf4_model_logits.shape[2];
  const want = exp.nf4_model_logits.data as Float32Array;
  for (let b = 0; b < B; b++) {
    const got = await model.logits(ids.slice(b * T, (b + 1) * T));
    const rel = maxRelErr(got, want.subarray(b * T * V, (b + 1) * T * V));
    t.comment(`row ${b}: NF4 logits max |err| / max |ref| = ${rel.toExponential(2)}`);
    // The fixture's Linear4bit weights are Params4bit(...) with its default compress_statistics=True
    // (double-quantized absmax, whatever expected.json's note says); load_llama does the same.
    t.ok(rel <= 1e-4, `row ${b}: ${rel} <= 1e-4`);
  }
});
