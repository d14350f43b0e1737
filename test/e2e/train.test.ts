// finetune() on the native trainer and the bundled tiny model (CPU): learning, adapter reload,
// resume bit for bit, `mimic eval`, bad input. Skipped (with the reason) when the addon is not built.
import t, { type Test } from 'tap';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { finetune, type FinetuneOptions } from '../../lib/train/finetune.ts';
import { evaluate } from '../../lib/train/evaluate.ts';
import { loadAdapter, readModelDims } from '../../lib/train/adapter.ts';
import { nodeFs, type WriteFs } from '../../lib/train/atomic.ts';
import { registerEval } from '../../lib/cli/eval.ts';
import { native } from '../../lib/native.ts';
import { loadModel } from '../../lib/infer/index.ts';

const root = new URL('../..', import.meta.url).pathname;
const tiny = path.join(root, 'assets', 'tiny');
const fixtureAdapter = path.join(root, 'test', 'fixtures', 'ref', 'tiny-llama', 'lora');

let why: string | false = false;
try {
  const m = await native().loadModel(tiny, { device: 'cpu', quant: 'none' });
  if (typeof m.createTrainer !== 'function') why = 'the addon has no createTrainer yet';
  m.dispose();
} catch (e) {
  why = `the native addon cannot load the tiny model: ${(e as Error).message}`;
}
if (why) t.plan(0, why);

function tempDir(t: Test): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'mimic-e2e-train-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

// A small synthetic persona: facts and habits, each asked a few ways.
const persona: [string[], string][] = [
  [['whats your name', 'who are you', 'what should i call you'], 'im jordan | jordan lee'],
  [['where are you from', 'whats your hometown', 'where did you grow up'], 'denver colorado'],
  [['how tall are you', 'whats your height'], '6 feet (ish)'],
  [['want to get food', 'hungry?', 'dinner tonight?'], 'yes | tacos?'],
  [['how are you', 'hows it going', 'you good?'], 'good hbu'],
  [['what do you study', 'whats your major'], 'chemistry (pain)'],
];
function writePersona(dir: string) {
  const train: string[] = [], val: string[] = [];
  for (const [qs, a] of persona) {
    for (let r = 0; r < 4; r++) for (const q of qs.slice(0, -1)) train.push(JSON.stringify({ input: q, output: a }));
    val.push(JSON.stringify({ input: qs[qs.length - 1], output: a }));
  }
  writeFileSync(path.join(dir, 'train.jsonl'), train.join('\n') + '\n');
  writeFileSync(path.join(dir, 'val.jsonl'), val.join('\n') + '\n');
  return { data: path.join(dir, 'train.jsonl'), val: path.join(dir, 'val.jsonl') };
}
const recipe = (dir: string, extra: Partial<FinetuneOptions> = {}): FinetuneOptions => ({
  model: tiny, ...writePersona(dir), out: path.join(dir, 'out'), device: 'cpu', quant: 'nf4', epochs: 6, lr: 5e-3,
  lora: { r: 32, alpha: 64, dropout: 0.05 }, batchTokens: 384, seed: 11, checkpointEvery: 0, ...extra,
});

t.test('learning: validation loss falls below half its start; greedy replies end with DONE', async (t) => {
  const dir = tempDir(t);
  const r = await finetune(recipe(dir));
  const v = r.valLoss.map((x) => x.loss);
  t.comment(`val loss ${v.map((x) => x.toFixed(3)).join(' → ')}; train ${r.trainLoss[0].loss.toFixed(3)} → ${r.trainLoss.at(-1)!.loss.toFixed(3)}; ${r.tokensPerSec.toFixed(0)} tokens/s`);
  t.ok(r.bestValLoss! < 0.5 * v[0], `best val loss ${r.bestValLoss!.toFixed(3)} < 50% of ${v[0].toFixed(3)}`);
  const model = await loadModel(tiny, { adapter: r.paths.adapter, device: 'cpu', quant: 'nf4' });
  t.teardown(() => model.dispose?.());
  let done = 0;
  for (const [qs, a] of persona) {
    const g = await model.generate(model.promptIds(qs[0]), { temperature: 0, maxTokens: 32 });
    t.comment(`${qs[0]} → ${g.text} [${g.stopReason}] (trained: ${a})`);
    if (g.stopReason === 'stop') done++;
  }
  t.equal(done, persona.length, 'every greedy reply ends with DONE');
});

