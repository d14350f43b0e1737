// The training engine's own ops, directly: masked cross-entropy forward and fused backward
// (against a float64 transcription and finite differences, in place and not).
import t from 'tap';
import { native } from '../../lib/native.ts';

interface CeHook {
  _crossEntropy(logits: Float32Array, target: Int32Array, N: number, V: number, scale: number, inPlace: boolean):
    { lossSum: number; dlogits: Float32Array };
}
const hook = native() as unknown as CeHook;

const N = 5, V = 37;
const logits = Float32Array.from({ length: N * V }, (_, i) => 4 * Math.sin(i * 0.731) + (i % V === 3 ? 8 : 0));
const target = Int32Array.of(3, -100, 0, 36, 17);

function refLoss(l: ArrayLike<number>): number {
  let s = 0;
  for (let n = 0; n < N; n++) {
    if (target[n] === -100) continue;
    let m = -Infinity;
    for (let v = 0; v < V; v++) m = Math.max(m, l[n * V + v]);
    let z = 0;
    for (let v = 0; v < V; v++) z += Math.exp(l[n * V + v] - m);
    s += m + Math.log(z) - l[n * V + target[n]];
  }
  return s;
}

t.test('forward: Σ over unmasked rows of logsumexp − logit[target]', async (t) => {
  const { lossSum } = hook._crossEntropy(logits, target, N, V, 1, false);
  t.ok(Math.abs(lossSum - refLoss(logits)) <= 1e-6 * refLoss(logits), `${lossSum} vs ${refLoss(logits)}`);
});

t.test('fused backward: scale · (softmax − onehot), 0 on masked rows, in place or not', async (t) => {
  const scale = 0.25;
  const a = hook._crossEntropy(logits, target, N, V, scale, false);
  const b = hook._crossEntropy(logits, target, N, V, scale, true);
  t.same(Array.from(a.dlogits), Array.from(b.dlogits), 'in place = out of place');
  t.ok(a.dlogits.subarray(V, 2 * V).every((x) => x === 0), 'masked row has no gradient');
  let worst = 0;
  for (let n = 0; n < N; n++) {
    if (target[n] === -100) continue;
    let rowSum = 0;
    for (let v = 0; v < V; v++) rowSum += a.dlogits[n * V + v];
    t.ok(Math.abs(rowSum) < 1e-6, `row ${n}: gradient sums to 0`);
  }
  // finite differences of the forward on every coordinate of two rows
  const h = 1e-2;
  for (const n of [0, 3])
    for (let v = 0; v < V; v++) {
      const p = Float64Array.from(logits), m = Float64Array.from(logits);
      p[n * V + v] += h; m[n * V + v] -= h;
      const fd = scale * (refLoss(p) - refLoss(m)) / (2 * h);
      worst = Math.max(worst, Math.abs(fd - a.dlogits[n * V + v]));
    }
  t.ok(worst < 1e-5, `matches finite differences (max |err| ${worst.toExponential(1)})`);
});

t.test('large logits do not overflow', async (t) => {
  const big = Float32Array.from({ length: 2 * 4 }, (_, i) => 1e4 + i);
  const r = hook._crossEntropy(big, Int32Array.of(0, 3), 2, 4, 1, false);
  t.ok(Number.isFinite(r.lossSum) && r.dlogits.every(Number.isFinite));
});
