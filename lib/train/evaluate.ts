/**
 * `evaluate()`: the masked loss of a JSONL file under a model (and optionally an adapter): the
 * mean cross-entropy over every unmasked token of the file (token-weighted, as transformers
 * computes it over one batch), with the same format and masking as training.
 */
import path from 'node:path';
import { native, type Device } from '../native.ts';
import { Tokenizer } from '../tokenize/tokenizer.ts';
import { loadDataset, type DatasetStats } from '../tokenize/dataset.ts';
import { FORMAT_DEFAULTS, resolveFormat, type TrainFormat } from '../tokenize/format.ts';
import { loadAdapter, readModelDims } from './adapter.ts';
import { evaluateLoss, readSpecialIds, type FinetuneDeps, type ModelLoader } from './finetune.ts';

export interface EvaluateOptions {
  /** Model folder. Required. */
  model: string;
  /** PEFT adapter folder to apply. Default none (the base model). */
  adapter?: string;
  /** JSONL of pairs or pre-tokenized examples. Required. */
  data: string;
  /** Default 'auto'. */
  device?: 'auto' | Device;
  /** Default 'nf4'. */
  quant?: 'nf4' | 'none';
  /** Most tokens per batch, padding included. Default 4096. */
  batchTokens?: number;
  /** Default 512 (as in training). */
  maxSeqLen?: number;
  /** Default 'auto'. */
  format?: TrainFormat;
  /** Default ' DONE'. */
  stopMarker?: string;
  /** CPU threads; 0 = all cores. Default 0. */
  threads?: number;
}

export interface EvaluateReport {
  /** Mean masked loss over all unmasked tokens. */
  loss: number;
  /** Unmasked tokens scored. */
  tokens: number;
  /** Perplexity, exp(loss). */
  perplexity: number;
  data: DatasetStats;
  device: Device;
}

export async function evaluate(options: EvaluateOptions, deps: FinetuneDeps = {}): Promise<EvaluateReport> {
  if (!options?.model) throw new Error('mimic: evaluate needs `model`: a model folder');
  if (!options.data) throw new Error('mimic: evaluate needs `data`: a JSONL file');
  const dims = await readModelDims(options.model);
  const adapter = options.adapter ? await loadAdapter(options.adapter, dims) : undefined;
  const special = await readSpecialIds(options.model);
  const tok = await Tokenizer.load(options.model, special.eos);
  const format = resolveFormat(tok, options.format);
  const ds = await loadDataset(options.data, tok, { format, stopMarker: options.stopMarker ?? FORMAT_DEFAULTS.stopMarker, maxSeqLen: options.maxSeqLen ?? FORMAT_DEFAULTS.maxSeqLen });
  if (ds.examples.length === 0) throw new Error(`mimic: nothing to evaluate in ${ds.file}: every line was skipped (${JSON.stringify(ds.stats.skipped)})`);
  const cuda = deps.cudaAvailable ?? (() => native().cudaAvailable());
  const device: Device = (options.device ?? 'auto') === 'auto' ? (cuda() ? 'cuda' : 'cpu') : options.device as Device;
  const load: ModelLoader = deps.loadModel ?? ((dir, o) => native().loadModel(dir, o));
  const model = await load(path.resolve(options.model), { device, quant: options.quant ?? 'nf4', threads: options.threads ?? 0 });
  try {
    // A trainer scores batches; without an adapter, a rank-1 LoRA with B = 0 leaves the base model unchanged.
    const trainer = adapter
      ? model.createTrainer({ lora: { ...adapter.spec, dropout: 0 }, seed: 0, recompute: false, init: adapter.tensors })
      : model.createTrainer({ lora: { r: 1, alpha: 1, targets: ['q_proj'], dropout: 0 }, seed: 0, recompute: false });
    try {
      const r = await evaluateLoss(trainer, ds, options.batchTokens ?? 4096, special.pad);
      return { loss: r.loss, tokens: r.tokens, perplexity: Math.exp(r.loss), data: ds.stats, device };
    } finally {
      trainer.dispose();
    }
  } finally {
    model.dispose();
  }
}
