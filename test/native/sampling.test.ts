// The sampler (native/cpu/sampling.cpp) on crafted logits, through the internal _sample hook.
import t from 'tap';
import { native, type NativeSamplingOptions } from '../../lib/native.ts';

const addon = native();
const none = new Int32Array(0);
const opts = (o: Partial<NativeSamplingOptions>): NativeSamplingOptions =>
  ({ temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1, ...o });
const counts = (draws: Int32Array, V: number) => {
  const c = new Array(V).fill(0);
  for (const d of draws) c[d]++;
  return c;
};
const logits = Float32Array.from([1.0, 3.0, 2.5, -1.0, 2.9, 0.0]); // order: 1, 4, 2, 0, 5, 3

t.test('temperature 0 is argmax (first of ties)', async (t) => {
  t.same(Array.from(addon._sample(logits, opts({ temperature: 0 }), none, 1, 5)), [1, 1, 1, 1, 1]);
  t.equal(addon._sample(Float32Array.from([0, 7, 7]), opts({ temperature: 0 }), none, 1, 1)[0], 1);
});

t.test('same seed, same draws; another seed, other draws', async (t) => {
  const a = addon._sample(logits, opts({}), none, 7, 200), b = addon._sample(logits, opts({}), none, 7, 200);
  const c = addon._sample(logits, opts({}), none, 8, 200);
  t.same(Array.from(a), Array.from(b));
  t.notSame(Array.from(a), Array.from(c));
});

t.test('draws follow softmax(logits / temperature)', async (t) => {
  const n = 40000;
  for (const temp of [1, 0.5]) {
    const c = counts(addon._sample(logits, opts({ temperature: temp }), none, 3, n), 6);
    const e = Array.from(logits, (l) => Math.exp(l / temp));
    const z = e.reduce((a, b) => a + b);
    for (let i = 0; i < 6; i++) {
      const p = e[i] / z, sd = Math.sqrt(p * (1 - p) / n);
      t.ok(Math.abs(c[i] / n - p) <= 5 * sd + 1e-4, `T=${temp} token ${i}: ${c[i] / n} vs ${p.toFixed(4)}`);
    }
  }
});

t.test('top-k keeps the k most likely tokens, renormalized', async (t) => {
  const n = 20000;
  const c = counts(addon._sample(logits, opts({ topK: 2 }), none, 4, n), 6);
  t.same([c[0], c[2], c[3], c[5]], [0, 0, 0, 0], 'only tokens 1 and 4');
  const p1 = 1 / (1 + Math.exp(2.9 - 3.0));
  t.ok(Math.abs(c[1] / n - p1) < 0.02, `token 1: ${c[1] / n} vs ${p1.toFixed(3)}`);
  t.same(Array.from(addon._sample(logits, opts({ topK: 1 }), none, 5, 50)), new Array(50).fill(1), 'top-k 1 is greedy');
  const ties = counts(addon._sample(Float32Array.from([1, 2, 2, 0]), opts({ topK: 1 }), none, 5, 2000), 4);
  t.ok(ties[1] > 0 && ties[2] > 0 && ties[0] === 0 && ties[3] === 0, 'ties at the k-th value are kept (as HF)');
});

t.test('top-p keeps the smallest set whose mass reaches top_p', async (t) => {
  // probabilities ~ [0.5, 0.3, 0.15, 0.05]
  const l = Float32Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.15), Math.log(0.05)]);
  const n = 20000;
  let c = counts(addon._sample(l, opts({ topP: 0.7 }), none, 6, n), 4);
  t.same([c[2], c[3]], [0, 0], 'top_p 0.7: {0, 1} (0.5 alone is not enough)');
  t.ok(Math.abs(c[0] / n - 0.5 / 0.8) < 0.02, `renormalized: ${c[0] / n} vs 0.625`);
  c = counts(addon._sample(l, opts({ topP: 0.5 }), none, 6, 2000), 4);
  t.equal(c[0], 2000, 'top_p 0.5: the top token alone reaches it');
  c = counts(addon._sample(l, opts({ topP: 0.01 }), none, 6, 500), 4);
  t.equal(c[0], 500, 'always at least one token');
  c = counts(addon._sample(l, opts({ topP: 0.9 }), none, 6, n), 4);
  t.ok(c[2] > 0 && c[3] === 0, 'top_p 0.9: {0, 1, 2}');
});

t.test('repetition penalty divides positive and multiplies negative logits of seen ids, once each', async (t) => {
  const g = opts({ temperature: 0, repetitionPenalty: 2 });
  // token 1 (3.0) penalized to 1.5: token 4 (2.9) wins
  t.equal(addon._sample(logits, g, Int32Array.of(1), 1, 1)[0], 4);
  // seen several times: still divided once (HF gathers unique ids): 3.0/2 = 1.5 < 2.5 (token 2)
  t.equal(addon._sample(logits, g, Int32Array.of(1, 1, 1, 4), 1, 1)[0], 2);
  // negative logits get multiplied: -1 * 2 = -2, so token 3 stays below token 5 (0.0)
  const neg = Float32Array.from([-1, -0.6, -3]);
  t.equal(addon._sample(neg, g, Int32Array.of(1), 1, 1)[0], 0, '-0.6 → -1.2 < -1');
  // out-of-range history ids are ignored
  t.equal(addon._sample(logits, g, Int32Array.of(-5, 99), 1, 1)[0], 1);
});

t.test('bad sampling options are refused', async (t) => {
  t.throws(() => addon._sample(logits, opts({ topP: 1.5 }), none, 1, 1), { code: 'EINVAL' });
  t.throws(() => addon._sample(logits, opts({ repetitionPenalty: 0 }), none, 1, 1), { code: 'EINVAL' });
  t.throws(() => addon._sample(logits, opts({ topK: -1 }), none, 1, 1), { code: 'EINVAL' });
  t.throws(() => addon._sample(logits, { temperature: NaN, topK: 0, topP: 1, repetitionPenalty: 1 }, none, 1, 1), { code: 'EINVAL' });
});
