/**
 * `finetune()`: QLoRA fine-tuning of a Llama checkpoint on prepared pairs, end to end.
 *
 * data.jsonl → tokenized examples (prompt masked) → length-bucketed micro-batches in a seeded
 * order → native trainer (accumulate × gradAccum, then one AdamW step with the loss
 * token-weighted over the whole accumulated batch) → validation at each epoch end → the best
 * and the last adapter in PEFT's format, metrics.jsonl, loss.svg, and a checkpoint from which
 * `resume: true` continues a killed run to the same bytes.
 *
 * Files in `out/`:
 *   adapter_config.json, adapter_model.safetensors   the final adapter
 *   best/                                            the adapter of the lowest validation loss
 *   checkpoint/                                      see checkpoint.ts
 *   metrics.jsonl, loss.svg                          see metrics.ts, plot.ts
 *   .cache/                                          tokenized data (Arrow IPC)
 */
import { createHash } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { native, type Device, type NativeModel, type NativeTrainer } from '../native.ts';
import { Tokenizer } from '../tokenize/tokenizer.ts';
import { collate, loadDataset, planBatches, type Dataset, type DatasetStats } from '../tokenize/dataset.ts';
import { FORMAT_DEFAULTS, resolveFormat, type TrainFormat } from '../tokenize/format.ts';
import { ALL_TARGETS, readModelDims, saveAdapter, validateLoraSpec, type LoraTarget, type ModelDims } from './adapter.ts';
import { readCheckpoint, settingsDiff, writeCheckpoint, CHECKPOINT_VERSION, type CheckpointMeta, type ResumeSettings } from './checkpoint.ts';
import { MetricsLog, type TrainRecord, type ValRecord } from './metrics.ts';
import { lossSvg } from './plot.ts';
import { learningRate, warmupSteps as resolveWarmup, type ScheduleKind } from './schedule.ts';
import { nodeFs, writeFileAtomic, type WriteFs } from './atomic.ts';
import { decodeJsonAndTensors, encodeJsonAndTensors, type DistContext } from './distributed/context.ts';
import { shardStepKeyed } from './distributed/shard.ts';
import { runDistributed, type DistributedOptions } from './distributed/launch.ts';

export interface LoraOptions {
  /** Rank. Default 16. */
  r?: number;
  /** Scaling numerator (scale = alpha / r). Default 32. */
  alpha?: number;
  /** Dropout on the adapter's input. Default 0.05. */
  dropout?: number;
  /** Projections to adapt. Default all seven: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj. */
  targets?: LoraTarget[];
}

