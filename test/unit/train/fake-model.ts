// A stand-in for the native model that keeps the NativeModel/NativeTrainer contract: a "bigram"
// language model whose only trainable path is layer 0's q_proj LoRA pair (logits = E · s·B·A·drop(E[prev])),
// with every other LoRA tensor present under its PEFT name. Exact gradients, torch-style AdamW,
// clipping, dropout from a saved RNG: enough to test the training loop (learning, accumulation,
// resume bit for bit, checkpoints) without the addon.
import type { NativeModel, NativeTrainer, NativeTrainerOptions, NativeTrainerState, NativeStepOptions, NativeLoraSpec, NativeModelConfig } from '../../../lib/native.ts';
import { projectionShape, loraName, type ModelDims } from '../../../lib/train/adapter.ts';
import { Rng } from '../../../lib/train/rng.ts';

export interface FakeCalls { accumulate: number; step: number; evaluate: number; stepOptions: NativeStepOptions[]; batches: { batch: number; seqLen: number }[] }

export function fakeModel(dims: ModelDims, vocab: number, calls?: FakeCalls): NativeModel {
  const C = dims.hiddenSize;
  const embRng = new Rng(7);
  const E = new Float32Array(vocab * C).map(() => (embRng.next() * 2 - 1) * 0.5);
  let lora: { spec: NativeLoraSpec; tensors: Record<string, Float32Array> } | undefined;
  const q = (which: 'A' | 'B') => loraName(0, 'q_proj', which);

  function forward(tensors: Record<string, Float32Array>, scale: number, r: number, prev: number, mask?: Float32Array) {
    const A = tensors[q('A')], B = tensors[q('B')];
    const x = new Float32Array(C);
    for (let c = 0; c < C; c++) x[c] = E[prev * C + c] * (mask ? mask[c] : 1);
    const u = new Float32Array(r);
    for (let k = 0; k < r; k++) { let s = 0; for (let c = 0; c < C; c++) s += A[k * C + c] * x[c]; u[k] = s; }
    const z = new Float32Array(C);
    for (let c = 0; c < C; c++) { let s = 0; for (let k = 0; k < r; k++) s += B[c * r + k] * u[k]; z[c] = s * scale; }
    const logits = new Float32Array(vocab);
    for (let v = 0; v < vocab; v++) { let s = 0; for (let c = 0; c < C; c++) s += E[v * C + c] * z[c]; logits[v] = s; }
    return { x, u, z, logits };
  }

  const config = { vocabSize: vocab, hiddenSize: C, numLayers: dims.numLayers } as NativeModelConfig;
  const model: Partial<NativeModel> = {
    config, device: 'cpu', quant: 'none',
    async logits(ids) {
      const out = new Float32Array(ids.length * vocab);
      if (!lora) return out;
      const s = lora.spec.alpha / lora.spec.r;
      for (let i = 0; i < ids.length; i++) out.set(forward(lora.tensors, s, lora.spec.r, ids[i]).logits, i * vocab);
      return out;
    },
    createSession() { throw new Error('not in the fake'); },
    setLora(spec, tensors) { lora = { spec, tensors }; },
    getLora() { return lora ? { ...lora.tensors } : {}; },
    clearLora() { lora = undefined; },
    dispose() {},
    createTrainer(o: NativeTrainerOptions): NativeTrainer {
      const r = o.lora.r, scale = o.lora.alpha / r, p = o.lora.dropout;
      const params: Record<string, Float32Array> = {};
      const init = new Rng(o.seed);
      for (let l = 0; l < dims.numLayers; l++) for (const t of o.lora.targets) {
        const [i, out] = projectionShape(dims, t);
        const bound = 1 / Math.sqrt(i); // kaiming_uniform(a=sqrt(5))
        params[loraName(l, t, 'A')] = o.init?.[loraName(l, t, 'A')]?.slice() ?? new Float32Array(r * i).map(() => (init.next() * 2 - 1) * bound);
        params[loraName(l, t, 'B')] = o.init?.[loraName(l, t, 'B')]?.slice() ?? new Float32Array(out * r);
      }
      const grads = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, new Float32Array(v.length)]));
      const m = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, new Float32Array(v.length)]));
      const v2 = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, new Float32Array(v.length)]));
      let stepN = 0;
      const rng = new Rng(o.seed ^ 0x5bd1e995);
      const hasQ = q('A') in params;

      function run(ids: Int32Array, labels: Int32Array, batch: number, T: number, train: boolean) {
        if (ids.length !== batch * T || labels.length !== batch * T) throw new Error('shape');
        let lossSum = 0, tokens = 0;
        for (let b = 0; b < batch; b++) for (let t = 0; t + 1 < T; t++) {
          const target = labels[b * T + t + 1];
          if (target === -100) continue;
          const prev = ids[b * T + t];
          if (prev < 0 || prev >= vocab || target >= vocab) throw new Error('id out of range');
          let mask: Float32Array | undefined;
          if (train && p > 0) mask = new Float32Array(C).map(() => (rng.next() < p ? 0 : 1 / (1 - p)));
          const f = hasQ ? forward(params, scale, r, prev, mask) : { logits: new Float32Array(vocab), x: new Float32Array(C), u: new Float32Array(r) };
          let max = -Infinity; for (const x of f.logits) max = Math.max(max, x);
          let se = 0; for (const x of f.logits) se += Math.exp(x - max);
          const lse = max + Math.log(se);
          lossSum += lse - f.logits[target];
          tokens++;
          if (!train || !hasQ) continue;
          const dl = new Float32Array(vocab);
          for (let v = 0; v < vocab; v++) dl[v] = Math.exp(f.logits[v] - lse) - (v === target ? 1 : 0);
          const dz = new Float32Array(C);
          for (let v = 0; v < vocab; v++) { const g = dl[v]; for (let c = 0; c < C; c++) dz[c] += E[v * C + c] * g; }
          const A = params[q('A')], B = params[q('B')], gA = grads[q('A')], gB = grads[q('B')];
          const du = new Float32Array(r);
          for (let c = 0; c < C; c++) for (let k = 0; k < r; k++) { gB[c * r + k] += scale * dz[c] * f.u[k]; du[k] += scale * B[c * r + k] * dz[c]; }
          for (let k = 0; k < r; k++) for (let c = 0; c < C; c++) gA[k * C + c] += du[k] * f.x[c];
          void A;
        }
        return { lossSum, tokens };
      }

      return {
        async accumulate(ids, labels, batch, seqLen) { if (calls) { calls.accumulate++; calls.batches.push({ batch, seqLen }); } return run(ids, labels, batch, seqLen, true); },
        async evaluate(ids, labels, batch, seqLen) { if (calls) calls.evaluate++; return run(ids, labels, batch, seqLen, false); },
        async step(s) {
          if (calls) { calls.step++; calls.stepOptions.push(s); }
          let norm2 = 0;
          for (const g of Object.values(grads)) for (let i = 0; i < g.length; i++) { g[i] *= s.gradScale; norm2 += g[i] * g[i]; }
          const norm = Math.sqrt(norm2);
          const clip = s.maxGradNorm > 0 && norm > s.maxGradNorm ? s.maxGradNorm / (norm + 1e-6) : 1;
          stepN++;
          const bc1 = 1 - s.beta1 ** stepN, bc2 = 1 - s.beta2 ** stepN;
          for (const [k, w] of Object.entries(params)) {
            const g = grads[k], mm = m[k], vv = v2[k];
            for (let i = 0; i < w.length; i++) {
              const gi = g[i] * clip;
              w[i] -= s.lr * s.weightDecay * w[i];
              mm[i] = s.beta1 * mm[i] + (1 - s.beta1) * gi;
              vv[i] = s.beta2 * vv[i] + (1 - s.beta2) * gi * gi;
              w[i] -= s.lr * (mm[i] / bc1) / (Math.sqrt(vv[i] / bc2) + s.eps);
            }
            g.fill(0);
          }
          return { gradNorm: norm };
        },
        gradients() { return Object.fromEntries(Object.entries(grads).map(([k, v]) => [k, v.slice()])); },
        zeroGrad() { for (const g of Object.values(grads)) g.fill(0); },
        getState(): NativeTrainerState {
          const tensors: Record<string, Float32Array> = {};
          for (const k of Object.keys(params)) { tensors[k] = params[k].slice(); tensors[`${k}.exp_avg`] = m[k].slice(); tensors[`${k}.exp_avg_sq`] = v2[k].slice(); }
          const st = rng.getState();
          return { step: stepN, rng: Uint32Array.from([...st, 0, 0, 0, 0]), tensors };
        },
        setState(st) {
          stepN = st.step;
          rng.setState(st.rng);
          for (const k of Object.keys(params)) {
            for (const [suffix, dst] of [['', params], ['.exp_avg', m], ['.exp_avg_sq', v2]] as const) {
              const src = st.tensors[k + suffix];
              if (!src || src.length !== dst[k].length) throw new Error(`state lacks ${k + suffix}`);
              dst[k].set(src);
            }
          }
        },
        adapter() { return Object.fromEntries(Object.entries(params).map(([k, v]) => [k, v.slice()])); },
        dispose() {},
      };
    },
  };
  return model as NativeModel;
}