t.test('a saved adapter re-loads to identical logits; mimic eval agrees with the validation loss', async (t) => {
  const dir = tempDir(t);
  const r = await finetune(recipe(dir, { epochs: 1 }));
  const m = await native().loadModel(tiny, { device: 'cpu', quant: 'nf4' });
  t.teardown(() => m.dispose());
  const dims = await readModelDims(tiny);
  const a = await loadAdapter(r.paths.adapter, dims);
  const state = JSON.parse(readFileSync(path.join(r.paths.checkpoint, 'trainer_state.json'), 'utf8'));
  t.equal(state.step, r.steps);
  const ids = Int32Array.from([0, 2, 89, 279, 86, 3, 203, 203, 352, 88, 372]);
  const trainer = m.createTrainer({ lora: { ...a.spec, dropout: 0 }, seed: 0, recompute: false, init: a.tensors });
  const fromTrainer = trainer.adapter();
  trainer.dispose();
  for (const k of Object.keys(a.tensors)) t.same(fromTrainer[k], a.tensors[k], `${k} survives save → load → trainer`);
  m.setLora(a.spec, a.tensors);
  const l1 = await m.logits(ids);
  m.clearLora();
  const base = await m.logits(ids);
  m.setLora(a.spec, (await loadAdapter(r.paths.adapter, dims)).tensors);
  const l2 = await m.logits(ids);
  t.same(l2, l1, 'identical logits');
  t.notSame(l1, base, 'the adapter changes the model');

  const e = await evaluate({ model: tiny, adapter: r.paths.adapter, data: path.join(dir, 'val.jsonl'), device: 'cpu', quant: 'nf4', batchTokens: 384 });
  t.ok(Math.abs(e.loss - r.valLoss.at(-1)!.loss) < 1e-6 * e.loss, `eval ${e.loss} = last val ${r.valLoss.at(-1)!.loss}`);
  const out: string[] = [];
  const log = console.log;
  console.log = (s: string) => out.push(String(s));
  try {
    const program = new Command().exitOverride();
    registerEval(program);
    await program.parseAsync(['eval', '--model', tiny, '--adapter', r.paths.adapter, '--data', path.join(dir, 'val.jsonl'), '--device', 'cpu', '--json', '--batch-tokens', '384'], { from: 'user' });
  } finally {
    console.log = log;
  }
  const last = JSON.parse(out.at(-1)!);
  t.same(Object.keys(last), ['loss', 'tokens']);
  t.ok(Math.abs(last.loss - e.loss) < 1e-9 && last.tokens === e.tokens, 'mimic eval --json: {"loss", "tokens"} on the last line');
  const b = await evaluate({ model: tiny, data: path.join(dir, 'val.jsonl'), device: 'cpu', quant: 'nf4' });
  t.ok(Math.abs(b.loss - r.valLoss[0].loss) < 1e-5 * b.loss, 'without an adapter: the untrained loss');
});

t.test('a run interrupted mid-epoch and resumed ends with the same adapter bytes', async (t) => {
  const dir = tempDir(t);
  const o = (out: string, extra: Partial<FinetuneOptions> = {}) => recipe(dir, { out: path.join(dir, out), epochs: 2, checkpointEvery: 2, ...extra });
  const full = await finetune(o('a'));
  const ac = new AbortController();
  const stopAt = Math.floor(full.totalSteps / 4) + 1;
  await t.rejects(finetune(o('b', { signal: ac.signal, onProgress: (p) => { if (p.phase === 'train' && p.step === stopAt) ac.abort(); } })), { name: 'AbortError' });
  const resumed = await finetune(o('b', { resume: true }));
  t.equal(resumed.resumedFrom, stopAt);
  t.ok(readFileSync(path.join(dir, 'a', 'adapter_model.safetensors')).equals(readFileSync(path.join(dir, 'b', 'adapter_model.safetensors'))), 'identical adapter bytes');
  t.same(resumed.trainLoss, full.trainLoss, 'identical loss history');
});

