// The training engine against transformers + PEFT (the fixture): masked LoRA loss, every LoRA
// gradient, one AdamW step; then the engine's own invariants: accumulation over micro-batches,
// gradient checkpointing, exact resume, finite differences of the whole chain, padding.
import t from 'tap';
import { type NativeModel, type NativeTrainer } from '../../lib/native.ts';
import { expectedJson } from './util/fixtures.ts';
import {
  B, T, exp, expectedKey, fixtureAdapter, fixtureTrainer, ids, labels, loadTiny, maxAbsErr, normRelErr, scaled,
  stepOptions,
} from './util-train/train.ts';

let model: NativeModel;
t.before(async () => { model = await loadTiny(); });
t.teardown(() => model?.dispose());

const REF_LOSS: number = expectedJson.lora_loss;

t.test('the trainer has exactly the members lib/native.ts declares', async (t) => {
  const members: Record<keyof NativeTrainer, string> = {
    accumulate: 'function', evaluate: 'function', step: 'function', gradients: 'function', zeroGrad: 'function',
    getState: 'function', setState: 'function', adapter: 'function', dispose: 'function',
  };
  const tr = fixtureTrainer(model);
  t.teardown(() => tr.dispose());
  for (const [k, type] of Object.entries(members)) t.equal(typeof (tr as any)[k], type, k);
  const p = tr.evaluate(ids, labels, B, T);
  t.type(p, Promise);
  await p;
});

t.test('masked LoRA loss and every LoRA gradient match PEFT', async (t) => {
  const tr = fixtureTrainer(model);
  t.teardown(() => tr.dispose());
  const { lossSum, tokens } = await tr.accumulate(ids, labels, B, T);
  t.equal(tokens, 11, 'unmasked targets after the one-token shift (6 + 5)');
  const loss = lossSum / tokens;
  const lossRel = Math.abs(loss - REF_LOSS) / REF_LOSS;
  t.comment(`loss ${loss} vs ${REF_LOSS}: rel err ${lossRel.toExponential(2)}`);
  t.ok(lossRel <= 1e-5, 'loss within 1e-5 relative');

  const grads = tr.gradients();
  t.equal(Object.keys(grads).length, 28, '2 layers x 7 projections x (A, B)');
  let worstRel = 0, worstAbs = 0;
  for (const [name, g] of Object.entries(grads)) {
    const want = exp[expectedKey('grad', name)].data as Float32Array;
    const got = scaled(g, 1 / tokens);  // gradients() hold d(lossSum); PEFT's are d(mean loss)
    const rel = normRelErr(got, want);
    worstRel = Math.max(worstRel, rel);
    worstAbs = Math.max(worstAbs, maxAbsErr(got, want));
    t.ok(rel <= 1e-4, `${name}: ${rel.toExponential(2)}`);
  }
  t.comment(`gradients: worst ||a-b||/||b|| ${worstRel.toExponential(2)}, worst max |a-b| ${worstAbs.toExponential(2)}`);
});

t.test('one AdamW step (lr 1e-2, wd 0) matches torch', async (t) => {
  const tr = fixtureTrainer(model);
  t.teardown(() => tr.dispose());
  const { tokens } = await tr.accumulate(ids, labels, B, T);
  const { gradNorm } = await tr.step(stepOptions(1 / tokens));
  t.ok(gradNorm > 0 && Number.isFinite(gradNorm), `grad norm ${gradNorm}`);
  let worst = 0;
  for (const [name, p] of Object.entries(tr.adapter())) {
    const want = exp[expectedKey('after_adamw', name)].data as Float32Array;
    worst = Math.max(worst, maxAbsErr(p, want));
  }
  t.comment(`after AdamW: max |a-b| ${worst.toExponential(2)}`);
  t.ok(worst <= 1e-5, 'within 1e-5');
  for (const g of Object.values(tr.gradients())) t.equal(maxAbsErr(g, new Float32Array(g.length)), 0, 'step zeroes gradients');
  t.equal(tr.getState().step, 1);
});

