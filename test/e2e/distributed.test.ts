// Data-parallel finetune on the CPU (the TCP transport; the NCCL one needs GPUs: bench/gpu/dp-round.sh):
// 2 workers give 1 worker's run (with LoRA dropout too: a micro-batch's masks follow its place in
// the step, not the rank), uneven shards keep the loss token-weighted, resume with 2 ranks is bit
// for bit, and a killed worker stops the others with a clear error. Skipped (with the reason) when
// the addon is not built.
import t, { type Test } from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { finetune, type FinetuneOptions, type TrainReport } from '../../lib/train/finetune.ts';
import { loadAdapter } from '../../lib/train/adapter.ts';
import { freePort, runDistributed } from '../../lib/train/distributed/launch.ts';
import { native, type NativeAddonDistributed, type NativeTrainerDistributed } from '../../lib/native.ts';

const root = new URL('../..', import.meta.url).pathname;
const tiny = path.join(root, 'assets', 'tiny');

let why: string | false = false;
try {
  const m = await native().loadModel(tiny, { device: 'cpu', quant: 'none' });
  if (typeof (m.createTrainer({ lora: { r: 1, alpha: 1, dropout: 0, targets: ['q_proj'] }, seed: 1, recompute: false }) as any).setGradients !== 'function') why = 'the addon has no setGradients yet';
  m.dispose();
} catch (e) {
  why = `the native addon cannot load the tiny model: ${(e as Error).message}`;
}
if (why) t.plan(0, why);

function tempDir(t: Test): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'mimic-e2e-dist-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

function writeData(dir: string) {
  const qs = ['whats your name', 'where are you from', 'how tall are you', 'want to get food', 'how are you', 'what do you study', 'hungry?', 'you good?'];
  const line = (i: number) => JSON.stringify({ input: `${qs[i % qs.length]} ${'ok '.repeat(i % 4)}`, output: `answer ${i} ${'x'.repeat(i % 7)}` });
  writeFileSync(path.join(dir, 'train.jsonl'), [...Array(26).keys()].map(line).join('\n') + '\n');
  writeFileSync(path.join(dir, 'val.jsonl'), [...Array(6).keys()].map((i) => line(i + 100)).join('\n') + '\n');
  return { data: path.join(dir, 'train.jsonl'), val: path.join(dir, 'val.jsonl') };
}

// dropout 0 unless a test says otherwise: with rows split across ranks (gradAccum 1 below) each
// part of a micro-batch draws its own masks, not one device's (docs/distributed.md)
const recipe = (dir: string, extra: Partial<FinetuneOptions> = {}): FinetuneOptions => ({
  model: tiny, ...writeData(dir), out: path.join(dir, 'out'), device: 'cpu', quant: 'nf4', epochs: 2, lr: 5e-3,
  lora: { r: 8, alpha: 16, dropout: 0 }, batchTokens: 96, seed: 3, checkpointEvery: 0, threads: 1, ...extra,
});

/** max |a − b| / max |a| over every tensor of two adapters. */
async function adapterDiff(a: string, b: string): Promise<number> {
  const [x, y] = await Promise.all([loadAdapter(a), loadAdapter(b)]);
  let num = 0, den = 0;
  for (const [k, v] of Object.entries(x.tensors)) {
    const w = y.tensors[k];
    for (let i = 0; i < v.length; i++) { num = Math.max(num, Math.abs(v[i] - w[i])); den = Math.max(den, Math.abs(v[i])); }
  }
  return num / den;
}

const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(a);

// The tolerance: the global gradient is the same sum of per-example gradients, formed in another
// order (each rank sums its micro-batches, then rank 0 adds the ranks in rank order), so it
// differs from one device's by fp32 rounding (~1e-7 relative) — not bit for bit, since one device
// accumulates micro-batch after micro-batch into one buffer. The losses show exactly that
// (measured ~1e-7): TOL = 1e-5. The adapter drifts a little more: AdamW divides each element's
// gradient by its own running RMS, so an element whose gradient is near zero turns a rounding-
// level difference into a visible one in its update (measured 1.6e-5 and 2.2e-5 normwise after
// 12 steps at lr 5e-3): ADAPTER_TOL = 1e-4. A real error — a micro-batch lost or counted twice,
// a per-rank gradScale — moves both by ≥ 1e-2.
const TOL = 1e-5;
const ADAPTER_TOL = 1e-4;

