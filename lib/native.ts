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
   * On the GPU the step for the returned token is launched before the promise resolves, so that
   * the next `next([token])` only waits for the GPU (feeding anything else, or reset(), simply
   * discards that step; the tokens are the same either way). `MIMIC_RUN_AHEAD=0` turns it off.
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

export interface NativeTrainerOptions {
  lora: NativeLoraSpec & {
    /** LoRA dropout on the adapter's input (PEFT's lora_dropout). */
    dropout: number;
  };
  /** Seeds LoRA's A init (Kaiming-uniform as PEFT) and dropout masks. */
  seed: number;
  /** Recompute each layer's activations in backward instead of keeping them (gradient checkpointing). */
  recompute: boolean;
  /** Start from these adapter tensors (PEFT names) instead of a fresh init (B = 0). */
  init?: Record<string, Float32Array>;
}

export interface NativeStepOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Clip the global gradient norm (after gradScale) to this; 0 = no clipping. */
  maxGradNorm: number;
  /** Multiplies the accumulated gradients first: 1 / (unmasked targets in the whole accumulated batch). */
  gradScale: number;
}

/** Everything that makes a training run resumable bit-for-bit. */
export interface NativeTrainerState {
  /** Optimizer steps taken. */
  step: number;
  /** Dropout RNG state (4 × u64 as 8 × u32, little-endian halves). */
  rng: Uint32Array;
  /** LoRA tensors under PEFT names, and AdamW moments under `${name}.exp_avg` / `${name}.exp_avg_sq`. */
  tensors: Record<string, Float32Array>;
}

/**
 * LoRA training over a frozen base (fp32 or NF4). Micro-batches are right-padded rows of
 * `seqLen` tokens; labels are aligned with ids (-100 = masked: prompt and padding) and shifted
 * inside exactly as transformers' causal-LM loss does.
 */
export interface NativeTrainer {
  /**
   * Forward + backward of one micro-batch; gradients of the *summed* loss accumulate. With `key`
   * (the micro-batch's place in the run: optimizer step, index in the step, part of a row split)
   * its dropout masks depend on that place alone; without, on the trainer's sequential stream.
   */
  accumulate(ids: Int32Array, labels: Int32Array, batch: number, seqLen: number,
    key?: { step: number; micro: number; part?: number }): Promise<{ lossSum: number; tokens: number }>;
  /** Masked loss only (no gradients, no dropout). */
  evaluate(ids: Int32Array, labels: Int32Array, batch: number, seqLen: number): Promise<{ lossSum: number; tokens: number }>;
  /** Scale, clip, AdamW, zero the gradients. Returns the global gradient norm before clipping. */
  step(options: NativeStepOptions): Promise<{ gradNorm: number }>;
  /** Accumulated gradients under PEFT names (copies), for checks. */
  gradients(): Record<string, Float32Array>;
  zeroGrad(): void;
  getState(): NativeTrainerState;
  setState(state: NativeTrainerState): void;
  /** Current LoRA tensors under PEFT names (copies): what an adapter file holds. */
  adapter(): Record<string, Float32Array>;
  dispose(): void;
}

/**
 * The trainer's data-parallel members (lib/train/distributed/). Every Trainer the addon makes has
 * them; they are typed apart from NativeTrainer so that stand-ins of the single-device contract
 * need not implement them.
 */