t.test('two micro-batches of one row == one batch of two (gradient accumulation)', async (t) => {
  const whole = fixtureTrainer(model);
  const w = await whole.accumulate(ids, labels, B, T);
  const gWhole = whole.gradients();
  await whole.step(stepOptions(1 / w.tokens));
  const aWhole = whole.adapter();
  whole.dispose();

  const parts = fixtureTrainer(model);
  t.teardown(() => parts.dispose());
  let lossSum = 0, tokens = 0;
  for (let b = 0; b < B; b++) {
    const r = await parts.accumulate(ids.slice(b * T, (b + 1) * T), labels.slice(b * T, (b + 1) * T), 1, T);
    lossSum += r.lossSum;
    tokens += r.tokens;
  }
  t.equal(tokens, w.tokens);
  t.ok(Math.abs(lossSum - w.lossSum) <= 1e-6 * Math.abs(w.lossSum), 'summed losses agree');
  const gParts = parts.gradients();
  let worst = 0;
  for (const k of Object.keys(gWhole)) worst = Math.max(worst, normRelErr(gParts[k], gWhole[k]));
  t.ok(worst <= 1e-6, `gradients agree: ${worst.toExponential(2)}`);
  await parts.step(stepOptions(1 / tokens));
  const aParts = parts.adapter();
  let worstA = 0;
  for (const k of Object.keys(aWhole)) worstA = Math.max(worstA, maxAbsErr(aParts[k], aWhole[k]));
  t.ok(worstA <= 1e-6, `adapters after the step agree: ${worstA.toExponential(2)}`);
});

t.test('recompute (gradient checkpointing) gives identical gradients, also with dropout', async (t) => {
  for (const dropout of [0, 0.1]) {
    const grads: Record<string, Float32Array>[] = [];
    const losses: number[] = [];
    for (const recompute of [false, true]) {
      const tr = fixtureTrainer(model, { recompute, dropout, seed: 7 });
      losses.push((await tr.accumulate(ids, labels, B, T)).lossSum);
      grads.push(tr.gradients());
      tr.dispose();
    }
    t.equal(losses[0], losses[1], `dropout ${dropout}: same loss`);
    let same = true;
    for (const k of Object.keys(grads[0])) same &&= maxAbsErr(grads[0][k], grads[1][k]) === 0;
    t.ok(same, `dropout ${dropout}: bit-identical gradients`);
  }
});

t.test('dropout: seeded, active in accumulate, off in evaluate', async (t) => {
  const run = async (seed: number) => {
    const tr = fixtureTrainer(model, { dropout: 0.3, seed });
    const r = await tr.accumulate(ids, labels, B, T);
    const e = await tr.evaluate(ids, labels, B, T);
    tr.dispose();
    return [r.lossSum / r.tokens, e.lossSum / e.tokens];
  };
  const [a1, e1] = await run(3);
  const [a2] = await run(3);
  const [a3] = await run(4);
  t.equal(a1, a2, 'same seed, same loss');
  t.not(a1, a3, 'another seed, another dropout mask');
  t.ok(Math.abs(e1 - REF_LOSS) / REF_LOSS <= 1e-5, 'evaluate has no dropout (= the reference loss)');
  t.not(a1, e1, 'accumulate applies dropout');
});

t.test('evaluate = the loss of accumulate, and leaves the gradients alone', async (t) => {
  const tr = fixtureTrainer(model);
  t.teardown(() => tr.dispose());
  const e = await tr.evaluate(ids, labels, B, T);
  for (const g of Object.values(tr.gradients())) t.equal(maxAbsErr(g, new Float32Array(g.length)), 0);
  const a = await tr.accumulate(ids, labels, B, T);
  t.equal(e.tokens, a.tokens);
  t.ok(Math.abs(e.lossSum - a.lossSum) <= 1e-6 * a.lossSum, 'same loss');
});

