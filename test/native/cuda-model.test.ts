// device 'cuda' through the addon: the tiny reference checkpoint on the GPU against the same
// checkpoint on the CPU (logits, sessions, trainer, adapters). Runs only where the addon was
// built with CUDA and a GPU is present (the GPU machine); elsewhere it checks that asking for
// 'cuda' is a clear ECUDA error. The full JS round (3B, finetune, DONE stop) is
// bench/gpu/train-3b.mjs, run by bench/gpu/check.sh.
// Tolerances: bf16 storage with fp32 accumulation — model logits 1e-2 of the largest, LoRA
// gradients 3e-2 (two bf16 GEMMs deep).
import path from 'node:path';
import t from 'tap';
import { native } from '../../lib/native.ts';

const addon = native();
const dir = path.resolve(import.meta.dirname, '../fixtures/ref/tiny-llama');
const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
const rel = (got: Float32Array, want: Float32Array) => {
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) { num = Math.max(num, Math.abs(got[i] - want[i])); den = Math.max(den, Math.abs(want[i])); }
  return got.length === want.length ? num / (den || 1) : Infinity;
};
const flat = (o: Record<string, Float32Array>) => {
  const keys = Object.keys(o).sort();
  const out = new Float32Array(keys.reduce((s, k) => s + o[k].length, 0));
  let at = 0;
  for (const k of keys) { out.set(o[k], at); at += o[k].length; }
  return out;
};

if (!addon.cudaAvailable()) {
  t.test('device cuda without CUDA is a clear ECUDA error', async (t) => {
    await t.rejects(addon.loadModel(dir, { device: 'cuda', quant: 'nf4' }), { code: 'ECUDA', message: /device 'cpu'/ });
  });
} else {
  t.test('tiny model on the GPU vs the CPU', async (t) => {
    const mc = await addon.loadModel(dir, { device: 'cpu', quant: 'none' });
    const mg = await addon.loadModel(dir, { device: 'cuda', quant: 'none' });
    t.equal(mg.device, 'cuda');
    const V = mc.config.vocabSize;
    const ids = Int32Array.from({ length: 23 }, (_, i) => (i * 37 + 5) % V);
    t.ok(rel(await mg.logits(ids), await mc.logits(ids)) <= 1e-2, 'logits');
    t.ok(rel(await mg._logitsCached(ids, 5), await mg.logits(ids)) <= 1e-2, 'KV-cached logits');
    const s = mg.createSession(32, 0);
    const tok = await s.next(ids.subarray(0, 9), { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 }, ids.subarray(0, 9));
    t.ok(tok >= 0 && tok < V && s.length === 9, 'session.next on the GPU');

    const opts = { lora: { r: 4, alpha: 8, dropout: 0, targets: [...TARGETS] }, seed: 3, recompute: true };
    // 51 rows take the small-batch routes; 85 rows (> 64) the dense weights real batches take
    const T = 17;
    const batch = (B: number) => {
      const bi = Int32Array.from({ length: B * T }, (_, i) => (i * 13 + 7) % V);
      return { bi, bl: Int32Array.from(bi, (v, i) => (i % T) < 8 ? -100 : v) };
    };
    for (const B of [5, 3]) {
      const tcB = mc.createTrainer(opts), tgB = mg.createTrainer(opts);
      const { bi, bl } = batch(B);
      const rc = await tcB.accumulate(bi, bl, B, T), rg = await tgB.accumulate(bi, bl, B, T);
      t.equal(rg.tokens, rc.tokens, `${B * T} rows: tokens`);
      t.ok(Math.abs(rg.lossSum - rc.lossSum) <= 1e-2 * Math.abs(rc.lossSum), `${B * T} rows: masked loss`);
      t.ok(rel(flat(tgB.gradients()), flat(tcB.gradients())) <= 3e-2, `${B * T} rows: LoRA gradients`);
      tcB.dispose(); tgB.dispose();
    }
    const tg = mg.createTrainer(opts);
    const B = 3;
    const { bi, bl } = batch(B);
    const rg = await tg.accumulate(bi, bl, B, T);
    const st = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, maxGradNorm: 1, gradScale: 1 / rg.tokens };
    await tg.step(st);
    const after = flat(tg.adapter());
    t.same(flat(mg.getLora()), after, 'getLora reads the GPU-trained adapter');
    const state = tg.getState();
    await tg.accumulate(bi, bl, B, T);
    await tg.step(st);
    tg.setState(state);
    t.same(flat(tg.adapter()), after, 'setState puts the saved adapter back on the GPU');
    tg.dispose(); mc.dispose(); mg.dispose();
  });
}
