// AdamW and gradient clipping as torch computes them (torch.optim.AdamW, foreach=False;
// torch.nn.utils.clip_grad_norm_), checked step by step against a float64 transcription of
// torch's formulas, with weight decay, non-default betas/eps and clipping on.
import t from 'tap';
import { type NativeModel, type NativeStepOptions } from '../../lib/native.ts';
import { B, T, fixtureTrainer, ids, labels, loadTiny } from './util-train/train.ts';

let model: NativeModel;
t.before(async () => { model = await loadTiny(); });
t.teardown(() => model?.dispose());

/** torch: p *= 1 − lr·wd; m = lerp(m, g, 1 − β1); v = β2 v + (1 − β2) g²; p −= lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps) */
function adamwRef(p: Float64Array, g: Float64Array, m: Float64Array, v: Float64Array, o: NativeStepOptions, step: number) {
  const bc1 = 1 - o.beta1 ** step, bc2 = 1 - o.beta2 ** step;
  for (let i = 0; i < p.length; i++) {
    p[i] *= 1 - o.lr * o.weightDecay;
    m[i] += (1 - o.beta1) * (g[i] - m[i]);
    v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
    p[i] -= (o.lr / bc1) * m[i] / (Math.sqrt(v[i]) / Math.sqrt(bc2) + o.eps);
  }
}

for (const maxGradNorm of [0.05, 0, 1e9]) {
  t.test(`three steps, weight decay 0.1, betas (0.8, 0.99), eps 1e-6, maxGradNorm ${maxGradNorm}`, async (t) => {
    const tr = fixtureTrainer(model);
    t.teardown(() => tr.dispose());
    const names = Object.keys(tr.adapter());
    const p: Record<string, Float64Array> = {}, m: Record<string, Float64Array> = {}, v: Record<string, Float64Array> = {};
    for (const [k, a] of Object.entries(tr.adapter())) {
      p[k] = Float64Array.from(a); m[k] = new Float64Array(a.length); v[k] = new Float64Array(a.length);
    }
    for (let step = 1; step <= 3; step++) {
      const { tokens } = await tr.accumulate(ids, labels, B, T);
      const o: NativeStepOptions = { lr: 3e-3, beta1: 0.8, beta2: 0.99, eps: 1e-6, weightDecay: 0.1, maxGradNorm, gradScale: 1 / tokens };
      const raw = tr.gradients();
      const g: Record<string, Float64Array> = {};
      let sq = 0;
      for (const k of names) {
        g[k] = Float64Array.from(raw[k], (x) => x * o.gradScale);
        for (const x of g[k]) sq += x * x;
      }
      const norm = Math.sqrt(sq);
      const coef = maxGradNorm > 0 ? Math.min(1, maxGradNorm / (norm + 1e-6)) : 1;
      if (maxGradNorm === 0.05) t.ok(coef < 1, `clipping is active (norm ${norm.toFixed(3)})`);
      for (const k of names) {
        for (let i = 0; i < g[k].length; i++) g[k][i] *= coef;
        adamwRef(p[k], g[k], m[k], v[k], o, step);
      }
      const { gradNorm } = await tr.step(o);
      t.ok(Math.abs(gradNorm - norm) <= 1e-6 * norm, `step ${step}: returned norm ${gradNorm} = ${norm} (before clipping)`);
      let worst = 0, worstM = 0;
      const got = tr.adapter(), st = tr.getState();
      for (const k of names) {
        for (let i = 0; i < p[k].length; i++) {
          worst = Math.max(worst, Math.abs(got[k][i] - p[k][i]));
          worstM = Math.max(worstM, Math.abs(st.tensors[`${k}.exp_avg`][i] - m[k][i]) / (Math.abs(m[k][i]) + 1e-6));
        }
      }
      t.ok(worst <= 2e-6, `step ${step}: parameters within 2e-6 of torch's formula (${worst.toExponential(1)})`);
      t.ok(worstM <= 1e-4, `step ${step}: exp_avg within 1e-4 relative (${worstM.toExponential(1)})`);
      t.equal(st.step, step);
    }
  });
}

t.test('lr 0 with weight decay: nothing moves (the decay is lr x wd)', async (t) => {
  const tr = fixtureTrainer(model);
  t.teardown(() => tr.dispose());
  const before = tr.adapter();
  const { tokens } = await tr.accumulate(ids, labels, B, T);
  await tr.step({ lr: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.5, maxGradNorm: 1, gradScale: 1 / tokens });
  t.same(tr.adapter(), before);
  t.equal(tr.getState().step, 1, 'the step still counts (bias correction)');
});
