/** Shared setup of the training tests: the fixture batch, the PEFT adapter as `init`, error norms. */
import { native, type NativeModel, type NativeStepOptions, type NativeTrainer } from '../../../lib/native.ts';
import { adapterFile, expectedTensors } from '../util/fixtures.ts';
import { readSafetensors } from '../util/safetensors.ts';

export const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
export const PREFIX = 'base_model.model.';

export const exp = expectedTensors();
export const ids = exp.input_ids.data as Int32Array;
export const labels = exp.labels.data as Int32Array;
export const [B, T] = exp.input_ids.shape;

/** The fixture's PEFT adapter (r 4, alpha 8) under PEFT names. */
export function fixtureAdapter(): Record<string, Float32Array> {
  const out: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(readSafetensors(adapterFile))) out[k] = v.data as Float32Array;
  return out;
}

/** A trainer with the fixture adapter as init (dropout 0 unless given). */
export function fixtureTrainer(model: NativeModel, opts: { recompute?: boolean; dropout?: number; seed?: number } = {}): NativeTrainer {
  return model.createTrainer({
    lora: { r: 4, alpha: 8, dropout: opts.dropout ?? 0, targets: TARGETS },
    seed: opts.seed ?? 1, recompute: opts.recompute ?? false, init: fixtureAdapter(),
  });
}

/** torch defaults, lr 1e-2 and no weight decay as the fixture's AdamW step. */
export function stepOptions(gradScale: number, extra: Partial<NativeStepOptions> = {}): NativeStepOptions {
  return { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, maxGradNorm: 0, gradScale, ...extra };
}

/** The expected tensor's key for a PEFT name: grad.model.layers.0.self_attn.q_proj.lora_A.weight. */
export function expectedKey(prefix: 'grad' | 'after_adamw', peftName: string): string {
  return `${prefix}.${peftName.slice(PREFIX.length)}`;
}

/** ‖a − b‖₂ / ‖b‖₂ */
export function normRelErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) { num += (a[i] - b[i]) ** 2; den += b[i] ** 2; }
  return Math.sqrt(num / den);
}

/** max |a − b| */
export function maxAbsErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function scaled(a: Float32Array, s: number): Float64Array {
  return Float64Array.from(a, (x) => x * s);
}

export async function loadTiny(quant: 'none' | 'nf4' = 'none'): Promise<NativeModel> {
  const { modelDir } = await import('../util/fixtures.ts');
  return native().loadModel(modelDir, { device: 'cpu', quant, threads: 2 });
}
