/**
 * DistContext: what finetune() needs to run as one rank of a data-parallel job — the
 * communicator (control plane: scalars, state, barriers, abort), how the gradients are summed
 * (TCP on the CPU, NCCL on the GPU), and who writes files (rank 0).
 */
import type { NativeTrainer, NativeTrainerDistributed } from '../../native.ts';
import type { Communicator } from './comm.ts';

export interface StepSums {
  lossSum: number;
  /** Unmasked targets. */
  targets: number;
  /** Non-padding tokens. */
  tokens: number;
  /** 1 when this rank wants to stop at the next step boundary. */
  stop: number;
}

export interface DistContext {
  readonly rank: number;
  readonly worldSize: number;
  readonly comm: Communicator;
  /** 'tcp' (CPU: gradients() → all-reduce → setGradients) or 'nccl' (in place on the GPU). */
  readonly transport: 'tcp' | 'nccl';
  /**
   * Sums this rank's accumulated gradients and its step sums over all ranks; afterwards every
   * rank's trainer holds the global gradient sum, and the returned sums are global.
   */
  reduceStep(trainer: NativeTrainer, sums: StepSums): Promise<StepSums>;
  /** Called once the trainer exists (NCCL: joins the communicator). */
  attach?(trainer: NativeTrainer): Promise<void>;
  /**
   * Ends the gradient transport once the rank's run is over, also after dispose() (NCCL: the
   * communicator is finalized and destroyed when healthy, aborted after an error or an abort of
   * the communicator). Idempotent; never rejects; resolves with what happened to the NCCL
   * communicator ('none' without one: TCP, a CPU build).
   */
  close(): Promise<NcclEnd>;
}

/** What ncclDestroy did to the communicator. */
export type NcclEnd = Awaited<ReturnType<NativeTrainerDistributed['ncclDestroy']>>;

/** Options of the gradient transport. */
export interface ReduceOptions {
  /** NCCL: floats per all-reduce bucket. Default 2^24 (64 MiB). */
  bucketElems?: number;
  /** Deadline of one all-reduce. Default: the communicator's. */
  timeoutMs?: number;
}

export function makeDistContext(comm: Communicator, transport: 'tcp' | 'nccl', o: ReduceOptions & { timeoutMs: number; ncclId?: Uint8Array }): DistContext {
  const scalars = (s: StepSums) => Float64Array.of(s.lossSum, s.targets, s.tokens, s.stop);
  const sums = (a: Float64Array): StepSums => ({ lossSum: a[0], targets: a[1], tokens: a[2], stop: a[3] });
  let attached: NativeTrainerDistributed | undefined;
  return {
    rank: comm.rank, worldSize: comm.worldSize, comm, transport,
    async attach(trainer) {
      if (transport !== 'nccl') return;
      const t = trainer as NativeTrainerDistributed;
      attached = t;
      comm.onAbort(() => t.ncclAbort()); // a dead peer seen over TCP also frees a rank waiting inside NCCL
      const id = comm.rank === 0 ? o.ncclId : undefined;
      const bytes = await comm.broadcast(id);
      await t.ncclInit(bytes, comm.rank, comm.worldSize, o.timeoutMs);
    },
    async close() {
      const t = attached;
      attached = undefined;
      if (!t || typeof t.ncclDestroy !== 'function') return 'none';
      // after an abort of the run the onAbort hook above has called ncclAbort: ncclDestroy then
      // aborts the communicator instead of finalizing it (it never waits on the peers)
      try {
        // a healthy communicator finalizes at once (no collective is pending at the end of a run);
        // never hold a finished run for the whole collective deadline: past 30 s it is aborted
        return await t.ncclDestroy(o.timeoutMs > 0 ? Math.min(o.timeoutMs, 30_000) : 30_000);
      } catch {
        return 'none'; // ENOTSUP (no NCCL) or EBUSY: the process exit (or the trainer's finalizer) ends it
      }
    },
    async reduceStep(trainer, s) {
      const head = scalars(s);
      if (transport === 'nccl') {
        // the scalars over TCP first: a liveness check of every rank before NCCL is entered
        await comm.allReduceSum([head]);
        const t = trainer as NativeTrainerDistributed;
        try {
          await t.ncclAllReduce(o.bucketElems ?? 1 << 24, o.timeoutMs);
        } catch (e) {
          comm.abort(`the NCCL all-reduce failed on rank ${comm.rank}: ${(e as Error).message.replace(/^mimic: /, '')}`);
          throw e;
        }
        return sums(head);
      }
      const grads = trainer.gradients();
      const names = Object.keys(grads); // PEFT order: the same on every rank
      const bufs = names.map((k) => grads[k]);
      await comm.allReduceSum([...bufs, head]);
      (trainer as NativeTrainerDistributed).setGradients(grads);
      return sums(head);
    },
  };
}

// ---- trainer state over the wire (resume: rank 0 reads the checkpoint, the others receive it) ----

/** JSON header + the tensors' bytes, 4-byte aligned. */
export function encodeJsonAndTensors(json: unknown, tensors: Record<string, Float32Array> = {}): Uint8Array {
  const names = Object.keys(tensors);
  const head = Buffer.from(JSON.stringify({ json, names, sizes: names.map((n) => tensors[n].length) }), 'utf8');
  const pad = (4 - ((4 + head.length) % 4)) % 4;
  const total = 4 + head.length + pad + names.reduce((n, k) => n + tensors[k].byteLength, 0);
  const out = new Uint8Array(total);
  new DataView(out.buffer).setUint32(0, head.length + pad, true);
  out.set(head, 4);
  out.fill(0x20, 4 + head.length, 4 + head.length + pad); // spaces: still valid JSON
  let off = 4 + head.length + pad;
  for (const k of names) { out.set(new Uint8Array(tensors[k].buffer, tensors[k].byteOffset, tensors[k].byteLength), off); off += tensors[k].byteLength; }
  return out;
}

export function decodeJsonAndTensors<T>(bytes: Uint8Array): { json: T; tensors: Record<string, Float32Array> } {
  const buf = new Uint8Array(bytes); // own, aligned copy
  const hl = new DataView(buf.buffer).getUint32(0, true);
  const head = JSON.parse(Buffer.from(buf.buffer, 4, hl).toString('utf8')) as { json: T; names: string[]; sizes: number[] };
  const tensors: Record<string, Float32Array> = {};
  let off = 4 + hl;
  head.names.forEach((k, i) => { tensors[k] = new Float32Array(buf.buffer, off, head.sizes[i]); off += head.sizes[i] * 4; });
  return { json: head.json, tensors };
}