export interface NativeTrainerDistributed extends NativeTrainer {
  /**
   * Replaces the accumulated gradients with `tensors` (every tensor under its PEFT name, sizes as
   * gradients() returns): the CPU all-reduce writes the global sum back through it. Throws
   * EINVAL/ESHAPE (nothing written) on a missing or mis-sized tensor, ENOTSUP on the GPU.
   */
  setGradients(tensors: Record<string, Float32Array>): void;
  /**
   * Joins this rank's NCCL communicator (id from rank 0's `_ncclUniqueId()`, handed over by the
   * rendezvous). Rejects ENOTSUP without NCCL or off the GPU, ETIMEDOUT when the others do not
   * join within timeoutMs, ENCCL.
   */
  ncclInit(id: Uint8Array, rank: number, worldSize: number, timeoutMs: number): Promise<void>;
  /** Sums the device gradients over the ranks in place, in buckets of bucketElems floats. Rejects ETIMEDOUT, ENCCL, EABORTED. */
  ncclAllReduce(bucketElems: number, timeoutMs: number): Promise<void>;
  /** Aborts the communicator now (also while ncclAllReduce waits: it then rejects EABORTED). Never blocks. */
  ncclAbort(): void;
  /**
   * Ends this rank's communicator: ncclCommFinalize (polled up to timeoutMs) + ncclCommDestroy
   * when it is healthy, ncclCommAbort when it failed, ncclAbort() was called, or the finalize
   * fails or times out. Works after dispose(); idempotent ('none' without a communicator — always
   * on a build without NCCL — or after an earlier call). Rejects EBUSY while another call runs.
   * timeoutMs: the finalize's deadline, 0 for none; default 60 000.
   */
  ncclDestroy(timeoutMs?: number): Promise<'none' | 'destroyed' | 'aborted'>;
}

/** The addon's data-parallel hooks (internal). */
export interface NativeAddonDistributed extends NativeAddon {
  /** True when the addon was built with NCCL and a CUDA device is present. */
  _ncclAvailable(): boolean;
  /** A fresh 128-byte NCCL unique id (rank 0). Throws ENOTSUP without NCCL. */
  _ncclUniqueId(): Uint8Array;
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
  /** A LoRA trainer over this model's frozen weights (one at a time per model). */
  createTrainer(options: NativeTrainerOptions): NativeTrainer;
  /** Frees the weights now instead of at garbage collection. */
  dispose(): void;
  /** Internal: logits(ids) computed through a fresh KV cache fed `chunk` tokens at a time. For tests. */
  _logitsCached(ids: Int32Array, chunk: number): Promise<Float32Array>;
  /**
   * One decoding step for several sessions of this model at once (continuous batching): session i
   * appends `ids[i]` (its last token, or a chunk of prompt) and samples its next token with
   * `sampling[i]` and `history[i]`, exactly as `sessions[i].next(ids[i], sampling[i], history[i])`
   * would; the projections run once over all the rows, so the weights are read once per step.
   * Resolves with one token per session, in order. On device 'cuda' it then launches the step
   * for the tokens it returned before returning them (native/cuda/decode_batch_cuda.cu,
   * `decode_batch_ahead`): a next nextBatch() that brings those sessions with those tokens only
   * samples their rows, so the GPU computes while JavaScript handles the tokens; anything else
   * ignores it (`MIMIC_RUN_AHEAD=0`: off). Rejects EINVAL (arrays of unequal length, a session of
   * another model or twice), EBUSY (a session is in a running call), ENOTSUP (a device without a
   * batched step: step its sessions with next()). All four arrays have the same length ≥ 1.
   */
  nextBatch(sessions: NativeSession[], ids: Int32Array[], sampling: NativeSamplingOptions[], history: Int32Array[]): Promise<Int32Array>;
}

/** One row of the op-check harness (native/core/opcheck.h). */
export interface NativeOpCheckRow {
  /** Backend and op, e.g. "cpu.attention". */
  op: string;
  /** What was compared, e.g. "backward dq vs FD B=2 T=5 Hq=4 Hkv=2 D=6". */
  check: string;
  /** Normwise relative error: max |got − want| / max |want|. */
  maxRelErr: number;
  tol: number;
  pass: boolean;
}

export interface NativeAddon {
  readonly version: string;
  /** True when the addon was built with the CUDA backend and a CUDA device is present. */
  cudaAvailable(): boolean;
  loadModel(dir: string, options: NativeLoadOptions): Promise<NativeModel>;
  /** Internal: runs every op check (CPU ops vs double references and finite differences, and
   *  any registered backend vs CPU). For tests. */
  _opCheck(): NativeOpCheckRow[];
  /** Internal: `draws` samples from fresh copies of `logits` with one RNG stream seeded by
   *  `seed` (the sampler of session.next). For tests. */
  _sample(logits: Float32Array, sampling: NativeSamplingOptions, history: Int32Array, seed: number, draws: number): Int32Array;
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