t.test('bad input', async (t) => {
  const dir = tempDir(t);
  writeFileSync(path.join(dir, 'empty.jsonl'), '');
  await t.rejects(finetune(recipe(dir, { data: path.join(dir, 'empty.jsonl') })), /is empty: it holds no examples/);
  writeFileSync(path.join(dir, 'long.jsonl'), JSON.stringify({ input: 'hi', output: 'word '.repeat(200) }) + '\n');
  await t.rejects(finetune(recipe(dir, { data: path.join(dir, 'long.jsonl'), maxSeqLen: 64 })), /all 1 line\(s\) were skipped: 1 answer\(s\) longer than maxSeqLen 64/);
  await t.rejects(finetune(recipe(dir, { lora: { r: 100 } })), /LoRA rank 100 is larger than the layer: k_proj is 64×128, so the rank can be at most 64/);
  await t.rejects(loadAdapter(fixtureAdapter, await readModelDims(tiny)), /is for another model: .* but this model's .* needs/);
  await t.rejects(loadModel(tiny, { adapter: fixtureAdapter, device: 'cpu' }), /another model|shape/);
  const out = path.join(dir, 'full');
  const fs: WriteFs = {
    ...nodeFs,
    async open(file, flags) {
      if (path.dirname(file) === out && file.includes('adapter_model')) { const e = new Error('ENOSPC') as NodeJS.ErrnoException; e.code = 'ENOSPC'; throw e; }
      return nodeFs.open(file, flags);
    },
  };
  await t.rejects(finetune(recipe(dir, { out, epochs: 1, fs })), /cannot write .*adapter_model\.safetensors: no space left on the device/);
  t.notOk(existsSync(path.join(out, 'adapter_model.safetensors')), 'no half-written adapter');
  t.notOk(existsSync(path.join(out, 'adapter_config.json')));
  t.same(readdirSync(out).filter((f) => f.endsWith('.tmp')), []);
});

t.test('mimic train: flags → adapter, best/, metrics.jsonl, loss.svg; report on stdout', async (t) => {
  const dir = tempDir(t);
  const { data, val } = writePersona(dir);
  const out: string[] = [];
  const log = console.log;
  console.log = (s: string) => out.push(String(s));
  try {
    const { registerTrain } = await import('../../lib/cli/train.ts');
    const program = new Command().exitOverride();
    registerTrain(program);
    await program.parseAsync(['train', '--model', tiny, '--data', data, '--val', val, '--out', path.join(dir, 'a'), '--epochs', '2', '--lr', '5e-3',
      '--rank', '8', '--alpha', '16', '--device', 'cpu', '--quant', 'none', '--batch-tokens', '384', '--json'], { from: 'user' });
  } finally {
    console.log = log;
  }
  const report = JSON.parse(out.at(-1)!);
  t.equal(report.epochs, 2);
  t.equal(report.quant, 'none');
  t.match(out.join('\n'), /trained \d+\/\d+ steps \(2\.00 epochs\) on 40 examples/);
  t.match(out.join('\n'), /val loss [\d.]+ → [\d.]+ → [\d.]+; best/);
  for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'best/adapter_config.json', 'metrics.jsonl', 'loss.svg']) t.ok(existsSync(path.join(dir, 'a', f)), f);
  const cfg = JSON.parse(readFileSync(path.join(dir, 'a', 'adapter_config.json'), 'utf8'));
  t.same([cfg.r, cfg.lora_alpha, cfg.peft_type], [8, 16, 'LORA']);
});