t.test('getState / setState resume bit for bit (AdamW moments, step, dropout RNG)', async (t) => {
  const tr = fixtureTrainer(model, { dropout: 0.1, seed: 11 });
  t.teardown(() => tr.dispose());
  const train = async (n: number) => {
    const losses: number[] = [];
    for (let i = 0; i < n; i++) {
      const r = await tr.accumulate(ids, labels, B, T);
      losses.push(r.lossSum);
      await tr.step(stepOptions(1 / r.tokens, { weightDecay: 0.01, maxGradNorm: 1 }));
    }
    return losses;
  };
  await train(1);
  const saved = tr.getState();
  t.equal(saved.step, 1);
  t.equal(saved.rng.length, 8);
  t.equal(Object.keys(saved.tensors).length, 28 * 3, 'A/B + exp_avg + exp_avg_sq');
  const first = await train(2);
  const after = tr.adapter();
  tr.setState(saved);
  t.same(tr.getState().step, 1);
  const again = await train(2);
  t.same(again, first, 'same losses after resuming');
  let same = true;
  for (const [k, v] of Object.entries(tr.adapter())) same &&= maxAbsErr(v, after[k]) === 0;
  t.ok(same, 'bit-identical adapter after resuming');
  t.ok(first[1] < first[0], `the loss falls (${first[0].toFixed(4)} -> ${first[1].toFixed(4)})`);

  // a state from another layout is refused and changes nothing
  const bad = { ...saved, tensors: { ...saved.tensors } };
  delete bad.tensors[Object.keys(bad.tensors)[0]];
  t.throws(() => tr.setState(bad), { code: 'EINVAL' });
  const wrong = { ...saved, tensors: { ...saved.tensors, [Object.keys(saved.tensors)[0]]: new Float32Array(3) } };
  t.throws(() => tr.setState(wrong), { code: 'ESHAPE' });
  t.equal(tr.getState().step, 3, 'unchanged by the refused states');
});

t.test('finite differences of the whole model agree with the LoRA gradient', async (t) => {
  const tr = fixtureTrainer(model);
  t.teardown(() => tr.dispose());
  const { tokens } = await tr.accumulate(ids, labels, B, T);
  const grads = tr.gradients();
  const base = tr.getState();
  // a few coordinates with large gradients, in A and B of both layers
  const picks: [string, number][] = [];
  for (const name of ['layers.0.self_attn.q_proj.lora_A', 'layers.0.mlp.down_proj.lora_B',
    'layers.1.self_attn.v_proj.lora_B', 'layers.1.mlp.gate_proj.lora_A']) {
    const key = Object.keys(grads).find((k) => k.includes(name))!;
    const g = grads[key];
    let best = 0;
    for (let i = 1; i < g.length; i++) if (Math.abs(g[i]) > Math.abs(g[best])) best = i;
    picks.push([key, best]);
  }
  const h = 1e-2;
  for (const [key, i] of picks) {
    const lossAt = async (delta: number) => {
      const s = { ...base, tensors: { ...base.tensors, [key]: Float32Array.from(base.tensors[key]) } };
      s.tensors[key][i] += delta;
      tr.setState(s);
      return (await tr.evaluate(ids, labels, B, T)).lossSum;
    };
    // central difference with Richardson extrapolation: O(h⁴) truncation
    const d1 = ((await lossAt(h)) - (await lossAt(-h))) / (2 * h);
    const d2 = ((await lossAt(h / 2)) - (await lossAt(-h / 2))) / h;
    const fd = (4 * d2 - d1) / 3;
    const an = grads[key][i];
    const rel = Math.abs(fd - an) / Math.abs(an);
    t.ok(rel <= 2e-3, `${key}[${i}]: analytic ${an.toExponential(4)} vs numeric ${fd.toExponential(4)} (rel ${rel.toExponential(1)})`);
  }
  tr.setState(base);
  t.ok(tokens > 0);
});

t.test('the head in chunks of a few rows = all rows at once (a 128k vocabulary never holds all logits)', async (t) => {
  const results = [];
  for (const rows of [0, 1, 3]) {
    const tr = model.createTrainer({
      lora: { r: 4, alpha: 8, dropout: 0, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] },
      seed: 1, recompute: false, init: fixtureAdapter(), ...(rows ? { _headChunkRows: rows } : {}),
    } as Parameters<NativeModel['createTrainer']>[0]);
    results.push({ r: await tr.accumulate(ids, labels, B, T), g: tr.gradients(), e: await tr.evaluate(ids, labels, B, T) });
    tr.dispose();
  }
  for (const x of results.slice(1)) {
    t.ok(Math.abs(x.r.lossSum - results[0].r.lossSum) <= 1e-6 * results[0].r.lossSum, 'same loss');
    t.ok(Math.abs(x.e.lossSum - results[0].e.lossSum) <= 1e-6 * results[0].e.lossSum, 'same evaluate loss');
    let worst = 0;
    for (const k of Object.keys(x.g)) worst = Math.max(worst, normRelErr(x.g[k], results[0].g[k]));
    t.ok(worst <= 1e-6, `same gradients (${worst.toExponential(1)})`);
  }
});

