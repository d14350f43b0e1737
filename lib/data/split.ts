/**
 * Deterministic train/validation split: each example is ranked by a hash of its content
 * (FNV-1a, 32 bit) and the lowest `round(n × fraction)` go to validation (at least one when
 * the fraction is above 0 and there are two or more examples). The same data always splits
 * the same way, whatever order it came in; both halves keep the input order.
 */
import type { Example } from './types.ts'

/** FNV-1a over the UTF-16 code units of a string. */
export function fnv1a(s: string, h = 0x811c9dc5): number {
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

const keyOf = (e: Example): string =>
  e.input + '\u0000' + e.output + (e.context ? '\u0000' + e.context.map((t) => t.role + ':' + t.content).join('\u0001') : '')

/** Number of validation examples for `n` examples. */
export function valCount(n: number, fraction: number): number {
  if (fraction <= 0 || n < 2) return 0
  return Math.min(n - 1, Math.max(1, Math.round(n * fraction)))
}

/** Split examples into train and validation. */
export function split(examples: Example[], fraction: number): { train: Example[]; val: Example[] } {
  const k = valCount(examples.length, fraction)
  if (k === 0) return { train: examples, val: [] }
  const ranked = examples.map((e, i) => ({ h: fnv1a(keyOf(e)), i }))
  ranked.sort((a, b) => a.h - b.h || a.i - b.i)
  const isVal = new Uint8Array(examples.length)
  for (let j = 0; j < k; j++) isVal[ranked[j].i] = 1
  const train: Example[] = []
  const val: Example[] = []
  examples.forEach((e, i) => (isVal[i] ? val : train).push(e))
  return { train, val }
}
