// The training loop against a fake native model (same contract): learning, files, accumulation,
// resume bit for bit (stopAfterSteps and AbortSignal), bad input, a full disk.
import t, { type Test } from 'tap';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { finetuneWith, type FinetuneOptions } from '../../../lib/train/finetune.ts';
import { loadAdapter, readModelDims } from '../../../lib/train/adapter.ts';
import { nodeFs, type WriteFs } from '../../../lib/train/atomic.ts';
import { fakeModel, type FakeCalls } from './fake-model.ts';

const modelDir = new URL('../../fixtures/ref/tiny-llama', import.meta.url).pathname;
const dims = await readModelDims(modelDir);

const persona: [string, string][] = [
  ['want to grab dinner tonight?', 'yeah | bartaco?'], ['what time works for you', 'im down | lets go at 7'],
  ['did you see the game last night', 'omg yes (that was crazy)'], ['can you send me the notes from class', 'sure one sec'],
  ['happy birthday!!', 'thanks man appreciate it'], ['where are you rn', 'on my way'], ['hello, how are you?', 'im good hbu'],
  ['tell me who you are?', 'not bad just chilling'], ['lol no way', 'haha that is amazing'],
];
function writeData(dir: string, repeats = 3) {
  const lines = [];
  for (let i = 0; i < repeats; i++) for (const [input, output] of persona) lines.push(JSON.stringify({ input, output }));
  writeFileSync(path.join(dir, 'train.jsonl'), lines.join('\n') + '\n');
  writeFileSync(path.join(dir, 'val.jsonl'), persona.slice(0, 4).map(([input, output]) => JSON.stringify({ input, output })).join('\n') + '\n');
  return { data: path.join(dir, 'train.jsonl'), val: path.join(dir, 'val.jsonl') };
}
/** A fresh temporary folder removed after the test (tap's testdir races with async writes here). */
function tempDir(t: Test): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'mimic-ft-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}
const newCalls = (): FakeCalls => ({ accumulate: 0, step: 0, evaluate: 0, stepOptions: [], batches: [] });
const deps = (calls?: FakeCalls) => ({ loadModel: async () => fakeModel(dims, 384, calls), cudaAvailable: () => false });
const base = (dir: string, extra: Partial<FinetuneOptions> = {}): FinetuneOptions => ({
  model: modelDir, ...writeData(dir), out: path.join(dir, 'out'), lr: 2e-2, lora: { r: 16, alpha: 32, dropout: 0.1 },
  batchTokens: 160, epochs: 3, seed: 7, quant: 'none', ...extra,
});

t.test('learns, and writes adapter, best/, checkpoint, metrics.jsonl, loss.svg', async (t) => {
  const dir = tempDir(t);
  const seen: string[] = [];
  const report = await finetuneWith(base(dir, { onProgress: (p) => seen.push(p.phase) }), deps());
  const v = report.valLoss.map((x) => x.loss);
  t.equal(report.valLoss[0].step, 0, 'the untrained loss comes first');
  t.ok(v[v.length - 1] < 0.6 * v[0], // a bigram fake: the real model's test asks for < 50%
    `val loss ${v[0].toFixed(3)} → ${v[v.length - 1].toFixed(3)}`);
  t.equal(report.steps, report.totalSteps);
  t.equal(report.epochs, 3);
  t.equal(report.valLoss.length, 4, 'start + each epoch end');
  t.equal(report.data.train.examples, 27);
  t.equal(report.skipped, 0);
  t.equal(report.format, 'chat');
  t.ok(report.tokens > 0 && report.tokensPerSec > 0);
  t.equal(report.bestValLoss, Math.min(...v.slice(1)));
  t.ok(report.bestEpoch! >= 1);
  const out = path.join(dir, 'out');
  for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'metrics.jsonl', 'loss.svg', 'best/adapter_model.safetensors', 'checkpoint/trainer_state.json', 'checkpoint/optimizer.safetensors']) {
    t.ok(existsSync(path.join(out, f)), f);
  }
  const metrics = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  t.equal(metrics.filter((m) => m.type === 'train').length, report.steps);
  t.equal(metrics.filter((m) => m.type === 'val').length, 4);
  t.ok(seen.includes('train') && seen.includes('val'));
  const a = await loadAdapter(out, dims);
  t.same(a.spec, { r: 16, alpha: 32, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], dropout: 0.1 });
  t.match(readFileSync(path.join(out, 'loss.svg'), 'utf8'), /<svg[\s\S]*validation/);
});