export interface FinetuneOptions {
  /** Folder of a Hugging Face Llama checkpoint (config.json, safetensors, tokenizer.json). Required. */
  model: string;
  /** Training JSONL: `{input, output, context?}` pairs from `prepare`, or pre-tokenized `{input_ids, labels}`. Required. */
  data: string;
  /** Validation JSONL (same kinds). Default none: no validation and no `best/`. */
  val?: string;
  /** Output folder for the adapter, best/, checkpoint/, metrics.jsonl, loss.svg. Required. */
  out: string;
  /** Passes over the data. Default 3 (the seed project's finding: more overfits). */
  epochs?: number;
  /** Peak learning rate. Default 2e-4. */
  lr?: number;
  /** LoRA settings; see LoraOptions for each default. */
  lora?: LoraOptions;
  /** Base weights of the seven projections: 'nf4' (QLoRA) or 'none' (fp32/bf16 as stored). Default 'nf4'. */
  quant?: 'nf4' | 'none';
  /** Most tokens in one micro-batch, padding included (rows × longest row). Default 4096. */
  batchTokens?: number;
  /** Longest example in tokens; longer prompts are cut from the left, longer answers skipped (and counted). Default 512. */
  maxSeqLen?: number;
  /** 'auto' takes CUDA when the addon has it and a GPU is present. Default 'auto'. */
  device?: 'auto' | Device;
  /** Continue from `out/checkpoint` when there is one (with the same settings); start fresh otherwise. Default false. */
  resume?: boolean;
  /** Called after every optimizer step and validation. Default none. */
  onProgress?: (p: TrainProgress) => void;
  /** Steps of linear warm-up. Default: from warmupRatio. */
  warmupSteps?: number;
  /** Warm-up as a fraction of all steps (rounded up), when warmupSteps is not given. Default 0.03. */
  warmupRatio?: number;
  /** Learning-rate decay after warm-up. Default 'cosine'. */
  schedule?: ScheduleKind;
  /** AdamW decoupled weight decay. Default 0. */
  weightDecay?: number;
  /** Clip the global gradient norm to this; 0 turns clipping off. Default 1. */
  maxGradNorm?: number;
  /** AdamW beta1. Default 0.9. */
  beta1?: number;
  /** AdamW beta2. Default 0.999. */
  beta2?: number;
  /** AdamW epsilon. Default 1e-8. */
  eps?: number;
  /** Micro-batches per optimizer step. Default 1. */
  gradAccum?: number;
  /** Seeds the data order, LoRA init and dropout. Default 42. */
  seed?: number;
  /** Also validate every N optimizer steps. Default 0 (only at epoch ends). */
  evalEvery?: number;
  /** Write a checkpoint every N optimizer steps (one is always written at each epoch end). Default 100. */
  checkpointEvery?: number;
  /** Appended to every answer: what the model learns to end with. Default ' DONE'. */
  stopMarker?: string;
  /** Training format: 'chat', 'plain' or 'auto' (chat when the tokenizer has a template). Default 'auto'. */
  format?: TrainFormat;
  /** Recompute activations in backward (gradient checkpointing). Default: true on CUDA, false on CPU. On CUDA
   *  each layer's attention activations are still kept where the card has a quarter of its memory to spare
   *  (the 3B at 8 × 512: 7.8 GiB instead of 6.0, a step 6 % faster; same gradients). */
  recompute?: boolean;
  /** CPU threads for the native core; 0 = all cores. Default 0. */
  threads?: number;
  /** Stops the run at the next step boundary after writing a checkpoint; the promise rejects with an AbortError. Default none. */
  signal?: AbortSignal;
  /** Stop after this many optimizer steps in total (a checkpoint is written; the schedule still spans all epochs, so `resume` continues the same run). Default none. */
  stopAfterSteps?: number;
  /** Folder of the tokenized-data cache; null turns it off. Default `<out>/.cache`. */
  cacheDir?: string | null;
  /** File system for every write (tests inject failures). Default node:fs/promises. */
  fs?: WriteFs;
  /**
   * Data-parallel training (docs/distributed.md): 'all' (every visible GPU) or a list of CUDA
   * device indices, one worker process each; or this process as one rank of a multi-host job,
   * `{ worldSize, rank, masterAddr, masterPort }` (a missing field is read from MIMIC_WORLD_SIZE,
   * MIMIC_RANK, MIMIC_MASTER_ADDR, MIMIC_MASTER_PORT). Each optimizer step's micro-batches are
   * split across the ranks, so the global batch — and the result — stay those of one device.
   * Default none: one device, this process.
   */
  devices?: 'all' | number[] | DistributedOptions;
  /** Data parallel on the CPU with this many worker processes (threads split among them). Default none. */
  workers?: number;
}

export interface TrainProgress {
  phase: 'train' | 'val';
  /** Optimizer steps done. */
  step: number;
  totalSteps: number;
  /** Fractional epochs done. */
  epoch: number;
  epochs: number;
  /** Loss of the last step (train) or of the validation (val). */
  loss: number;
  lr: number;
  tokensPerSec: number;
  elapsedSeconds: number;
  etaSeconds: number;
}