t.test('right padding changes nothing for the real tokens', async (t) => {
  const tr = fixtureTrainer(model);
  t.teardown(() => tr.dispose());
  const row = ids.slice(0, T), lab = labels.slice(0, T);
  const a = await tr.accumulate(row, lab, 1, T);
  const g1 = tr.gradients();
  tr.zeroGrad();
  const P = T + 5;
  const pRow = new Int32Array(P).fill(4), pLab = new Int32Array(P).fill(-100);
  pRow.set(row); pLab.set(lab);
  const b = await tr.accumulate(pRow, pLab, 1, P);
  t.equal(b.tokens, a.tokens);
  t.ok(Math.abs(b.lossSum - a.lossSum) <= 1e-6 * a.lossSum, 'same loss');
  const g2 = tr.gradients();
  let worst = 0;
  for (const k of Object.keys(g1)) worst = Math.max(worst, normRelErr(g2[k], g1[k]));
  t.ok(worst <= 1e-6, `same gradients (${worst.toExponential(1)})`);
});

t.test('a fresh adapter: B = 0, A ~ U(-1/sqrt(K), 1/sqrt(K)), seeded; training moves the model', async (t) => {
  const make = (seed: number) => model.createTrainer({
    lora: { r: 8, alpha: 16, dropout: 0, targets: ['q_proj', 'down_proj'] }, seed, recompute: false,
  });
  const tr = make(5);
  const a = tr.adapter();
  t.same(Object.keys(a).sort(), [0, 1].flatMap((l) => [
    `base_model.model.model.layers.${l}.mlp.down_proj.lora_A.weight`, `base_model.model.model.layers.${l}.mlp.down_proj.lora_B.weight`,
    `base_model.model.model.layers.${l}.self_attn.q_proj.lora_A.weight`, `base_model.model.model.layers.${l}.self_attn.q_proj.lora_B.weight`,
  ]).sort());
  const qA = a['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'];
  const dA = a['base_model.model.model.layers.0.mlp.down_proj.lora_A.weight'];
  t.equal(qA.length, 8 * 64);
  t.equal(dA.length, 8 * 160);
  const bound = (K: number) => 1 / Math.sqrt(K);
  t.ok(qA.every((x) => Math.abs(x) <= bound(64)) && dA.every((x) => Math.abs(x) <= bound(160)), 'within the Kaiming bound');
  const mean = qA.reduce((s, x) => s + x, 0) / qA.length;
  const variance = qA.reduce((s, x) => s + x * x, 0) / qA.length;
  t.ok(Math.abs(mean) < 0.2 * bound(64), 'centred');
  t.ok(Math.abs(variance / (bound(64) ** 2 / 3) - 1) < 0.15, 'variance of a uniform distribution');
  t.ok(a['base_model.model.model.layers.1.mlp.down_proj.lora_B.weight'].every((x) => x === 0), 'B = 0');
  const before = await model.logits(ids.slice(0, T));
  const r = await tr.accumulate(ids, labels, B, T);
  await tr.step(stepOptions(1 / r.tokens));
  const after = await model.logits(ids.slice(0, T));
  t.ok(maxAbsErr(before, after) > 0, 'the model generates with the adapter being trained');
  t.same(model.getLora(), tr.adapter(), 'model.getLora() is the trained adapter');
  tr.dispose();
  const tr2 = make(5);
  t.same(tr2.adapter()['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'], qA, 'same seed, same init');
  tr2.dispose();
});