t.test('2 workers = 1 worker: loss curve, validation, adapter; uneven shards stay token-weighted', async (t) => {
  const dir = tempDir(t);
  const one = await finetune(recipe(dir, { out: path.join(dir, 'one'), gradAccum: 3 }));
  const t0 = Date.now();
  const progress: number[] = [];
  const two = await finetune(recipe(dir, { out: path.join(dir, 'two'), gradAccum: 3, workers: 2, onProgress: (p) => { if (p.phase === 'train') progress.push(p.step); } }));
  t.comment(`2 workers: ${((Date.now() - t0) / 1000).toFixed(1)} s (process start-up included); ${one.steps} steps of 3 micro-batches (2 + 1 a rank)`);
  t.equal(two.worldSize, 2);
  t.equal(two.steps, one.steps);
  t.same(progress, [...Array(one.steps).keys()].map((i) => i + 1), 'rank 0 forwards progress');
  t.equal(two.targetTokens, one.targetTokens, 'the same trained tokens in all');
  t.equal(two.tokens, one.tokens, 'the same tokens in all');
  const steps = (r: TrainReport, out: string) => readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((x) => x.type === 'train');
  t.same(steps(two, path.join(dir, 'two')).map((x) => x.tokens), steps(one, path.join(dir, 'one')).map((x) => x.tokens), 'every step: the same global target count (gradScale)');
  const dl = Math.max(...one.trainLoss.map((x, i) => rel(x.loss, two.trainLoss[i].loss)));
  const dv = Math.max(...one.valLoss.map((x, i) => rel(x.loss, two.valLoss[i].loss)));
  const da = await adapterDiff(path.join(dir, 'one'), path.join(dir, 'two'));
  t.comment(`train loss ${one.trainLoss.map((x) => x.loss.toFixed(4)).join(' ')}; max rel diff: train ${dl.toExponential(2)}, val ${dv.toExponential(2)}, adapter ${da.toExponential(2)}`);
  t.ok(dl <= TOL, `train loss within ${TOL}`);
  t.ok(dv <= TOL, `val loss within ${TOL}`);
  t.ok(da <= ADAPTER_TOL, `adapter within ${ADAPTER_TOL} (normwise)`);
  for (const f of ['adapter_model.safetensors', 'adapter_config.json', 'metrics.jsonl', 'loss.svg', 'best/adapter_model.safetensors', 'checkpoint']) {
    t.ok(existsSync(path.join(dir, 'two', f)), `rank 0 wrote ${f}`);
  }
});

t.test('LoRA dropout: 2 workers = 1 worker, each micro-batch draws the masks it draws on one device; resume is bit for bit', async (t) => {
  // gradAccum 4 (16 micro-batches an epoch): every step has whole micro-batches for both ranks. A
  // step with fewer micro-batches than ranks splits rows, and the parts draw masks of their own
  // (with gradAccum 3 here the last step of each epoch has one micro-batch: 9e-3 off from there on).
  const dir = tempDir(t);
  const lora = { r: 8, alpha: 16, dropout: 0.1 };
  const one = await finetune(recipe(dir, { out: path.join(dir, 'one'), gradAccum: 4, lora }));
  const two = await finetune(recipe(dir, { out: path.join(dir, 'two'), gradAccum: 4, lora, workers: 2 }));
  const nodrop = await finetune(recipe(dir, { out: path.join(dir, 'nodrop'), gradAccum: 4 }));
  const dl = Math.max(...one.trainLoss.map((x, i) => rel(x.loss, two.trainLoss[i].loss)));
  const dv = Math.max(...one.valLoss.map((x, i) => rel(x.loss, two.valLoss[i].loss)));
  const da = await adapterDiff(path.join(dir, 'one'), path.join(dir, 'two'));
  const dd = Math.max(...one.trainLoss.map((x, i) => rel(x.loss, nodrop.trainLoss[i].loss)));
  t.comment(`dropout 0.1, ${one.steps} steps: max rel diff 2 vs 1 worker: train ${dl.toExponential(2)}, val ${dv.toExponential(2)}, adapter ${da.toExponential(2)}; dropout 0.1 vs 0: ${dd.toExponential(2)}`);
  t.ok(dd > 100 * TOL, 'the masks matter: dropout moves the curve far beyond the tolerance');
  t.ok(dl <= TOL, `train loss within ${TOL}`);
  t.ok(dv <= TOL, `val loss within ${TOL}`);
  t.ok(da <= ADAPTER_TOL, `adapter within ${ADAPTER_TOL} (normwise)`);

  const part = await finetune(recipe(dir, { out: path.join(dir, 'resumed'), gradAccum: 4, lora, workers: 2, stopAfterSteps: 3 }));
  t.equal(part.stopped, 'stopAfterSteps');
  const rest = await finetune(recipe(dir, { out: path.join(dir, 'resumed'), gradAccum: 4, lora, workers: 2, resume: true }));
  t.equal(rest.resumedFrom, 3);
  t.same(rest.trainLoss, two.trainLoss, 'resumed with dropout: the same loss curve, bit for bit');
  t.same(readFileSync(path.join(dir, 'resumed', 'adapter_model.safetensors')), readFileSync(path.join(dir, 'two', 'adapter_model.safetensors')), 'the same adapter bytes');
});