export interface TrainReport {
  /** Optimizer steps done (in total, over resumes). */
  steps: number;
  totalSteps: number;
  /** Fractional epochs done. */
  epochs: number;
  /** Non-padding tokens processed. */
  tokens: number;
  /** Unmasked (trained) tokens. */
  targetTokens: number;
  /** tokens / training seconds (validation and saving excluded). */
  tokensPerSec: number;
  /** Seconds of training, over resumes. */
  seconds: number;
  trainLoss: { step: number; epoch: number; loss: number }[];
  /** Validation losses; the first, at step 0, is the untrained model's. */
  valLoss: { step: number; epoch: number; loss: number }[];
  /** Epoch (fractional, as in valLoss) and loss of the best validation, or null without validation. */
  bestEpoch: number | null;
  bestValLoss: number | null;
  data: { train: DatasetStats; val?: DatasetStats };
  /** Pairs left out of training (answer longer than maxSeqLen, empty output, nothing to learn). */
  skipped: number;
  /** The step the run resumed from, or null. */
  resumedFrom: number | null;
  /** Set when the run stopped early on stopAfterSteps. */
  stopped: 'stopAfterSteps' | null;
  device: Device;
  quant: 'nf4' | 'none';
  format: 'chat' | 'plain';
  /** Ranks that trained (1 without data parallelism). */
  worldSize: number;
  paths: { out: string; adapter: string; best: string | null; checkpoint: string; metrics: string; plot: string };
}

/** Resolved options with every default applied. */
type Resolved = Required<Omit<FinetuneOptions, 'val' | 'onProgress' | 'warmupSteps' | 'signal' | 'stopAfterSteps' | 'recompute' | 'lora' | 'device' | 'fs' | 'devices' | 'workers'>> & {
  val?: string; onProgress?: FinetuneOptions['onProgress']; warmupSteps?: number; signal?: AbortSignal; stopAfterSteps?: number;
  recompute?: boolean; device: FinetuneOptions['device'] & string; lora: Required<LoraOptions>; fs: WriteFs;
};

function check(cond: boolean, msg: string): void {
  if (!cond) throw new Error(`mimic: ${msg}`);
}

