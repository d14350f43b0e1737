// Loading checkpoints: bad input gets a clear error with a code (each case its own test, on a
// corrupted copy of the fixture in a temp dir), and the supported variants (BF16/F16 weights,
// one unsharded file, untied lm_head, the older rope_theta + rope_scaling config) load right.
import t from 'tap';
import { cpSync, mkdtempSync, readFileSync, rmSync, truncateSync, unlinkSync, writeFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { native } from '../../lib/native.ts';
import { modelDir, expectedTensors, maxRelErr } from './util/fixtures.ts';
import { readHeader, readSafetensors, writeRaw } from './util/safetensors.ts';

const addon = native();
const exp = expectedTensors();
const row0 = (exp.input_ids.data as Int32Array).slice(0, 12);
const want0 = (exp.logits.data as Float32Array).subarray(0, 12 * 384);
const dirs: string[] = [];
t.teardown(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

function copyFixture(): string {
  const d = mkdtempSync(path.join(tmpdir(), 'mimic-ckpt-'));
  dirs.push(d);
  cpSync(modelDir, d, { recursive: true });
  return d;
}
const load = (dir: string) => addon.loadModel(dir, { device: 'cpu', quant: 'none' });
const shard = (d: string, i: number) => path.join(d, `model-0000${i}-of-00005.safetensors`);
type Info = { dtype: string; shape: number[]; data_offsets: [number, number] };

/** Rewrites a shard's header with `edit` (data kept as is). */
function editHeader(file: string, edit: (h: Record<string, Info>) => void) {
  const { header, headerLen, buf } = readHeader(file);
  edit(header as Record<string, Info>);
  writeRaw(file, header, buf.subarray(8 + headerLen));
}

t.test('missing model directory', async (t) => {
  await t.rejects(load('/nonexistent/mimic-model'), { code: 'ENOENT', message: /\/nonexistent\/mimic-model.*does not exist/ });
});

t.test('directory without config.json', async (t) => {
  const d = copyFixture();
  unlinkSync(path.join(d, 'config.json'));
  await t.rejects(load(d), { code: 'ENOENT', message: /no config\.json/ });
});

t.test('missing shard', async (t) => {
  const d = copyFixture();
  unlinkSync(shard(d, 3));
  await t.rejects(load(d), { code: 'ENOENT', message: /shard model-00003-of-00005\.safetensors .*missing/ });
});

t.test('truncated shard', async (t) => {
  const d = copyFixture();
  truncateSync(shard(d, 2), Math.floor(statSync(shard(d, 2)).size / 2));
  await t.rejects(load(d), { code: 'EBADFILE', message: /model-00002-of-00005\.safetensors is truncated/ });
});

t.test('shard shorter than its 8-byte header length', async (t) => {
  const d = copyFixture();
  truncateSync(shard(d, 4), 5);
  await t.rejects(load(d), { code: 'EBADFILE', message: /truncated \(5 bytes/ });
});

t.test('header length larger than the file', async (t) => {
  const d = copyFixture();
  const buf = readFileSync(shard(d, 1));
  buf.writeBigUInt64LE(BigInt(buf.length), 0);
  writeFileSync(shard(d, 1), buf);
  await t.rejects(load(d), { code: 'EBADFILE', message: /header claims/ });
});

t.test('header that is not JSON', async (t) => {
  const d = copyFixture();
  const buf = readFileSync(shard(d, 1));
  buf[8] = '!'.charCodeAt(0); // the opening brace
  writeFileSync(shard(d, 1), buf);
  await t.rejects(load(d), { code: 'EBADFILE', message: /invalid JSON at byte/ });
});

t.test('header lying about offsets: a tensor beyond the end of the file', async (t) => {
  const d = copyFixture();
  editHeader(shard(d, 5), (h) => {
    const x = h['model.norm.weight'];
    x.data_offsets = [x.data_offsets[0] + 100000, x.data_offsets[1] + 100000];
  });
  await t.rejects(load(d), { code: 'EBADFILE', message: /"model\.norm\.weight" ends at data byte .* holds only/ });
});

t.test('header lying about sizes: offsets span ≠ shape × dtype', async (t) => {
  const d = copyFixture();
  editHeader(shard(d, 5), (h) => { h['model.norm.weight'].shape = [65]; });
  await t.rejects(load(d), { code: 'EBADFILE', message: /"model\.norm\.weight" is F32 \[65\] = 260 bytes but its data_offsets .* span 256/ });
});

t.test('header lying about offsets: two tensors overlap', async (t) => {
  const d = copyFixture();
  editHeader(shard(d, 3), (h) => {
    const names = Object.keys(h).filter((k) => k !== '__metadata__');
    const a = h[names[0]], b = h[names[1]];
    const len = b.data_offsets[1] - b.data_offsets[0];
    b.data_offsets = [a.data_offsets[0], a.data_offsets[0] + len];
  });
  await t.rejects(load(d), { code: 'EBADFILE', message: /overlap/ });
});

t.test('unknown dtype', async (t) => {
  const d = copyFixture();
  editHeader(shard(d, 5), (h) => { h['model.norm.weight'].dtype = 'F8_E4M3'; });
  await t.rejects(load(d), { code: 'EDTYPE', message: /dtype F8_E4M3.*supported: F32, BF16, F16/ });
});

t.test('tensor with the wrong shape for config.json', async (t) => {
  const d = copyFixture();
  editHeader(shard(d, 5), (h) => { h['model.norm.weight'].shape = [8, 8]; });
  await t.rejects(load(d), { code: 'ESHAPE', message: /"model\.norm\.weight".*\[8, 8\].*\[64\]/ });
});

t.test('index naming a tensor its shard lacks', async (t) => {
  const d = copyFixture();
  const idx = JSON.parse(readFileSync(path.join(d, 'model.safetensors.index.json'), 'utf8'));
  idx.weight_map['model.norm.weight'] = 'model-00001-of-00005.safetensors';
  writeFileSync(path.join(d, 'model.safetensors.index.json'), JSON.stringify(idx));
  await t.rejects(load(d), { code: 'EBADFILE', message: /"model\.norm\.weight" in model-00001.*does not contain it/ });
});

t.test('config of a non-Llama model', async (t) => {
  const d = copyFixture();
  const cfg = JSON.parse(readFileSync(path.join(d, 'config.json'), 'utf8'));
  cfg.model_type = 'mistral';
  cfg.architectures = ['MistralForCausalLM'];
  writeFileSync(path.join(d, 'config.json'), JSON.stringify(cfg));
  await t.rejects(load(d), { code: 'EUNSUPPORTED', message: /"mistral" \(MistralForCausalLM\).*Llama-architecture checkpoints only/ });
});

t.test('config with an unsupported rope_type', async (t) => {
  const d = copyFixture();
  const cfg = JSON.parse(readFileSync(path.join(d, 'config.json'), 'utf8'));
  cfg.rope_parameters.rope_type = 'yarn';
  writeFileSync(path.join(d, 'config.json'), JSON.stringify(cfg));
  await t.rejects(load(d), { code: 'EUNSUPPORTED', message: /rope_type "yarn"/ });
});

t.test('token ids out of range', async (t) => {
  const m = await load(modelDir);
  await t.rejects(m.logits(Int32Array.of(0, 5, 384)), { code: 'ERANGE', message: /token id 384 at position 2.*384 tokens/ });
  await t.rejects(m.logits(Int32Array.of(-1)), { code: 'ERANGE', message: /token id -1/ });
  await t.rejects(m.logits(new Int32Array(0)), { code: 'EINVAL' });
  await t.rejects(m.logits([1, 2] as unknown as Int32Array), { code: 'EINVAL', message: /Int32Array/ });
  m.dispose();
});

t.test('bad load options', async (t) => {
  await t.rejects(addon.loadModel(modelDir, { device: 'tpu' as 'cpu', quant: 'none' }), { code: 'EINVAL' });
  await t.rejects(addon.loadModel(modelDir, { device: 'cpu', quant: 'int8' as 'none' }), { code: 'EINVAL' });
  if (!addon.cudaAvailable())
    await t.rejects(addon.loadModel(modelDir, { device: 'cuda', quant: 'none' }), { code: 'ECUDA', message: /device 'cpu'/ });
});

// ---- supported variants -------------------------------------------------------------------------

function bf16(x: number): number {
  const f = new Float32Array([x]), u = new Uint32Array(f.buffer);
  return ((u[0] + 0x7fff + ((u[0] >> 16) & 1)) >>> 16) & 0xffff; // round to nearest even
}
function f16(x: number): number {
  // exact enough for weights of magnitude < 2 (normal range); subnormals flushed
  const s = x < 0 ? 0x8000 : 0, a = Math.abs(x);
  if (a < 6.1e-5) return s;
  const e = Math.floor(Math.log2(a));
  let m = Math.round((a / 2 ** e - 1) * 1024);
  let ee = e;
  if (m === 1024) { m = 0; ee++; }
  return s | ((ee + 15) << 10) | m;
}

/** Rewrites every shard of d in 16-bit `dtype`. */
function convert16(d: string, dtype: 'BF16' | 'F16') {
  for (let i = 1; i <= 5; i++) {
    const ts = readSafetensors(shard(d, i));
    const header: Record<string, unknown> = {};
    const parts: Buffer[] = [];
    let off = 0;
    for (const [name, tsr] of Object.entries(ts)) {
      const b = Buffer.alloc(tsr.data.length * 2);
      tsr.data.forEach((v, j) => b.writeUInt16LE(dtype === 'BF16' ? bf16(v) : f16(v), j * 2));
      header[name] = { dtype, shape: tsr.shape, data_offsets: [off, off + b.length] };
      off += b.length;
      parts.push(b);
    }
    writeRaw(shard(d, i), header, Buffer.concat(parts));
  }
}

t.test('BF16 and F16 checkpoints are converted to fp32 on load', async (t) => {
  for (const dtype of ['BF16', 'F16'] as const) {
    const d = copyFixture();
    convert16(d, dtype);
    const m = await load(d);
    const rel = maxRelErr(await m.logits(row0), want0);
    t.comment(`${dtype} weights: logits max rel err vs fp32 reference ${rel.toExponential(2)}`);
    t.ok(rel < (dtype === 'BF16' ? 3e-2 : 3e-3), `${dtype}: ${rel} within 16-bit rounding of the weights`);
    t.ok(rel > 0, `${dtype}: the weights really were rounded`);
    m.dispose();
  }
});

t.test('one unsharded model.safetensors, untied lm_head, rope_theta + rope_scaling config', async (t) => {
  const d = copyFixture();
  const all: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (let i = 1; i <= 5; i++) {
    for (const [k, v] of Object.entries(readSafetensors(shard(d, i)))) all[k] = { shape: v.shape, data: v.data as Float32Array };
    unlinkSync(shard(d, i));
  }
  unlinkSync(path.join(d, 'model.safetensors.index.json'));
  all['lm_head.weight'] = { shape: all['model.embed_tokens.weight'].shape, data: all['model.embed_tokens.weight'].data.slice() };
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const parts: Buffer[] = [];
  let off = 0;
  for (const [k, v] of Object.entries(all)) {
    const b = Buffer.from(v.data.buffer, v.data.byteOffset, v.data.byteLength);
    header[k] = { dtype: 'F32', shape: v.shape, data_offsets: [off, off + b.length] };
    off += b.length;
    parts.push(Buffer.from(b));
  }
  writeRaw(path.join(d, 'model.safetensors'), header, Buffer.concat(parts));
  const cfg = JSON.parse(readFileSync(path.join(d, 'config.json'), 'utf8'));
  const rp = cfg.rope_parameters;
  delete cfg.rope_parameters;
  cfg.rope_theta = rp.rope_theta;
  cfg.rope_scaling = { rope_type: 'llama3', factor: rp.factor, low_freq_factor: rp.low_freq_factor,
    high_freq_factor: rp.high_freq_factor, original_max_position_embeddings: rp.original_max_position_embeddings };
  cfg.tie_word_embeddings = false;
  cfg.eos_token_id = [4, 1];
  writeFileSync(path.join(d, 'config.json'), JSON.stringify(cfg));

  const m = await load(d);
  t.equal(m.config.tieWordEmbeddings, false);
  t.equal(m.config.ropeType, 'llama3');
  t.equal(m.config.ropeTheta, 500000);
  t.same(m.config.eosTokenIds, [4, 1], 'eos list from config.json plus generation_config.json (deduplicated)');
  const rel = maxRelErr(await m.logits(row0), want0);
  t.ok(rel <= 1e-4, `same logits as the reference: ${rel}`);
  m.dispose();

  // untied with a different lm_head really uses lm_head
  const d2 = copyFixture();
  const cfg2 = JSON.parse(readFileSync(path.join(d2, 'config.json'), 'utf8'));
  cfg2.tie_word_embeddings = false;
  writeFileSync(path.join(d2, 'config.json'), JSON.stringify(cfg2));
  await t.rejects(load(d2), { code: 'EBADFILE', message: /no lm_head\.weight/ });
});