/** The two ranks of a "multi-host" job, both in this process (the same code path as two hosts). */
async function twoRanks(o: FinetuneOptions): Promise<TrainReport> {
  const port = await freePort();
  const [r0] = await Promise.all([0, 1].map((rank) => finetune({ ...o, devices: { worldSize: 2, rank, masterAddr: '127.0.0.1', masterPort: port, joinTimeoutMs: 20_000 } })));
  return r0;
}

t.test('multi-host ranks, gradAccum 1 (rows split across ranks); resume with 2 ranks is bit for bit', async (t) => {
  const dir = tempDir(t);
  const one = await finetune(recipe(dir, { out: path.join(dir, 'one') }));
  const full = await twoRanks(recipe(dir, { out: path.join(dir, 'full') }));
  const dl = Math.max(...one.trainLoss.map((x, i) => rel(x.loss, full.trainLoss[i].loss)));
  const da = await adapterDiff(path.join(dir, 'one'), path.join(dir, 'full'));
  t.comment(`gradAccum 1: max rel diff vs 1 worker: loss ${dl.toExponential(2)}, adapter ${da.toExponential(2)}`);
  t.ok(dl <= TOL, `loss within ${TOL}`);
  t.ok(da <= ADAPTER_TOL, `adapter within ${ADAPTER_TOL}`);

  const part = await twoRanks(recipe(dir, { out: path.join(dir, 'resumed'), stopAfterSteps: 3 }));
  t.equal(part.stopped, 'stopAfterSteps');
  const rest = await twoRanks(recipe(dir, { out: path.join(dir, 'resumed'), resume: true }));
  t.equal(rest.resumedFrom, 3);
  t.same(rest.trainLoss, full.trainLoss, 'the same loss curve');
  t.same(readFileSync(path.join(dir, 'resumed', 'adapter_model.safetensors')), readFileSync(path.join(dir, 'full', 'adapter_model.safetensors')), 'the same adapter bytes');
});

t.test('a killed worker stops the others with a clear error', async (t) => {
  const dir = tempDir(t);
  let pids: number[] = [];
  let killedAt = 0;
  const run = runDistributed(recipe(dir, { epochs: 200, workers: 2, onProgress: (p) => {
    if (p.step === 2 && !killedAt) { killedAt = Date.now(); process.kill(pids[1], 'SIGKILL'); }
  } }), { onSpawn: (p) => { pids = p; } });
  const err = await run.then(() => null, (e) => e as Error & { workers: { rank: number; code: number | null; signal: string | null; error?: string }[] });
  t.ok(err, 'the run fails');
  const took = Date.now() - killedAt;
  t.comment(err!.message);
  t.match(err!.message, /worker rank 1 \(pid \d+\) was killed by SIGKILL/, 'names the dead worker');
  const r0 = err!.workers[0];
  t.equal(r0.code, 1, 'rank 0 stopped by itself (exit 1, not killed by the parent)');
  t.match(r0.error, /worker rank 1 disconnected/, 'and says why');
  t.ok(took < 10_000, `within ${took} ms of the kill`);
});