export function resolveOptions(o: FinetuneOptions): Resolved {
  check(!!o && typeof o.model === 'string' && o.model !== '', 'finetune needs `model`: a model folder');
  check(typeof o.data === 'string' && o.data !== '', 'finetune needs `data`: a training JSONL');
  check(typeof o.out === 'string' && o.out !== '', 'finetune needs `out`: the folder to write the adapter to');
  const r: Resolved = {
    model: o.model, data: o.data, val: o.val, out: o.out,
    epochs: o.epochs ?? 3, lr: o.lr ?? 2e-4,
    lora: { r: o.lora?.r ?? 16, alpha: o.lora?.alpha ?? 32, dropout: o.lora?.dropout ?? 0.05, targets: o.lora?.targets ?? [...ALL_TARGETS] },
    quant: o.quant ?? 'nf4', batchTokens: o.batchTokens ?? 4096, maxSeqLen: o.maxSeqLen ?? FORMAT_DEFAULTS.maxSeqLen,
    device: o.device ?? 'auto', resume: o.resume ?? false, onProgress: o.onProgress,
    warmupSteps: o.warmupSteps, warmupRatio: o.warmupRatio ?? 0.03, schedule: o.schedule ?? 'cosine',
    weightDecay: o.weightDecay ?? 0, maxGradNorm: o.maxGradNorm ?? 1, beta1: o.beta1 ?? 0.9, beta2: o.beta2 ?? 0.999, eps: o.eps ?? 1e-8,
    gradAccum: o.gradAccum ?? 1, seed: o.seed ?? 42, evalEvery: o.evalEvery ?? 0, checkpointEvery: o.checkpointEvery ?? 100,
    stopMarker: o.stopMarker ?? FORMAT_DEFAULTS.stopMarker, format: o.format ?? 'auto', recompute: o.recompute, threads: o.threads ?? 0,
    signal: o.signal, stopAfterSteps: o.stopAfterSteps, cacheDir: o.cacheDir === undefined ? path.join(o.out, '.cache') : o.cacheDir,
    fs: o.fs ?? nodeFs,
  };
  const posInt = (v: number, name: string, min = 1) => check(Number.isInteger(v) && v >= min, `${name} must be a whole number ≥ ${min} (got ${v})`);
  posInt(r.epochs, 'epochs');
  check(Number.isFinite(r.lr) && r.lr > 0, `lr must be a number > 0 (got ${r.lr})`);
  check(['nf4', 'none'].includes(r.quant), `quant must be 'nf4' or 'none' (got ${r.quant})`);
  check(['auto', 'cpu', 'cuda'].includes(r.device), `device must be 'auto', 'cpu' or 'cuda' (got ${r.device})`);
  posInt(r.batchTokens, 'batchTokens');
  posInt(r.maxSeqLen, 'maxSeqLen', 2);
  check(r.lora.dropout >= 0 && r.lora.dropout < 1, `lora.dropout must be in [0, 1) (got ${r.lora.dropout})`);
  check(['cosine', 'linear', 'constant'].includes(r.schedule), `schedule must be 'cosine', 'linear' or 'constant' (got ${r.schedule})`);
  check(Number.isFinite(r.weightDecay) && r.weightDecay >= 0, `weightDecay must be ≥ 0 (got ${r.weightDecay})`);
  check(Number.isFinite(r.maxGradNorm) && r.maxGradNorm >= 0, `maxGradNorm must be ≥ 0 (got ${r.maxGradNorm})`);
  check(r.beta1 >= 0 && r.beta1 < 1 && r.beta2 >= 0 && r.beta2 < 1, 'beta1 and beta2 must be in [0, 1)');
  check(r.eps > 0, `eps must be > 0 (got ${r.eps})`);
  posInt(r.gradAccum, 'gradAccum');
  posInt(r.seed, 'seed', 0);
  posInt(r.evalEvery, 'evalEvery', 0);
  posInt(r.checkpointEvery, 'checkpointEvery', 0);
  if (r.stopAfterSteps !== undefined) posInt(r.stopAfterSteps, 'stopAfterSteps');
  if (r.warmupSteps !== undefined) posInt(r.warmupSteps, 'warmupSteps', 0);
  check(r.warmupRatio >= 0 && r.warmupRatio < 1, `warmupRatio must be in [0, 1) (got ${r.warmupRatio})`);
  check(typeof r.stopMarker === 'string', 'stopMarker must be a string');
  check(r.out !== r.model && path.resolve(r.out) !== path.resolve(r.model), 'out must not be the model folder');
  return r;
}

/** How a model is loaded (tests inject a fake; the default is the native addon). */
export type ModelLoader = (dir: string, options: { device: Device; quant: 'nf4' | 'none'; threads?: number }) => Promise<NativeModel>;

export interface FinetuneDeps {
  loadModel?: ModelLoader;
  /** Whether CUDA can be used (device 'auto'). */
  cudaAvailable?: () => boolean;
  /** Run as one rank of a data-parallel job (lib/train/distributed/). */
  dist?: DistContext;
}

async function hashFile(file: string | undefined): Promise<string | null> {
  if (!file) return null;
  return createHash('sha256').update(await readFile(file)).digest('hex').slice(0, 16);
}

