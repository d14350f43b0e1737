// model.nextBatch (native/engine/decode_batch.cpp): one step for many sessions must give exactly
// the tokens of stepping each session alone with session.next — greedy and seeded sampling,
// sessions at different lengths joining at different steps, chunked prompts mixed with decode
// steps, with and without a LoRA adapter, fp32 and NF4, and batches wider than a matmul tile.
import t from 'tap';
import { native, type NativeSession } from '../../lib/native.ts';
import { modelDir } from './util/fixtures.ts';
import { GREEDY, LORA_SPEC as spec, batched, fixtureAdapter, oneByOne, plans as makePlans } from './util/batch-plan.ts';

const adapter = fixtureAdapter();
/** Prompts of 1..40 tokens; chunks of 3 and 7 beside whole prompts. */
const plans = (n: number, V: number, sampled: boolean) =>
  makePlans(n, V, sampled, { seed: 12345, seedBase: 1000, maxPrompt: () => 40, chunks: [0, 3, 7] });

for (const quant of ['none', 'nf4'] as const) {
  t.test(`nextBatch equals session.next one by one (${quant})`, async (t) => {
    const model = await native().loadModel(modelDir, { device: 'cpu', quant });
    t.teardown(() => model.dispose());
    const V = model.config.vocabSize;
    for (const lora of [false, true]) {
      if (lora) model.setLora(spec, adapter); else model.clearLora();
      for (const sampled of [false, true]) {
        for (const n of [1, 5, 40]) {
          const ps = plans(n, V, sampled);
          const want = await oneByOne(model, ps);
          const got = await batched(model, ps);
          t.same(got.tokens, want, `${n} sessions, ${sampled ? 'seeded sampling' : 'greedy'}, ${lora ? 'LoRA' : 'no adapter'}: ` +
            `same tokens (widest step ${got.maxWidth} sessions, ${got.maxRows} rows)`);
          if (n === 40) t.ok(got.maxRows > 64, 'some step ran more rows than one 64-row matmul tile');
        }
      }
    }
  });
}

t.test('nextBatch refuses bad batches clearly and leaves the sessions usable', async (t) => {
  const model = await native().loadModel(modelDir, { device: 'cpu', quant: 'none' });
  const other = await native().loadModel(modelDir, { device: 'cpu', quant: 'none' });
  t.teardown(() => { model.dispose(); other.dispose(); });
  const a = model.createSession(16, 1), b = model.createSession(4, 2), c = other.createSession(16, 3);
  const ids = Int32Array.of(1, 2, 3), h = new Int32Array(0);
  await t.rejects(model.nextBatch([], [], [], []), { code: 'EINVAL', message: /empty/ });
  await t.rejects(model.nextBatch([a, b], [ids], [GREEDY, GREEDY], [h, h]), { code: 'EINVAL', message: /same length/ });
  await t.rejects(model.nextBatch([a, c], [ids, ids], [GREEDY, GREEDY], [h, h]), { code: 'EINVAL', message: /another model/ });
  await t.rejects(model.nextBatch([a, a], [ids, ids], [GREEDY, GREEDY], [h, h]), { code: 'EINVAL', message: /same session/ });
  await t.rejects(model.nextBatch([a, {} as NativeSession], [ids, ids], [GREEDY, GREEDY], [h, h]), { code: 'EINVAL', message: /not a session/ });
  await t.rejects(model.nextBatch([a], [Int32Array.of()], [GREEDY], [h]), { code: 'EINVAL', message: /empty/ });
  await t.rejects(model.nextBatch([a], [[1] as unknown as Int32Array], [GREEDY], [h]), { code: 'EINVAL', message: /Int32Array/ });
  await t.rejects(model.nextBatch([a], [ids], [{ ...GREEDY, topP: 0 }], [h]), { code: 'EINVAL', message: /topP/ });
  await t.rejects(model.nextBatch([a], [Int32Array.of(1 << 20)], [GREEDY], [h]), { code: 'ERANGE' });
  // b holds 4 tokens: 5 do not fit, and a's cache must stay untouched by the failed step
  await t.rejects(model.nextBatch([a, b], [ids, Int32Array.of(1, 2, 3, 4, 5)], [GREEDY, GREEDY], [h, h]), { code: 'EFULL' });
  t.equal(a.length, 0, 'a failed step appends nothing');
  t.equal(b.length, 0);
  // busy: a running next() or nextBatch() holds its sessions
  const running = a.next(ids, GREEDY, h);
  await t.rejects(model.nextBatch([b, a], [ids, ids], [GREEDY, GREEDY], [h, h]), { code: 'EBUSY', message: /sessions\[1\]/ });
  await running;
  const inBatch = model.nextBatch([b], [ids], [GREEDY], [h]);
  await t.rejects(b.next(ids, GREEDY, h), { code: 'EBUSY' });
  await inBatch;
  t.equal(b.length, 3, 'b was released by the rejected batch and stepped by the next one');
  const [tok] = await model.nextBatch([a, b], [Int32Array.of(5), Int32Array.of(6)], [GREEDY, GREEDY], [h, h]);
  t.type(tok, 'number');
  t.equal(a.length, 4);
  model.dispose();
  await t.rejects(model.nextBatch([a], [ids], [GREEDY], [h]), { code: 'EDISPOSED' });
});
