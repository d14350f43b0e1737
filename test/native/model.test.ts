// The CPU engine against what transformers computed for the tiny Llama fixture.
import t from 'tap';
import { native, type NativeModel, type NativeSamplingOptions } from '../../lib/native.ts';
import { modelDir, expectedTensors, maxRelErr, maxElemRelErr } from './util/fixtures.ts';

const exp = expectedTensors();
const ids = exp.input_ids.data as Int32Array;      // [2, 12]
const refLogits = exp.logits.data as Float32Array; // [2, 12, 384]
const [B, T] = exp.input_ids.shape;
const V = exp.logits.shape[2];
const greedy: NativeSamplingOptions = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };

let model: NativeModel;
t.before(async () => {
  model = await native().loadModel(modelDir, { device: 'cpu', quant: 'none', threads: 2 });
});
t.teardown(() => model?.dispose());

t.test('config is read from config.json (rope_parameters, GQA, tied embeddings)', async (t) => {
  const c = model.config;
  t.same(
    [c.vocabSize, c.hiddenSize, c.intermediateSize, c.numLayers, c.numHeads, c.numKvHeads, c.headDim],
    [384, 64, 160, 2, 4, 2, 16]);
  t.equal(c.ropeType, 'llama3');
  t.equal(c.ropeTheta, 500000);
  t.equal(c.tieWordEmbeddings, true);
  t.equal(c.bosTokenId, 0);
  t.same(c.eosTokenIds, [4]);
  t.equal(model.device, 'cpu');
  t.equal(model.quant, 'none');
});

t.test('logits of both input rows match transformers within 1e-4 relative', async (t) => {
  for (let b = 0; b < B; b++) {
    const got = await model.logits(ids.slice(b * T, (b + 1) * T));
    t.equal(got.length, T * V);
    const want = refLogits.subarray(b * T * V, (b + 1) * T * V);
    const rel = maxRelErr(got, want);
    t.comment(`row ${b}: normwise max rel err ${rel.toExponential(2)}, elementwise (atol 1e-3) ${maxElemRelErr(got, want).toExponential(2)}`);
    t.ok(rel <= 1e-4, `row ${b} normwise relative error ${rel} <= 1e-4`);
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]) - 1e-4 * Math.abs(want[i]));
    t.ok(worst <= 1e-5, `row ${b}: every logit within 1e-4·|ref| + 1e-5 (excess ${worst})`);
  }
});

t.test('16 greedy tokens through a session with the KV cache equal transformers generate()', async (t) => {
  const prompt = exp.greedy_prompt.data as Int32Array;
  const want = Array.from(exp.greedy_out.data as Int32Array);
  const s = model.createSession(64, 0);
  const got: number[] = [];
  let next = await s.next(prompt, greedy, prompt);
  got.push(next);
  while (got.length < 16) {
    next = await s.next(Int32Array.of(next), greedy, new Int32Array(0));
    got.push(next);
  }
  t.same(got, want);
  t.equal(s.length, prompt.length + 15);
  t.equal(s.maxLength, 64);
  s.reset();
  t.equal(s.length, 0);
  t.equal(await s.next(prompt, greedy, prompt), want[0], 'after reset the session starts over');
});

t.test('KV-cached logits equal the uncached forward (prefill in chunks, decode by one)', async (t) => {
  const row = ids.slice(0, T);
  const full = await model.logits(row);
  for (const chunk of [1, 5, T]) {
    const cached = await model._logitsCached(row, chunk);
    const rel = maxRelErr(cached, full);
    t.comment(`chunk ${chunk}: max rel err ${rel.toExponential(2)}`);
    t.ok(rel <= 1e-6, `chunk ${chunk}: cached vs uncached ${rel} <= 1e-6`);
  }
});

t.test('the session cache is bounded and ids are validated', async (t) => {
  const s = model.createSession(4, 1);
  await t.rejects(s.next(Int32Array.of(1, 2, 3, 4, 5), greedy, new Int32Array(0)), { code: 'EFULL' });
  await t.rejects(s.next(Int32Array.of(1, 384), greedy, new Int32Array(0)), { code: 'ERANGE', message: /384.*384 tokens/ });
  t.equal(s.length, 0, 'a rejected call leaves the cache untouched');
  await t.rejects(s.next(Int32Array.of(1), { ...greedy, topP: 0 }, new Int32Array(0)), { code: 'EINVAL' });
  t.throws(() => model.createSession(0, 1), { code: 'EINVAL' });
});

t.test('two calls at once on one model are serialized, and one session refuses overlapping next()', async (t) => {
  const row = ids.slice(0, T);
  const [a, b] = await Promise.all([model.logits(row), model.logits(row)]);
  t.same(Array.from(a), Array.from(b));
  const s = model.createSession(32, 3);
  const first = s.next(row, greedy, row);
  await t.rejects(s.next(Int32Array.of(1), greedy, row), { code: 'EBUSY' });
  t.type(await first, 'number');
});

t.test('seeded sampling through sessions is reproducible', async (t) => {
  const opts: NativeSamplingOptions = { temperature: 1.5, topK: 0, topP: 1, repetitionPenalty: 1 };
  const run = async (seed: number) => {
    const s = model.createSession(40, seed);
    const out: number[] = [];
    let tok = await s.next(ids.slice(0, 4), opts, new Int32Array(0));
    out.push(tok);
    for (let i = 0; i < 20; i++) out.push(tok = await s.next(Int32Array.of(tok), opts, new Int32Array(0)));
    return out;
  };
  const a = await run(42), b = await run(42), c = await run(43);
  t.same(a, b, 'same seed, same tokens');
  t.notSame(a, c, 'another seed, other tokens');
});

t.test("quant 'nf4': the seven projections in NF4 (double-quantized) match bitsandbytes' model", async (t) => {
  const q = await native().loadModel(modelDir, { device: 'cpu', quant: 'nf4' });
  t.equal(q.quant, 'nf4');
  const want = exp.nf4_model_logits.data as Float32Array;
  for (let b = 0; b < B; b++) {
    const got = await q.logits(ids.slice(b * T, (b + 1) * T));
    const rel = maxRelErr(got, want.subarray(b * T * V, (b + 1) * T * V));
    t.comment(`row ${b}: NF4 model logits max rel err ${rel.toExponential(2)}`);
    t.ok(rel <= 1e-4, `row ${b}: ${rel} <= 1e-4`);
  }
  q.dispose();
});