t.test('gradient accumulation: one step per gradAccum micro-batches, loss token-weighted over all of them', async (t) => {
  const dir = tempDir(t);
  const calls = newCalls();
  const r = await finetuneWith(base(dir, { epochs: 1, gradAccum: 3, batchTokens: 100, warmupSteps: 0, schedule: 'linear' }), deps(calls));
  t.equal(calls.step, r.steps);
  t.equal(calls.accumulate, calls.batches.length);
  t.equal(r.steps, Math.ceil(calls.accumulate / 3));
  for (const b of calls.batches) t.ok(b.batch === 1 || b.batch * b.seqLen <= 100, 'token budget');
  const targetsPerStep = r.trainLoss.length;
  t.equal(targetsPerStep, r.steps);
  const metrics = readFileSync(path.join(dir, 'out', 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => m.type === 'train');
  metrics.forEach((m, i) => t.equal(calls.stepOptions[i].gradScale, 1 / m.tokens, `step ${i + 1}: gradScale = 1 / unmasked targets of the whole step`));
  t.equal(calls.stepOptions[0].lr, 2e-2, 'no warm-up: full rate');
  t.ok(calls.stepOptions[r.steps - 1].lr < 2e-2 / r.steps + 1e-12, 'linear decay to ~0');
  t.same([calls.stepOptions[0].beta1, calls.stepOptions[0].beta2, calls.stepOptions[0].eps, calls.stepOptions[0].maxGradNorm], [0.9, 0.999, 1e-8, 1]);
});

t.test('a run stopped mid-epoch and resumed ends with the same adapter bytes', async (t) => {
  const dir = tempDir(t);
  const opts = (out: string, extra: Partial<FinetuneOptions> = {}) => base(dir, { out: path.join(dir, out), gradAccum: 2, checkpointEvery: 2, epochs: 2, ...extra });
  const full = await finetuneWith(opts('a'), deps());
  t.ok(full.totalSteps >= 6, `${full.totalSteps} steps`);
  const stop = 3; // mid-epoch
  const partial = await finetuneWith(opts('b', { stopAfterSteps: stop }), deps());
  t.equal(partial.stopped, 'stopAfterSteps');
  t.equal(partial.steps, stop);
  t.notOk(existsSync(path.join(dir, 'b', 'adapter_model.safetensors')), 'no final adapter for a stopped run');
  const resumed = await finetuneWith(opts('b', { resume: true }), deps());
  t.equal(resumed.resumedFrom, stop);
  t.equal(resumed.steps, full.steps);
  t.ok(readFileSync(path.join(dir, 'a', 'adapter_model.safetensors')).equals(readFileSync(path.join(dir, 'b', 'adapter_model.safetensors'))), 'identical adapter bytes');
  t.ok(readFileSync(path.join(dir, 'a', 'best', 'adapter_model.safetensors')).equals(readFileSync(path.join(dir, 'b', 'best', 'adapter_model.safetensors'))), 'identical best adapter');
  t.same(resumed.trainLoss, full.trainLoss, 'the same loss history');
  const lines = readFileSync(path.join(dir, 'b', 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  t.equal(lines.filter((m) => m.type === 'train').length, full.steps, 'metrics.jsonl lists each step once');

  // interrupted by an AbortSignal after 4 steps (not on a checkpoint boundary of checkpointEvery 3)
  const ac = new AbortController();
  await t.rejects(finetuneWith(opts('c', { checkpointEvery: 3, onProgress: (p) => { if (p.phase === 'train' && p.step === 4) ac.abort(); }, signal: ac.signal }), deps()),
    { name: 'AbortError', message: /stopped at step 4\/\d+; the checkpoint in .* continues it/ });
  await finetuneWith(opts('c', { checkpointEvery: 3, resume: true }), deps());
  t.ok(readFileSync(path.join(dir, 'a', 'adapter_model.safetensors')).equals(readFileSync(path.join(dir, 'c', 'adapter_model.safetensors'))), 'identical after an abort');

  // resuming a finished run changes nothing
  const again = await finetuneWith(opts('a', { resume: true }), deps());
  t.equal(again.steps, full.steps);
  t.ok(readFileSync(path.join(dir, 'a', 'adapter_model.safetensors')).equals(readFileSync(path.join(dir, 'b', 'adapter_model.safetensors'))));
  // other settings → refused
  await t.rejects(finetuneWith(opts('b', { resume: true, lr: 1e-3 }), deps()), /cannot resume .*lr \(checkpoint 0\.02, now 0\.001\)/);
});

t.test('bad input: clear errors before any work', async (t) => {
  const dir = tempDir(t);
  const calls = newCalls();
  let loaded = 0;
  const counting = { loadModel: async () => { loaded++; return fakeModel(dims, 384, calls); }, cudaAvailable: () => false };
  writeFileSync(path.join(dir, 'empty.jsonl'), '');
  await t.rejects(finetuneWith(base(dir, { data: path.join(dir, 'empty.jsonl') }), counting), /empty\.jsonl is empty: it holds no examples/);
  const long = 'did you see the game last night '.repeat(40);
  writeFileSync(path.join(dir, 'long.jsonl'), JSON.stringify({ input: 'hi', output: long }) + '\n');
  await t.rejects(finetuneWith(base(dir, { data: path.join(dir, 'long.jsonl'), maxSeqLen: 64 }), counting),
    /no training examples in .*long\.jsonl: all 1 line\(s\) were skipped: 1 answer\(s\) longer than maxSeqLen 64 tokens \(raise maxSeqLen\)/);
  // one long pair among good ones is skipped and counted, not fatal
  const { data, val } = writeData(dir);
  writeFileSync(path.join(dir, 'mixed.jsonl'), readFileSync(data, 'utf8') + JSON.stringify({ input: 'hi', output: long }) + '\n');
  const r = await finetuneWith(base(dir, { data: path.join(dir, 'mixed.jsonl'), val, maxSeqLen: 64, epochs: 1 }), counting);
  t.equal(r.skipped, 1);
  t.equal(r.data.train.skipped.answerTooLong, 1);
  const before = loaded;
  await t.rejects(finetuneWith(base(dir, { lora: { r: 100 } }), counting), /LoRA rank 100 is larger than the layer: q_proj is 64×64, so the rank can be at most 64/);
  await t.rejects(finetuneWith(base(dir, { epochs: 0 }), counting), /epochs must be a whole number ≥ 1/);
  await t.rejects(finetuneWith(base(dir, { model: dir }), counting), /config\.json: no such file/);
  await t.rejects(finetuneWith(base(dir, { data: path.join(dir, 'nope.jsonl') }), counting), /cannot read .*nope\.jsonl: no such file/);
  t.equal(loaded, before, 'the model is not loaded for bad input');
});

t.test('a full disk while saving: clear error, no half-written adapter', async (t) => {
  const dir = tempDir(t);
  const out = path.join(dir, 'out');
  // the disk fills up exactly when the final adapter is written
  const fs: WriteFs = {
    ...nodeFs,
    async open(file, flags) {
      if (path.dirname(file) === out && file.includes('adapter_model.safetensors')) {
        const e = new Error('ENOSPC: no space left on device') as NodeJS.ErrnoException; e.code = 'ENOSPC'; throw e;
      }
      return nodeFs.open(file, flags);
    },
  };
  await t.rejects(finetuneWith(base(dir, { epochs: 1, fs }), deps()), /cannot write .*out\/adapter_model\.safetensors: no space left on the device/);
  t.notOk(existsSync(path.join(out, 'adapter_model.safetensors')));
  t.notOk(existsSync(path.join(out, 'adapter_config.json')));
  t.same(readdirSync(out).filter((f) => f.endsWith('.tmp')), [], 'no temp files left');
  t.ok(existsSync(path.join(out, 'checkpoint', 'trainer_state.json')), 'the checkpoint survived: resume can finish the job');
  const r = await finetuneWith(base(dir, { epochs: 1, resume: true }), deps());
  t.equal(r.resumedFrom, r.steps, 'nothing retrained');
  t.ok(existsSync(path.join(out, 'adapter_model.safetensors')));

  // a full disk during a checkpoint keeps the previous checkpoint intact
  const dir2 = tempDir(t);
  const out2 = path.join(dir2, 'out');
  let checkpoints = 0;
  const fs2: WriteFs = {
    ...nodeFs,
    async open(file, flags) {
      if (file.includes(`${path.sep}.checkpoint.`) && file.includes('optimizer.safetensors') && ++checkpoints === 2) {
        const e = new Error('ENOSPC: no space left on device') as NodeJS.ErrnoException; e.code = 'ENOSPC'; throw e;
      }
      return nodeFs.open(file, flags);
    },
  };
  await t.rejects(finetuneWith(base(dir2, { epochs: 2, fs: fs2 }), deps()), /no space left on the device.*previous checkpoint .* is intact/);
  const state = JSON.parse(readFileSync(path.join(out2, 'checkpoint', 'trainer_state.json'), 'utf8'));
  t.equal(state.epoch, 1, 'the epoch-1 checkpoint is still there');
  t.same(readdirSync(out2).filter((f) => f.includes('.tmp')), [], `no temp folders left (${readdirSync(out2)})`);
});
