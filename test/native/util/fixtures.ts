/** Paths of the reference fixtures and the expected tensors, shared by the native tests. */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { readSafetensors, type Tensor } from './safetensors.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
export const refDir = path.resolve(here, '../../fixtures/ref');
export const modelDir = path.join(refDir, 'tiny-llama');
export const adapterFile = path.join(modelDir, 'lora', 'adapter_model.safetensors');
export const expectedJson = JSON.parse(readFileSync(path.join(refDir, 'expected.json'), 'utf8'));

let expected: Record<string, Tensor> | undefined;
export function expectedTensors(): Record<string, Tensor> {
  expected ??= readSafetensors(path.join(refDir, 'expected.safetensors'));
  return expected;
}

/** max |a − b| / max |b| (normwise relative error). */
export function maxRelErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

/** max over elements of |a − b| / (|b| + atol): the elementwise view, for reporting. */
export function maxElemRelErr(a: ArrayLike<number>, b: ArrayLike<number>, atol = 1e-3): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]) / (Math.abs(b[i]) + atol));
  return m;
}
