// safetensors writer/reader: round trips, bf16 rounding, PEFT's own file, damaged files.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { decodeSafetensors, encodeSafetensors, readSafetensors } from '../../../lib/train/safetensors.ts';

const fixture = new URL('../../fixtures/ref/tiny-llama/lora/adapter_model.safetensors', import.meta.url).pathname;

t.test('F32 round trip is exact and deterministic', async (t) => {
  const a = new Float32Array([1, -2.5, 3.25e-8, Math.PI, -0, 1e30]);
  const b = new Float32Array([7]);
  const buf = encodeSafetensors({ 'z.w': { data: a, shape: [2, 3] }, 'a.w': { data: b, shape: [1] } });
  const buf2 = encodeSafetensors({ 'a.w': { data: b, shape: [1] }, 'z.w': { data: a, shape: [2, 3] } });
  t.ok(buf.equals(buf2), 'same bytes whatever the insertion order');
  const headerLen = Number(buf.readBigUInt64LE(0));
  t.equal(headerLen % 8, 0, 'header padded to 8 bytes');
  const { tensors, metadata } = decodeSafetensors(buf);
  t.same(metadata, { format: 'pt' });
  t.same(tensors['z.w'].shape, [2, 3]);
  t.same(Array.from(tensors['z.w'].data), Array.from(a));
  t.equal(tensors['a.w'].data[0], 7);
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString());
  t.same(header['a.w'].data_offsets, [0, 4], 'tensors laid out in name order');
});

t.test('BF16 rounds to nearest even, as torch', async (t) => {
  const x = new Float32Array([1, 1.00390625, 1.01171875, -3.14159, 65504, NaN]);
  const { tensors } = decodeSafetensors(encodeSafetensors({ x: { data: x, shape: [6] } }, { dtype: 'BF16' }));
  t.equal(tensors.x.dtype, 'BF16');
  t.equal(tensors.x.data[0], 1);
  t.equal(tensors.x.data[1], 1, 'halfway rounds to even (down)');
  t.equal(tensors.x.data[2], 1.015625, 'halfway rounds to even (up)');
  t.ok(Math.abs(tensors.x.data[3] + 3.140625) < 1e-6);
  t.ok(Number.isNaN(tensors.x.data[5]));
});

t.test("reads PEFT's adapter file", async (t) => {
  const { tensors, metadata } = await readSafetensors(fixture);
  t.equal(metadata.format, 'pt');
  t.equal(Object.keys(tensors).length, 28, '2 layers × 7 projections × A,B');
  const a = tensors['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'];
  t.same(a.shape, [4, 64]);
  t.same(tensors['base_model.model.model.layers.0.mlp.down_proj.lora_B.weight'].shape, [64, 4]);
  // re-encoding what PEFT wrote gives the same tensors back
  const again = decodeSafetensors(encodeSafetensors(Object.fromEntries(Object.entries(tensors).map(([k, v]) => [k, { data: v.data, shape: v.shape }]))));
  t.same(Array.from(again.tensors[Object.keys(tensors)[3]].data), Array.from(tensors[Object.keys(tensors)[3]].data));
});

t.test('damaged files give clear errors', async (t) => {
  const good = readFileSync(fixture);
  t.throws(() => decodeSafetensors(good.subarray(0, good.length - 100), 'x.safetensors'), /x\.safetensors.*outside the file \(truncated\?\)/);
  t.throws(() => decodeSafetensors(Buffer.alloc(4), 'y'), /only 4 bytes/);
  const bad = Buffer.alloc(16); bad.writeBigUInt64LE(1000n, 0);
  t.throws(() => decodeSafetensors(bad), /header claims 1000 bytes/);
  t.throws(() => encodeSafetensors({ a: { data: new Float32Array(3), shape: [2, 2] } }), /has 3 values but shape \[2, 2\] needs 4/);
  await t.rejects(readSafetensors('/nonexistent/a.safetensors'), /cannot read .*no such file/);
});
