// Long native calls run off the JS thread (node-addon-api AsyncWorkers): while one is in flight
// the event loop keeps turning. A call that blocked would let the loop turn at most once before
// its promise settled; here it turns hundreds to thousands of times (≈ 2,000 for a 50 ms call).
import t from 'tap';
import { native, type NativeModel } from '../../lib/native.ts';

const tiny = new URL('../../assets/tiny', import.meta.url).pathname;
const model: NativeModel = await native().loadModel(tiny, { device: 'cpu', quant: 'none', threads: 1 });
t.teardown(() => model.dispose());
const ids = new Int32Array(500).map((_, i) => ((i * 7) % 300) + 5);

/** Event-loop turns taken while `p` is pending. */
async function turnsWhile(p: Promise<unknown>): Promise<number> {
  let settled = false;
  p.then(() => { settled = true; }, () => { settled = true; });
  let turns = 0;
  while (!settled) { await new Promise((r) => setImmediate(r)); turns++; }
  await p;
  return turns;
}

const MIN_TURNS = 5;

t.test('logits', async (t) => {
  t.ok(await turnsWhile(model.logits(ids)) >= MIN_TURNS);
});

t.test('session.next (a 500-token prefill)', async (t) => {
  const s = model.createSession(512, 1);
  const sampling = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };
  t.ok(await turnsWhile(s.next(ids, sampling, ids)) >= MIN_TURNS);
});

t.test('trainer.accumulate and evaluate', async (t) => {
  const trainer = model.createTrainer({ lora: { r: 8, alpha: 16, dropout: 0, targets: ['q_proj', 'v_proj'] }, seed: 1, recompute: false });
  t.teardown(() => trainer.dispose());
  const labels = Int32Array.from(ids, (v, i) => (i < 250 ? -100 : v));
  t.ok(await turnsWhile(trainer.accumulate(ids, labels, 1, ids.length)) >= MIN_TURNS, 'accumulate');
  t.ok(await turnsWhile(trainer.evaluate(ids, labels, 1, ids.length)) >= MIN_TURNS, 'evaluate');
});