t.test('native hooks: setGradients round trip and checks; NCCL says ENOTSUP on a CPU build; ncclDestroy is a no-op there', async (t) => {
  const m = await native().loadModel(tiny, { device: 'cpu', quant: 'none' });
  t.teardown(() => m.dispose());
  const tr = m.createTrainer({ lora: { r: 2, alpha: 4, dropout: 0, targets: ['q_proj', 'v_proj'] }, seed: 1, recompute: false }) as NativeTrainerDistributed;
  t.teardown(() => tr.dispose());
  const g = tr.gradients();
  const names = Object.keys(g);
  names.forEach((k, i) => g[k].fill(i + 0.5));
  tr.setGradients(g);
  t.same(tr.gradients(), g, 'what was set is what gradients() returns');
  t.throws(() => tr.setGradients({ ...g, [names[0]]: new Float32Array(3) }), { code: 'ESHAPE' });
  const { [names[1]]: _gone, ...missing } = g;
  t.throws(() => tr.setGradients(missing), { code: 'EINVAL' });
  t.same(tr.gradients(), g, 'a refused call changes nothing');
  const addon = native() as NativeAddonDistributed;
  t.equal(typeof addon._ncclAvailable(), 'boolean');
  if (!addon._ncclAvailable()) {
    t.throws(() => addon._ncclUniqueId(), { code: 'ENOTSUP' });
    await t.rejects(tr.ncclInit(new Uint8Array(128), 0, 2, 1000), { code: 'ENOTSUP' });
    t.doesNotThrow(() => tr.ncclAbort(), 'ncclAbort without a communicator is a no-op');
  }
  t.equal(await tr.ncclDestroy(1000), 'none', 'ncclDestroy without a communicator (never on a CPU build): nothing to end');
  t.equal(await tr.ncclDestroy(), 'none', 'and again: idempotent');
});

t.test('native: accumulate\'s key seeds the dropout masks, whatever ran before; without a key the sequential stream', async (t) => {
  const m = await native().loadModel(tiny, { device: 'cpu', quant: 'none' });
  t.teardown(() => m.dispose());
  type Key = { step: number; micro: number; part?: number };
  type Keyed = NativeTrainerDistributed;
  const make = () => m.createTrainer({ lora: { r: 2, alpha: 4, dropout: 0.3, targets: ['q_proj', 'v_proj'] }, seed: 5, recompute: false }) as Keyed;
  const B = 2, T = 6;
  const ids = Int32Array.from({ length: B * T }, (_, i) => 3 + ((i * 7) % 20));
  const labels = Int32Array.from(ids);
  // lora_B starts at zero, so the loss ignores the masks; dB = scale · gᵀ · (dropout(x) · Aᵀ) does not
  const grads = async (tr: Keyed, key?: Key) => {
    tr.zeroGrad();
    await tr.accumulate(ids, labels, B, T, key);
    return Object.values(tr.gradients()).map((g) => Array.from(g));
  };
  let tr = make();
  const first = await grads(tr, { step: 4, micro: 2 });
  await grads(tr);
  await grads(tr, { step: 0, micro: 0 });
  t.same(await grads(tr, { step: 4, micro: 2 }), first, 'the same key, the same masks, after other calls');
  t.same(await grads(tr, { step: 4, micro: 2, part: 0 }), first, 'part defaults to 0');
  for (const k of [{ step: 4, micro: 3 }, { step: 5, micro: 2 }, { step: 4, micro: 2, part: 1 }]) {
    t.notSame(await grads(tr, k), first, `another key, other masks: ${JSON.stringify(k)}`);
  }
  await t.rejects(tr.accumulate(ids, labels, B, T, { step: -1, micro: 0 }), { code: 'EINVAL' }, 'a negative step is refused');
  await t.rejects(tr.accumulate(ids, labels, B, T, { step: 1.5, micro: 0 }), { code: 'EINVAL' }, 'a fractional step is refused');
  tr.dispose();
  tr = make();
  const plain = await grads(tr);
  tr.dispose();
  tr = make();
  await grads(tr, { step: 9, micro: 1 });
  t.same(await grads(tr), plain, 'a keyed call leaves the sequential stream where it was');
  tr.dispose();
});