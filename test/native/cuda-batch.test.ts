// model.nextBatch on device 'cuda' (native/cuda/decode_batch_cuda.cu): one GPU step for many
// sessions must give exactly the tokens of stepping each session alone with session.next —
// greedy and seeded sampling, staggered joins, prompt chunks beside one-token rows, more sessions
// than one 16-row GEMV block, with and without a LoRA adapter; the KV pool (session._release)
// hands caches to later sessions without changing their results. Runs only where the addon has
// CUDA and a GPU is present; elsewhere it is skipped (test/native/batch.test.ts covers the CPU).
// (The GPU round runs the same equality in C++: mimic_cuda_check model / batch, bench/gpu/quick.sh.)
import t from 'tap';
import { native, type NativeSession } from '../../lib/native.ts';
import { modelDir } from './util/fixtures.ts';
import { GREEDY, LORA_SPEC as spec, batched as batchedAll, fixtureAdapter, oneByOne as oneByOneAll, plans as makePlans } from './util/batch-plan.ts';

const addon = native();
/** Every fifth prompt up to 300 tokens (two attention chunks); chunks of 3 and 64 beside whole prompts. */
const plans = (n: number, V: number, sampled: boolean) =>
  makePlans(n, V, sampled, { seed: 4242, seedBase: 2000, maxPrompt: (i) => (i % 5 === 0 ? 300 : 40), chunks: [0, 3, 64] });
// Finished sessions hand their caches back to the pool, so later sessions run on reused caches.
const oneByOne = (model: Parameters<typeof oneByOneAll>[0], ps: Parameters<typeof oneByOneAll>[1]) => oneByOneAll(model, ps, true);
const batched = (model: Parameters<typeof batchedAll>[0], ps: Parameters<typeof batchedAll>[1]) => batchedAll(model, ps, true);

// Bit-for-bit equality holds on the fused-GEMV route; wider steps (≥ 9 rows) default to the GEMM
// route, whose bf16-rounded weights agree only to bf16 level (checked by margin in the C++ rows), so
// this file pins every width to the GEMV (read by the addon at each step).
process.env.MIMIC_BATCH_GEMM_MIN = '1000000';
// session.next's one-row decode graph folds the layer norms into its products (GemvNorm: the same
// error class, not the same bits as the batched step's rmsnorm_rows); unfolded here, so that the
// two paths can be compared bit for bit (read at each recording of the graph).
process.env.MIMIC_DECODE_NORM_FOLD = '0';

if (!addon.cudaAvailable()) {
  t.pass('no CUDA device: the GPU batch checks are skipped (the CPU nextBatch is test/native/batch.test.ts)', { skip: 'no CUDA device' });
} else {
  const adapter = fixtureAdapter();
  for (const quant of ['none', 'nf4'] as const) {
    t.test(`cuda nextBatch equals session.next one by one (${quant})`, async (t) => {
      const model = await addon.loadModel(modelDir, { device: 'cuda', quant });
      t.teardown(() => model.dispose());
      const V = model.config.vocabSize;
      for (const lora of [false, true]) {
        if (lora) model.setLora(spec, adapter); else model.clearLora();
        for (const sampled of [false, true]) {
          for (const n of [2, 20, 40]) {
            const ps = plans(n, V, sampled);
            const want = await oneByOne(model, ps);
            const got = await batched(model, ps);
            t.same(got.tokens, want, `${n} sessions, ${sampled ? 'seeded sampling' : 'greedy'}, ${lora ? 'LoRA' : 'no adapter'}: ` +
              `same tokens (widest step ${got.maxWidth} sessions)`);
          }
        }
      }
    });
  }

  t.test('cuda nextBatch refuses bad batches before anything runs; released sessions start over', async (t) => {
    const model = await addon.loadModel(modelDir, { device: 'cuda', quant: 'nf4' });
    t.teardown(() => model.dispose());
    const a = model.createSession(16, 1), b = model.createSession(4, 2);
    const ids = Int32Array.of(1, 2, 3), h = new Int32Array(0);
    await t.rejects(model.nextBatch([a], [Int32Array.of(1 << 20)], [GREEDY], [h]), { code: 'ERANGE' });
    await t.rejects(model.nextBatch([a, b], [ids, Int32Array.of(1, 2, 3, 4, 5)], [GREEDY, GREEDY], [h, h]), { code: 'EFULL' });
    t.equal(a.length, 0, 'a failed step appends nothing');
    // a pooled cache is larger than asked: the session's own maxLength still bounds it
    await b.next(Int32Array.of(1, 2, 3, 4), GREEDY, h);
    await t.rejects(b.next(Int32Array.of(5), GREEDY, h), { code: 'EFULL' });
    const first = await a.next(ids, GREEDY, h);
    t.equal((a as NativeSession & { _release: () => boolean })._release(), true);
    t.equal(a.length, 0, '_release empties the session');
    t.equal(await a.next(ids, GREEDY, h), first, 'a released session runs again from a pooled cache');
  });
}