t.test('NF4 base: trains, and the loss falls', async (t) => {
  const q = await loadTiny('nf4');
  t.teardown(() => q.dispose());
  const tr = q.createTrainer({ lora: { r: 4, alpha: 8, dropout: 0, targets: ['q_proj', 'v_proj'] }, seed: 1, recompute: true,
    init: Object.fromEntries(Object.entries(fixtureAdapter()).filter(([k]) => /q_proj|v_proj/.test(k))) });
  const losses: number[] = [];
  for (let i = 0; i < 5; i++) {
    const r = await tr.accumulate(ids, labels, B, T);
    losses.push(r.lossSum / r.tokens);
    await tr.step(stepOptions(1 / r.tokens));
  }
  t.ok(losses.every(Number.isFinite));
  t.ok(losses[4] < losses[0] - 0.1, `loss ${losses[0].toFixed(3)} -> ${losses[4].toFixed(3)}`);
  tr.dispose();
});

t.test('clear errors for bad options and bad batches', async (t) => {
  const spec = (o: object) => ({ lora: { r: 4, alpha: 8, dropout: 0, targets: ['q_proj'], ...o }, seed: 1, recompute: false });
  t.throws(() => model.createTrainer(spec({ r: 33, targets: ['k_proj'] })), { code: 'EINVAL', message: /k_proj.*r <= 32/ });
  t.throws(() => model.createTrainer(spec({ targets: ['qproj'] })), { code: 'EINVAL', message: /unknown LoRA target "qproj"/ });
  t.throws(() => model.createTrainer(spec({ targets: [] })), { code: 'EINVAL' });
  t.throws(() => model.createTrainer(spec({ dropout: 1 })), { code: 'EINVAL' });
  t.throws(() => model.createTrainer(spec({ r: 0 })), { code: 'EINVAL' });
  const init = fixtureAdapter();
  t.throws(() => model.createTrainer({ ...spec({}), init }), { code: 'EINVAL', message: /matches no LoRA target/ },
    'init tensors for untargeted projections');
  t.throws(() => model.createTrainer({ ...spec({ r: 8, targets: ['q_proj'] }), init: Object.fromEntries(
    Object.entries(init).filter(([k]) => k.includes('q_proj'))) }), { code: 'ESHAPE' }, 'init of another rank');

  const tr = model.createTrainer(spec({}));
  t.teardown(() => tr.dispose());
  t.throws(() => model.createTrainer(spec({})), { code: 'EBUSY' }, 'one trainer per model');
  await t.rejects(tr.accumulate(Int32Array.of(1, 2, 3), Int32Array.of(1, 2), 1, 3), { code: 'ESHAPE', message: /labels has 2 values/ });
  await t.rejects(tr.accumulate(Int32Array.of(1, 2, 3), Int32Array.of(1, 2, 3), 2, 2), { code: 'ESHAPE', message: /batch x seqLen/ });
  await t.rejects(tr.accumulate(Int32Array.of(1, 999, 3), Int32Array.of(1, 2, 3), 1, 3), { code: 'ERANGE', message: /999/ });
  await t.rejects(tr.accumulate(Int32Array.of(1, 2, 3), Int32Array.of(1, -5, 3), 1, 3), { code: 'ERANGE' });
  await t.rejects(tr.evaluate(Int32Array.of(1, 2), Int32Array.of(1, 2), 0, 2), { code: 'EINVAL' });
  await t.rejects(tr.step({ ...stepOptions(1), gradScale: NaN }), { code: 'EINVAL' });
  const busy = tr.accumulate(ids, labels, B, T);
  await t.rejects(tr.accumulate(ids, labels, B, T), { code: 'EBUSY' }, 'one call at a time');
  t.throws(() => tr.gradients(), { code: 'EBUSY' });
  await busy;
  const none = await tr.accumulate(ids, new Int32Array(B * T).fill(-100), B, T);
  t.same(none, { lossSum: 0, tokens: 0 }, 'an all-masked batch has no loss and no gradient');
  const late = tr.evaluate(ids, labels, B, T);
  tr.dispose();  // during a call: takes effect when it settles
  t.equal((await late).tokens, 11, 'the running call completes');
  await t.rejects(tr.accumulate(ids, labels, B, T), { code: 'EDISPOSED' });
  const tr2 = model.createTrainer(spec({}));
  model.clearLora();
  await t.rejects(tr2.accumulate(ids, labels, B, T), { code: 'EINVAL', message: /replaced or removed/ });
  tr2.dispose();
});
