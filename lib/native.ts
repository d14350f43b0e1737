/**
 * The native addon's TypeScript face. Every class and function the C++ addon exports is typed
 * here; `test/native/addon-types.test.ts` checks this list against the loaded addon so the two
 * cannot drift apart. Slow calls return Promises (node-addon-api AsyncWorkers) and never block
 * the event loop. Errors are thrown as `Error` with a `code` (see native/core/error.h).
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export type Device = 'cpu' | 'cuda';

/** Model hyper-parameters as read from config.json (both rope_theta+rope_scaling and rope_parameters). */
export interface NativeModelConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  maxPosition: number;
  rmsNormEps: number;
  tieWordEmbeddings: boolean;
  ropeTheta: number;
  ropeType: string;
  bosTokenId: number;
  eosTokenIds: number[];
}

export interface NativeLoadOptions {
  device: Device;
  quant: 'nf4' | 'none';
  /** CPU threads; 0 = all cores. */
  threads?: number;
}

export interface NativeSamplingOptions {
  temperature: number;
  topK: number;
  topP: number;
  repetitionPenalty: number;
}

/** One sequence's KV cache and RNG: a generation in progress. */
export interface NativeSession {
  /** Tokens in the cache. */
  readonly length: number;
  readonly maxLength: number;
  /**
   * Appends `ids` (a prompt, or the last sampled token) to the cache and samples the next token
   * with `sampling`; `history` is what the repetition penalty looks at (prompt + generated ids).
   */
  next(ids: Int32Array, sampling: NativeSamplingOptions, history: Int32Array): Promise<number>;
  /** Clears the cache; the RNG keeps its state. */
  reset(): void;
}

export interface NativeLoraSpec {
  r: number;
  alpha: number;
  /** Short projection names: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj. */
  targets: string[];
}

export interface NativeModel {
  readonly config: NativeModelConfig;
  readonly device: Device;
  readonly quant: 'nf4' | 'none';
  /** Logits of one sequence without a cache, row-major [ids.length × vocab]. */
  logits(ids: Int32Array): Promise<Float32Array>;
  /** Starts a generation with its own KV cache of maxLength tokens, seeded RNG. */
  createSession(maxLength: number, seed: number): NativeSession;
  /** Attaches LoRA adapters: tensors by PEFT name ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"). */
  setLora(spec: NativeLoraSpec, tensors: Record<string, Float32Array>): void;
  /** Current LoRA tensors under PEFT names (copies). Empty when no adapter is attached. */
  getLora(): Record<string, Float32Array>;
  clearLora(): void;
  /** Frees the weights now instead of at garbage collection. */
  dispose(): void;
}

export interface NativeAddon {
  readonly version: string;
  /** True when the addon was built with the CUDA backend and a CUDA device is present. */
  cudaAvailable(): boolean;
  loadModel(dir: string, options: NativeLoadOptions): Promise<NativeModel>;
}

let cached: NativeAddon | undefined;

/** Loads build/Release/mimic.node once. Throws an Error that says how to build it when absent. */
export function native(): NativeAddon {
  if (cached) return cached;
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  const candidates = [
    process.env.MIMIC_ADDON,
    path.join(root, 'build', 'Release', 'mimic.node'),
    path.join(root, 'build', 'Debug', 'mimic.node'),
  ].filter((p): p is string => !!p);
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new Error(`mimic: the native addon is not built (looked in ${candidates.join(', ')}). ` +
      'Run `npm run build:native` (needs a C++17 compiler and CMake or Python).');
  }
  const require = createRequire(import.meta.url);
  cached = require(found) as NativeAddon;
  return cached;
}
