/**
 * Flag parsers shared by every `mimic` subcommand: each turns the flag's text into a number or
 * throws commander's InvalidArgumentError, whose message commander prints with the usage.
 */
import { InvalidArgumentError } from 'commander';

const parse = (v: string) => (v.trim() === '' ? NaN : Number(v));

/** A whole number ≥ min. */
export const intArg = (name: string, min = 0) => (v: string) => {
  const x = parse(v);
  if (!Number.isInteger(x) || x < min) throw new InvalidArgumentError(`${name} must be a whole number ≥ ${min}`);
  return x;
};

/** A finite number for which ok(x) holds; `what` completes "NAME must be …". */
export const numArg = (name: string, ok: (x: number) => boolean, what: string) => (v: string) => {
  const x = parse(v);
  if (!Number.isFinite(x) || !ok(x)) throw new InvalidArgumentError(`${name} must be ${what}`);
  return x;
};

/** A number in [lo, hi] — or [lo, hi) when `openHigh`. */
export const rangeArg = (name: string, lo = 0, hi = Infinity, openHigh = false) =>
  numArg(name, (x) => x >= lo && (openHigh ? x < hi : x <= hi), `a number in [${lo}, ${hi}${openHigh ? ')' : ']'}`);