/** Reads config.json's ids the tokenizer and padding need. */
export async function readSpecialIds(modelDir: string): Promise<{ eos: number[]; pad: number }> {
  const c = JSON.parse(await readFile(path.join(modelDir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const eos = Array.isArray(c.eos_token_id) ? (c.eos_token_id as number[]) : typeof c.eos_token_id === 'number' ? [c.eos_token_id] : [];
  const pad = typeof c.pad_token_id === 'number' ? c.pad_token_id : eos[0] ?? 0;
  return { eos, pad };
}

function emptyDataError(ds: Dataset, maxSeqLen: number): Error {
  const s = ds.stats.skipped;
  const why = [
    s.answerTooLong ? `${s.answerTooLong} answer(s) longer than maxSeqLen ${maxSeqLen} tokens (raise maxSeqLen)` : '',
    s.emptyOutput ? `${s.emptyOutput} with an empty output` : '',
    s.noTargets ? `${s.noTargets} with no unmasked label` : '',
  ].filter(Boolean).join(', ');
  return new Error(`mimic: no training examples in ${ds.file}: all ${ds.stats.lines} line(s) were skipped: ${why}`);
}

class AbortError extends Error {
  override name = 'AbortError';
  code = 'ABORT_ERR';
}

/** Token-weighted masked loss of a dataset under the trainer's current adapter (no dropout). */
export async function evaluateLoss(trainer: NativeTrainer, ds: Dataset, batchTokens: number, padId: number, dist?: DistContext): Promise<{ loss: number; tokens: number }> {
  const plan = planBatches(ds.examples.map((e) => e.ids.length), { batchTokens, shuffle: false });
  let sum = 0, tokens = 0;
  for (let i = 0; i < plan.length; i++) {
    if (dist && i % dist.worldSize !== dist.rank) continue; // data parallel: every rank a share, summed below
    const b = collate(ds.examples, plan[i], padId);
    const r = await trainer.evaluate(b.ids, b.labels, b.batch, b.seqLen);
    sum += r.lossSum;
    tokens += r.tokens;
  }
  if (dist) {
    const s = Float64Array.of(sum, tokens);
    await dist.comm.allReduceSum([s]);
    [sum, tokens] = s;
  }
  return { loss: tokens > 0 ? sum / tokens : NaN, tokens };
}

/** Fine-tunes `model` on `data`; see FinetuneOptions. Resolves with a TrainReport. */
export function finetune(options: FinetuneOptions): Promise<TrainReport> {
  if (options?.devices !== undefined || options?.workers !== undefined) return runDistributed(options);
  return finetuneWith(options, {});
}

/** finetune with injectable model loading (tests). */
export async function finetuneWith(options: FinetuneOptions, deps: FinetuneDeps): Promise<TrainReport> {
  const o = resolveOptions(options);
  const fs = o.fs;
  const dims: ModelDims = await readModelDims(o.model);
  const lora = { r: o.lora.r, alpha: o.lora.alpha, targets: [...o.lora.targets] };
  validateLoraSpec(lora, dims);

  const special = await readSpecialIds(o.model);
  const tok = await Tokenizer.load(o.model, special.eos);
  const format = resolveFormat(tok, o.format);
  const dsOpts = { format, stopMarker: o.stopMarker, maxSeqLen: o.maxSeqLen, cacheDir: o.cacheDir, modelDir: o.model };
  const dist = deps.dist;
  const writer = !dist || dist.rank === 0; // rank 0 alone writes checkpoints, metrics, plot and adapters
  if (dist && dist.rank > 0) await dist.comm.barrier(); // rank 0 tokenizes first and fills the cache
  const train = await loadDataset(o.data, tok, dsOpts);
  if (train.examples.length === 0) throw emptyDataError(train, o.maxSeqLen);
  const val = o.val ? await loadDataset(o.val, tok, dsOpts) : undefined;
  if (val && val.examples.length === 0) throw emptyDataError(val, o.maxSeqLen);
  if (dist && dist.rank === 0) await dist.comm.barrier();

  const lengths = train.examples.map((e) => e.ids.length);
  const plans: number[][][] = [];
  const planFor = (epoch: number) => (plans[epoch] ??= planBatches(lengths, { batchTokens: o.batchTokens, seed: o.seed, epoch }));
  const batchesPerEpoch = planFor(0).length; // the same for every epoch (the packing depends only on the lengths)
  const stepsPerEpoch = Math.ceil(batchesPerEpoch / o.gradAccum);
  const totalSteps = stepsPerEpoch * o.epochs;
  const warmup = resolveWarmup(totalSteps, o.warmupSteps, o.warmupRatio);

  const settings: ResumeSettings = {
    model: path.resolve(o.model), modelConfig: await hashFile(path.join(o.model, 'config.json')),
    data: await hashFile(o.data), val: await hashFile(o.val), epochs: o.epochs, lr: o.lr,
    r: lora.r, alpha: lora.alpha, dropout: o.lora.dropout, targets: lora.targets, quant: o.quant, batchTokens: o.batchTokens,
    maxSeqLen: o.maxSeqLen, warmup, schedule: o.schedule, weightDecay: o.weightDecay, maxGradNorm: o.maxGradNorm,
    beta1: o.beta1, beta2: o.beta2, eps: o.eps, gradAccum: o.gradAccum, seed: o.seed, evalEvery: o.evalEvery,
    stopMarker: o.stopMarker, format,
  };

  const paths = {
    out: o.out, adapter: o.out, best: o.val ? path.join(o.out, 'best') : null, checkpoint: path.join(o.out, 'checkpoint'),
    metrics: path.join(o.out, 'metrics.jsonl'), plot: path.join(o.out, 'loss.svg'),
  };
  let ckpt = o.resume && writer ? await readCheckpoint(paths.checkpoint) : undefined;
  if (dist) {
    // Rank 0's settings and checkpoint are everyone's: the same data and options everywhere, and
    // no shared file system needed for resume.
    const bytes = await dist.comm.broadcast(writer
      ? encodeJsonAndTensors({ settings, ckpt: ckpt ? { dir: ckpt.dir, meta: ckpt.meta, step: ckpt.state.step, rng: Array.from(ckpt.state.rng) } : null }, ckpt?.state.tensors)
      : undefined);
    type Head = { settings: ResumeSettings; ckpt: { dir: string; meta: CheckpointMeta; step: number; rng: number[] } | null };
    const got = decodeJsonAndTensors<Head>(bytes);
    const diff = settingsDiff(got.json.settings, { ...settings, model: got.json.settings.model });
    if (diff.length) throw new Error(`mimic: rank ${dist.rank} does not train what rank 0 trains: ${diff.join('; ')}. Every rank needs the same data files and options.`);
    if (!writer && got.json.ckpt) {
      const c = got.json.ckpt;
      ckpt = { dir: c.dir, meta: c.meta, state: { step: c.step, rng: Uint32Array.from(c.rng), tensors: got.tensors } } as typeof ckpt;
    }
  }
  if (ckpt) {
    const diff = settingsDiff(ckpt.meta.settings, settings);
    if (diff.length) {
      throw new Error(`mimic: cannot resume from ${ckpt.dir}: these settings differ from the run that wrote it: ${diff.join('; ')}. ` +
        'Use the same settings, or start over without resume.');
    }
  }

  const cuda = deps.cudaAvailable ?? (() => native().cudaAvailable());
  const device: Device = o.device === 'auto' ? (cuda() ? 'cuda' : 'cpu') : o.device;
  const loadModel: ModelLoader = deps.loadModel ?? ((dir, opts) => native().loadModel(dir, opts));
  const model = await loadModel(o.model, { device, quant: o.quant, threads: o.threads });
  let trainer: NativeTrainer | undefined;
  try {
    trainer = model.createTrainer({ lora: { ...lora, dropout: o.lora.dropout }, seed: o.seed, recompute: o.recompute ?? device === 'cuda' });
    const t = trainer;
    if (dist?.attach) await dist.attach(t);
    const metrics = new MetricsLog(o.out, fs);
    const baseModel = path.basename(path.resolve(o.model));
    const spec = { ...lora, dropout: o.lora.dropout };

    const meta: CheckpointMeta = ckpt ? structuredClone(ckpt.meta) : {
      version: CHECKPOINT_VERSION, settings, step: 0, epoch: 0, batchInEpoch: 0, rng: [], tokens: 0, targetTokens: 0, seconds: 0,
      train: [], val: [], best: null, finished: false,
    };
    if (ckpt) t.setState(ckpt.state);
    else if (writer) await rm(paths.best ?? path.join(o.out, 'best'), { recursive: true, force: true }); // a stale best/ of an earlier run
    if (writer) await metrics.reset([...meta.train, ...meta.val].sort((a, b) => a.step - b.step || (a.type === 'train' ? -1 : 1)));

    const epochAt = (step: number) => step / stepsPerEpoch;
    const drawPlot = async () => { if (writer) await writeFileAtomic(paths.plot, lossSvg(meta.train, meta.val, { stepsPerEpoch, title: `loss — ${baseModel}` }), fs); };
    const saveCheckpoint = async () => {
      if (!writer) return;
      const state = t.getState();
      await writeCheckpoint(paths.checkpoint, meta, state, { spec, tensors: t.adapter(), dims, baseModel }, fs);
    };
    const started = Date.now();
    const secondsBefore = meta.seconds;
    let trainSeconds = 0; // this session's
    let stepsThisSession = 0;

    const validate = async () => {
      if (!val) return;
      const r = await evaluateLoss(t, val, o.batchTokens, special.pad, dist);
      const rec: ValRecord = { type: 'val', step: meta.step, epoch: epochAt(meta.step), loss: r.loss, tokens: r.tokens };
      meta.val.push(rec);
      if (writer) await metrics.append(rec);
      if (meta.step > 0 && (meta.best === null || r.loss < meta.best.loss)) {
        meta.best = { loss: r.loss, step: meta.step, epoch: rec.epoch };
        if (writer) await saveAdapter(paths.best!, spec, t.adapter(), dims, { baseModel, fs });
      }
      if (writer) o.onProgress?.({ phase: 'val', step: meta.step, totalSteps, epoch: rec.epoch, epochs: o.epochs, loss: r.loss,
        lr: learningRate(Math.max(0, meta.step - 1), { lr: o.lr, totalSteps, warmupSteps: warmup, schedule: o.schedule }),
        tokensPerSec: trainSeconds > 0 ? meta.tokens / (secondsBefore + trainSeconds) : 0,
        elapsedSeconds: (Date.now() - started) / 1000, etaSeconds: eta() });
    };
    const eta = () => stepsThisSession > 0 ? (Date.now() - started) / 1000 / stepsThisSession * (totalSteps - meta.step) : NaN;

    if (!ckpt && val) await validate(); // the untrained model's loss: where the curve starts
    const resumedFrom = ckpt ? ckpt.meta.step : null;
    let stopped: TrainReport['stopped'] = null;
    let stopAgreed = false; // data parallel: every rank stops at the same step boundary (see reduceStep)

    outer:
    while (!meta.finished && meta.epoch < o.epochs) {
      const plan = planFor(meta.epoch);
      while (meta.batchInEpoch < plan.length) {
        if (dist ? stopAgreed : o.signal?.aborted) {
          await saveCheckpoint();
          throw new AbortError(`mimic: training stopped at step ${meta.step}/${totalSteps}; the checkpoint in ${paths.checkpoint} continues it (resume: true / --resume)`);
        }
        if (o.stopAfterSteps !== undefined && meta.step >= o.stopAfterSteps) {
          stopped = 'stopAfterSteps';
          await saveCheckpoint();
          break outer;
        }
        const t0 = performance.now();
        const micro = plan.slice(meta.batchInEpoch, meta.batchInEpoch + o.gradAccum);
        let lossSum = 0, targets = 0, tokens = 0;
        // each micro-batch's dropout is seeded by its place in the run (step, index in the step),
        // never by how many this rank ran before: data-parallel ranks draw one device's masks
        const shards = dist ? shardStepKeyed(micro, lengths, dist.worldSize)[dist.rank] : micro.map((idx, j) => ({ idx, micro: j, part: 0 }));
        for (const { idx, micro: j, part } of shards) {
          const b = collate(train.examples, idx, special.pad);
          const r = await t.accumulate(b.ids, b.labels, b.batch, b.seqLen, { step: meta.step, micro: j, part });
          lossSum += r.lossSum;
          targets += r.tokens;
          for (const i of idx) tokens += train.examples[i].ids.length;
        }
        if (dist) { // the gradients and the sums become global: gradScale below is 1 / (all ranks' targets)
          const g = await dist.reduceStep(t, { lossSum, targets, tokens, stop: o.signal?.aborted ? 1 : 0 });
          ({ lossSum, targets, tokens } = g);
          stopAgreed = g.stop > 0;
        }
        const lr = learningRate(meta.step, { lr: o.lr, totalSteps, warmupSteps: warmup, schedule: o.schedule });
        const { gradNorm } = await t.step({ lr, beta1: o.beta1, beta2: o.beta2, eps: o.eps, weightDecay: o.weightDecay,
          maxGradNorm: o.maxGradNorm, gradScale: targets > 0 ? 1 / targets : 0 });
        const dt = (performance.now() - t0) / 1000;
        trainSeconds += dt;
        stepsThisSession++;
        meta.step++;
        meta.batchInEpoch += micro.length;
        meta.tokens += tokens;
        meta.targetTokens += targets;
        meta.seconds = secondsBefore + trainSeconds;
        const loss = targets > 0 ? lossSum / targets : NaN;
        if (!Number.isFinite(loss) && targets > 0) {
          throw new Error(`mimic: the loss became ${loss} at step ${meta.step}; lower lr (now ${o.lr}) or check the data`);
        }
        const rec: TrainRecord = { type: 'train', step: meta.step, epoch: epochAt(meta.step), loss, lr, gradNorm, tokens: targets,
          tokensPerSec: tokens / dt, time: (Date.now() - started) / 1000 };
        meta.train.push(rec);
        if (writer) await metrics.append(rec);
        if (writer) o.onProgress?.({ phase: 'train', step: meta.step, totalSteps, epoch: rec.epoch, epochs: o.epochs, loss, lr,
          tokensPerSec: meta.tokens / meta.seconds, elapsedSeconds: (Date.now() - started) / 1000, etaSeconds: eta() });
        const epochEnd = meta.batchInEpoch >= plan.length;
        if (!epochEnd && o.evalEvery > 0 && meta.step % o.evalEvery === 0) { await validate(); await drawPlot(); }
        if (epochEnd) {
          meta.epoch++;
          meta.batchInEpoch = 0;
          await validate();
          if (meta.epoch >= o.epochs) meta.finished = true;
          await drawPlot();
          await saveCheckpoint();
          break;
        } else if (o.checkpointEvery > 0 && meta.step % o.checkpointEvery === 0) {
          await saveCheckpoint();
        }
      }
    }

    if (!stopped && writer) {
      await saveAdapter(o.out, spec, t.adapter(), dims, { baseModel, fs });
    }
    await drawPlot();
    const valid = meta.val;
    return {
      steps: meta.step, totalSteps, epochs: epochAt(meta.step), tokens: meta.tokens, targetTokens: meta.targetTokens,
      tokensPerSec: meta.seconds > 0 ? meta.tokens / meta.seconds : 0, seconds: meta.seconds,
      trainLoss: meta.train.map(({ step, epoch, loss }) => ({ step, epoch, loss })),
      valLoss: valid.map(({ step, epoch, loss }) => ({ step, epoch, loss })),
      bestEpoch: meta.best?.epoch ?? null, bestValLoss: meta.best?.loss ?? null,
      data: val ? { train: train.stats, val: val.stats } : { train: train.stats },
      skipped: Object.values(train.stats.skipped).reduce((a, b) => a + b, 0),
      resumedFrom, stopped, device, quant: o.quant, format, worldSize: dist?.worldSize ?? 1,
      paths: { ...paths, best: meta.best ? paths.best : null },
    };
  } finally {
    trainer?.dispose();
    model.dispose();
  }
}

/** Removes a run's outputs (adapter, best/, checkpoint/, metrics, plot, cache) — for starting over. */
export async function cleanRun(out: string): Promise<void> {
  for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'best', 'checkpoint', 'checkpoint.old', 'metrics.jsonl', 'loss.svg']) {
    await rm(path.join(out, f), { recursive: true, force: true });
  }
}
