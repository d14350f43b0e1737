/**
 * Learning-rate schedules, as transformers' get_{cosine,linear,constant}_schedule_with_warmup:
 * the rate of optimizer step `step` (0-based) rises linearly from 0 over `warmupSteps`, then
 * decays to 0 at `totalSteps` along a half cosine or a straight line (or stays constant).
 */

export type ScheduleKind = 'cosine' | 'linear' | 'constant';

export interface ScheduleOptions {
  /** Peak learning rate. */
  lr: number;
  /** Optimizer steps of the whole run. */
  totalSteps: number;
  /** Steps of linear warm-up from 0. Default 0. */
  warmupSteps?: number;
  /** Shape after warm-up. Default 'cosine'. */
  schedule?: ScheduleKind;
}

/** The learning rate of the 0-based optimizer step `step`. */
export function learningRate(step: number, o: ScheduleOptions): number {
  const warm = o.warmupSteps ?? 0;
  if (step < warm) return o.lr * step / Math.max(1, warm);
  const kind = o.schedule ?? 'cosine';
  if (kind === 'constant') return o.lr;
  const progress = (step - warm) / Math.max(1, o.totalSteps - warm);
  if (kind === 'linear') return o.lr * Math.max(0, 1 - progress);
  return o.lr * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
}

/** Warm-up steps from an explicit count or a ratio of the total (rounded up, as transformers does). */
export function warmupSteps(totalSteps: number, steps?: number, ratio?: number): number {
  if (steps !== undefined) {
    if (!Number.isInteger(steps) || steps < 0) throw new Error(`mimic: warmupSteps must be a whole number ≥ 0 (got ${steps})`);
    return steps;
  }
  const r = ratio ?? 0;
  if (!(r >= 0 && r < 1)) throw new Error(`mimic: warmupRatio must be in [0, 1) (got ${ratio})`);
  return Math.ceil(totalSteps * r);
}
