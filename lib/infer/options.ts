/** Generation options, their defaults and their validation (shared by the API, the server and the CLI). */
import { invalid } from './errors.ts';

export type StopReason = 'stop' | 'eos' | 'length' | 'abort';

export interface SamplingOptions {
  /** Softmax temperature; 0 is greedy (argmax). Default 0.7. */
  temperature?: number;
  /** Keep only the k most likely tokens; 0 turns it off. Default 40. */
  topK?: number;
  /** Nucleus sampling: the smallest set of tokens whose probability reaches topP; 1 turns it off. Default 0.9. */
  topP?: number;
  /** Divides positive logits (multiplies negative ones) of tokens already in the prompt or output, as transformers does; 1 is off. Default 1. */
  repetitionPenalty?: number;
  /** RNG seed (integer ≥ 0) for a reproducible draw. Default: a random seed per call. */
  seed?: number;
}

export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate (the end token not included). Also capped by the model's context. Default 256. */
  maxTokens?: number;
  /**
   * Stop strings: generation ends when the output contains one; it and what follows are cut from
   * `text`. They may span several tokens. Default `['DONE']` (the end marker of mimic's training
   * format); pass `[]` for none.
   */
  stop?: string | string[];
  /**
   * Called with each piece of final text as it is decoded: never half a character and never the
   * start of a stop string that might still complete. The pieces concatenate to `text`. Default: none.
   */
  onToken?: (text: string) => void;
  /** Leave special tokens the model generates mid-reply (`<|start_header_id|>`, …) out of `text`, as vLLM and transformers' pipelines do. Default true. */
  skipSpecialTokens?: boolean;
  /** Aborting ends the generation at the next token with `stopReason: 'abort'` (no error is thrown). Default: none. */
  signal?: AbortSignal;
  /**
   * Fail at once with `InferError` code `EQUEUEFULL` when this many generations are already waiting
   * for a slot of the model's scheduler (the server uses it to answer 429). Default Infinity.
   */
  maxQueue?: number;
}

export interface GenerateResult {
  /** The generated text, stop string and what followed it removed. */
  text: string;
  /** Generated token ids, in order (the tokens of a matched stop string included; the end id excluded). */
  tokens: number[];
  /** 'stop': a stop string matched; 'eos': the model emitted an end id; 'length': maxTokens or the context was reached; 'abort': the signal aborted. */
  stopReason: StopReason;
  usage: {
    promptTokens: number;
    /** Tokens the model generated, the end id included when there was one. */
    completionTokens: number;
  };
}

export const GENERATE_DEFAULTS = {
  maxTokens: 256,
  temperature: 0.7,
  topK: 40,
  topP: 0.9,
  repetitionPenalty: 1,
  stop: ['DONE'] as string[],
} as const;

export interface ResolvedGenerateOptions {
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  repetitionPenalty: number;
  seed: number | undefined;
  stop: string[];
  skipSpecialTokens: boolean;
}

const num = (name: string, v: unknown, ok: (x: number) => boolean, what: string): number => {
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw invalid(`${name} must be ${what} (got ${JSON.stringify(v)})`);
  return v;
};

/** Applies defaults and checks every option; throws InferError EINVAL with a message naming the option. */
export function resolveGenerateOptions(o: GenerateOptions = {}): ResolvedGenerateOptions {
  if (o === null || typeof o !== 'object') throw invalid('generate options must be an object');
  const d = GENERATE_DEFAULTS;
  const maxTokens = num('maxTokens', o.maxTokens ?? d.maxTokens, (x) => Number.isInteger(x) && x >= 1, 'an integer ≥ 1');
  const temperature = num('temperature', o.temperature ?? d.temperature, (x) => x >= 0, 'a number ≥ 0');
  const topK = num('topK', o.topK ?? d.topK, (x) => Number.isInteger(x) && x >= 0, 'an integer ≥ 0 (0 = off)');
  const topP = num('topP', o.topP ?? d.topP, (x) => x > 0 && x <= 1, 'a number in (0, 1]');
  const repetitionPenalty = num('repetitionPenalty', o.repetitionPenalty ?? d.repetitionPenalty, (x) => x > 0, 'a number > 0');
  const seed = o.seed === undefined ? undefined
    : num('seed', o.seed, (x) => Number.isSafeInteger(x) && x >= 0, 'an integer ≥ 0');
  const stopIn = o.stop ?? d.stop;
  const stop = typeof stopIn === 'string' ? [stopIn] : stopIn;
  if (!Array.isArray(stop) || stop.some((s) => typeof s !== 'string')) throw invalid('stop must be a string or an array of strings');
  if (o.skipSpecialTokens !== undefined && typeof o.skipSpecialTokens !== 'boolean') throw invalid('skipSpecialTokens must be a boolean');
  if (o.onToken !== undefined && typeof o.onToken !== 'function') throw invalid('onToken must be a function');
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw invalid('signal must be an AbortSignal');
  if (o.maxQueue !== undefined && !(typeof o.maxQueue === 'number' && o.maxQueue >= 0 && (Number.isInteger(o.maxQueue) || o.maxQueue === Infinity))) {
    throw invalid(`maxQueue must be an integer ≥ 0 or Infinity (got ${JSON.stringify(o.maxQueue)})`);
  }
  return { maxTokens, temperature, topK, topP, repetitionPenalty, seed, stop: stop.filter((s) => s.length > 0), skipSpecialTokens: o.skipSpecialTokens ?? true };
}
