/**
 * metrics.jsonl: one JSON object a line, next to the adapter: `{"type": "train", step, epoch,
 * loss, lr, gradNorm, tokens, tokensPerSec, time}` for each optimizer step and `{"type": "val",
 * step, epoch, loss, tokens}` for each validation. Rewritten from the run's history on resume so
 * that steps replayed after a crash are not listed twice.
 */
import { appendFile } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic, writeError, nodeFs, type WriteFs } from './atomic.ts';

export interface TrainRecord {
  type: 'train';
  /** Optimizer steps done (1-based). */
  step: number;
  /** Epochs done, fractional. */
  epoch: number;
  /** Token-weighted mean masked loss of the step's batch. */
  loss: number;
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Unmasked tokens of the step. */
  tokens: number;
  /** Tokens (prompt + answer, no padding) per second over the step. */
  tokensPerSec: number;
  /** Seconds since the run started (this process). */
  time: number;
}

export interface ValRecord {
  type: 'val';
  step: number;
  epoch: number;
  loss: number;
  tokens: number;
}

export type MetricRecord = TrainRecord | ValRecord;

export class MetricsLog {
  readonly file: string;
  constructor(dir: string, private readonly fs: WriteFs = nodeFs) { this.file = path.join(dir, 'metrics.jsonl'); }

  /** Replaces the file with `records` (at the start of a run or a resume). */
  async reset(records: MetricRecord[]): Promise<void> {
    await writeFileAtomic(this.file, records.map((r) => JSON.stringify(r) + '\n').join(''), this.fs);
  }

  async append(r: MetricRecord): Promise<void> {
    try {
      await appendFile(this.file, JSON.stringify(r) + '\n');
    } catch (e) {
      throw writeError(e, this.file);
    }
  }
}
