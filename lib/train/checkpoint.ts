/**
 * Training checkpoints: everything that makes a run resumable bit for bit, in `out/checkpoint/`:
 *
 * - `trainer_state.json` — where the run is (optimizer step, epoch, micro-batch within the
 *   epoch), the dropout RNG, the loss history, the best validation so far, and the settings
 *   that must not change across a resume;
 * - `optimizer.safetensors` — the LoRA tensors and their AdamW moments (`.exp_avg`, `.exp_avg_sq`);
 * - `adapter_config.json` + `adapter_model.safetensors` — the adapter at that step (loadable as is).
 *
 * The data order needs no saving: it is a pure function of the seed and the epoch.
 *
 * A checkpoint is written into a temporary folder (every file flushed), then swapped in with
 * renames (`checkpoint` → `checkpoint.old`, temp → `checkpoint`, old removed). A crash at any
 * point leaves a complete `checkpoint` or `checkpoint.old`, and `readCheckpoint` takes either.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { decodeSafetensors, encodeSafetensors, type TensorIn } from './safetensors.ts';
import { encodeAdapter, type ModelDims } from './adapter.ts';
import { nodeFs, syncDir, tempName, writeError, writeTemp, type WriteFs } from './atomic.ts';
import type { NativeLoraSpec, NativeTrainerState } from '../native.ts';
import type { TrainRecord, ValRecord } from './metrics.ts';

export const CHECKPOINT_VERSION = 1;

/** Settings a resumed run must share with the run that wrote the checkpoint. */
export type ResumeSettings = Record<string, string | number | boolean | null | string[]>;

export interface CheckpointMeta {
  version: number;
  settings: ResumeSettings;
  /** Optimizer steps done. */
  step: number;
  /** The epoch in progress (0-based); equals `epochs` when finished. */
  epoch: number;
  /** Micro-batches of that epoch already consumed. */
  batchInEpoch: number;
  /** The trainer's RNG (dropout). */
  rng: number[];
  /** Non-padding tokens processed so far. */
  tokens: number;
  /** Unmasked tokens trained on so far. */
  targetTokens: number;
  /** Seconds spent training so far (over all sessions). */
  seconds: number;
  train: TrainRecord[];
  val: ValRecord[];
  best: { loss: number; step: number; epoch: number } | null;
  /** True when the run completed. */
  finished: boolean;
}

export interface Checkpoint {
  meta: CheckpointMeta;
  state: NativeTrainerState;
  /** The folder it was read from. */
  dir: string;
}

/** Writes a checkpoint atomically into `dir` (normally `out/checkpoint`). */
export async function writeCheckpoint(dir: string, meta: CheckpointMeta, state: NativeTrainerState, adapter: {
  spec: NativeLoraSpec & { dropout?: number }; tensors: Record<string, Float32Array>; dims: ModelDims; baseModel: string | null;
}, fs: WriteFs = nodeFs): Promise<void> {
  const parent = path.dirname(dir);
  const tmpDir = tempName(dir);
  const old = `${dir}.old`;
  const optTensors: Record<string, TensorIn> = {};
  for (const [name, data] of Object.entries(state.tensors)) optTensors[name] = { data, shape: [data.length] };
  const [config, weights] = encodeAdapter(adapter.spec, adapter.tensors, adapter.dims, adapter.baseModel);
  const files: [string, Uint8Array | string][] = [
    ['optimizer.safetensors', encodeSafetensors(optTensors, { metadata: { format: 'mimic-trainer-state', step: String(state.step) } })],
    ['adapter_model.safetensors', weights],
    ['adapter_config.json', config],
    ['trainer_state.json', JSON.stringify({ ...meta, step: state.step, rng: Array.from(state.rng) }, null, 1) + '\n'],
  ];
  try {
    await fs.mkdir(tmpDir, { recursive: true });
    for (const [name, data] of files) {
      // writeTemp flushes each file; the temp name inside the temp folder is then renamed to its own name
      const t = await writeTemp(path.join(tmpDir, name), data, fs);
      await fs.rename(t, path.join(tmpDir, name));
    }
  } catch (e) {
    await fs.rm(tmpDir, { recursive: true, force: true }).catch(() => undefined);
    const err = e as NodeJS.ErrnoException;
    if (!err.message?.startsWith('mimic:')) throw writeError(e, dir);
    const out = new Error(err.message.replace(/Nothing was replaced.*$/, `The previous checkpoint in ${dir} is intact.`), { cause: e });
    (out as NodeJS.ErrnoException).code = err.code;
    throw out;
  }
  try {
    const hadOld = await stat(dir).then(() => true, () => false);
    if (hadOld) {
      await fs.rm(old, { recursive: true, force: true });
      await fs.rename(dir, old);
    }
    await fs.rename(tmpDir, dir);
    if (fs === nodeFs) await syncDir(parent);
    if (hadOld) await fs.rm(old, { recursive: true, force: true });
  } catch (e) {
    await fs.rm(tmpDir, { recursive: true, force: true }).catch(() => undefined);
    throw writeError(e, dir);
  }
}

async function readOne(dir: string): Promise<Checkpoint | undefined> {
  let metaText: string;
  try {
    metaText = await readFile(path.join(dir, 'trainer_state.json'), 'utf8');
  } catch {
    return undefined;
  }
  const meta = JSON.parse(metaText) as CheckpointMeta;
  if (meta.version !== CHECKPOINT_VERSION) {
    throw new Error(`mimic: ${dir} was written by another version of mimic (checkpoint v${meta.version}, this is v${CHECKPOINT_VERSION}); start a new run without resume`);
  }
  const file = path.join(dir, 'optimizer.safetensors');
  const { tensors } = decodeSafetensors(await readFile(file), file);
  const state: NativeTrainerState = {
    step: meta.step,
    rng: Uint32Array.from(meta.rng),
    tensors: Object.fromEntries(Object.entries(tensors).map(([k, v]) => [k, v.data])),
  };
  return { meta, state, dir };
}

/** Reads `dir` (or `dir.old` when a crash interrupted the swap); undefined when there is none. */
export async function readCheckpoint(dir: string): Promise<Checkpoint | undefined> {
  try {
    return (await readOne(dir)) ?? (await readOne(`${dir}.old`));
  } catch (e) {
    const err = e as Error;
    if (err.message.startsWith('mimic:')) throw err;
    throw new Error(`mimic: the checkpoint in ${dir} cannot be read (${err.message}); delete it to start over`);
  }
}

/** Names the settings that differ, or returns an empty list. */
export function settingsDiff(saved: ResumeSettings, now: ResumeSettings): string[] {
  const keys = new Set([...Object.keys(saved), ...Object.keys(now)]);
  const out: string[] = [];
  for (const k of keys) {
    if (JSON.stringify(saved[k]) !== JSON.stringify(now[k])) out.push(`${k} (checkpoint ${JSON.stringify(saved[k])}, now ${JSON.stringify(now[k])})`);
  }
  return out;
}
