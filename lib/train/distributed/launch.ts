/**
 * Data-parallel finetune(): one worker process per GPU (or CPU worker), or this process as one
 * rank of a multi-host job.
 *
 * Why processes and not worker threads: each GPU gets its own process with its own CUDA context
 * and NCCL communicator — the standard arrangement (torchrun, NCCL's own examples): one device
 * per process avoids CUDA-context sharing and NCCL's one-communicator-per-thread rules, and a
 * crash (a CUDA fault, out of memory, a native bug) kills one worker, which the parent sees
 * exit and reports, instead of taking down every rank and the caller. The addon also keeps
 * per-process state (one cuda::Context, its stream), so threads would share a device.
 *
 * The parent only supervises: it picks a free port, forks the workers with MIMIC_RANK /
 * MIMIC_WORLD_SIZE / MIMIC_MASTER_ADDR / MIMIC_MASTER_PORT (and CUDA_VISIBLE_DEVICES, one
 * GPU each, NCCL_NVLS_ENABLE=0), hands them the options over IPC, forwards rank 0's progress,
 * and resolves with rank 0's report (a worker's end is read on 'close', once its last message is
 * in). A worker that exits non-zero (or is killed) fails the run:
 * the others stop on their own (their communicator sees the peer's socket close) and are
 * killed after a grace period if they do not; the error names every worker's end.
 */
import { fork, spawnSync, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import os from 'node:os';
import { native, type NativeAddonDistributed } from '../../native.ts';
import { finetuneWith, type FinetuneOptions, type TrainReport } from '../finetune.ts';
import { rendezvous } from './comm.ts';
import { makeDistContext } from './context.ts';

/** One rank of a (multi-host) job. A missing field is read from the environment. */
export interface DistributedOptions {
  /** Ranks in all. Default MIMIC_WORLD_SIZE. */
  worldSize?: number;
  /** This process's rank, 0-based; rank 0 writes the files. Default MIMIC_RANK. */
  rank?: number;
  /** Rank 0's host. Default MIMIC_MASTER_ADDR, else 127.0.0.1. */
  masterAddr?: string;
  /** Rank 0's TCP port for the rendezvous. Default MIMIC_MASTER_PORT, else 29511. */
  masterPort?: number;
  /** Deadline of every collective in ms. Default MIMIC_DIST_TIMEOUT_MS, else 600 000. */
  timeoutMs?: number;
  /** How long the ranks wait for each other at the start, in ms. Default MIMIC_DIST_JOIN_TIMEOUT_MS, else 120 000. */
  joinTimeoutMs?: number;
  /** The same string on every rank of one job (refuses strays). Default MIMIC_RUN_ID, else ''. */
  runId?: string;
}

export interface LaunchHooks {
  /** Called with the workers' pids once they are forked (tests). */
  onSpawn?: (pids: number[]) => void;
  /** Grace period for the surviving workers to stop on their own after one failed. Default 10 000 ms. */
  graceMs?: number;
  /** The worker script (tests: a stand-in that needs no addon). Default ./worker.ts (./worker.js when built). */
  workerFile?: URL;
  /** Starts one worker (tests: a scripted child). Default node:child_process fork with an IPC channel. */
  fork?: (file: URL, env: NodeJS.ProcessEnv) => ChildProcess;
}

const envInt = (name: string): number | undefined => {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new Error(`mimic: ${name} must be a whole number (got ${JSON.stringify(v)})`);
  return n;
};

export function resolveDistributed(d: DistributedOptions = {}): Required<DistributedOptions> {
  const worldSize = d.worldSize ?? envInt('MIMIC_WORLD_SIZE');
  const rank = d.rank ?? envInt('MIMIC_RANK');
  if (worldSize === undefined || rank === undefined) {
    throw new Error('mimic: a distributed rank needs its world size and rank: pass devices: { worldSize, rank, masterAddr, masterPort } or set MIMIC_WORLD_SIZE and MIMIC_RANK (and MIMIC_MASTER_ADDR / MIMIC_MASTER_PORT)');
  }
  return {
    worldSize, rank,
    masterAddr: d.masterAddr ?? process.env.MIMIC_MASTER_ADDR ?? '127.0.0.1',
    masterPort: d.masterPort ?? envInt('MIMIC_MASTER_PORT') ?? 29511,
    timeoutMs: d.timeoutMs ?? envInt('MIMIC_DIST_TIMEOUT_MS') ?? 600_000,
    joinTimeoutMs: d.joinTimeoutMs ?? envInt('MIMIC_DIST_JOIN_TIMEOUT_MS') ?? 120_000,
    runId: d.runId ?? process.env.MIMIC_RUN_ID ?? '',
  };
}

/** Runs finetune as one rank: rendezvous, then the training loop with the data-parallel hooks. */
export async function runRank(options: FinetuneOptions, d: Required<DistributedOptions>): Promise<TrainReport> {
  const device = options.device === 'auto' || options.device === undefined
    ? (native().cudaAvailable() ? 'cuda' : 'cpu') : options.device;
  const addon = native() as NativeAddonDistributed;
  if (device === 'cuda' && !addon._ncclAvailable()) {
    throw new Error('mimic: multi-GPU training needs the addon built with NCCL (found at build time in the CUDA toolkit or the nvidia-nccl-cu* wheel; see docs/distributed.md). Rebuild with `MIMIC_NCCL=ON npm run build:native`.');
  }
  process.env.NCCL_NVLS_ENABLE = '0'; // NVLink multicast stays off (it can take a shared host's GPUs down)
  const comm = await rendezvous({ rank: d.rank, worldSize: d.worldSize, masterAddr: d.masterAddr, masterPort: d.masterPort,
    joinTimeoutMs: d.joinTimeoutMs, timeoutMs: d.timeoutMs, runId: d.runId });
  const dist = makeDistContext(comm, device === 'cuda' ? 'nccl' : 'tcp', {
    timeoutMs: d.timeoutMs, ncclId: device === 'cuda' && d.rank === 0 ? addon._ncclUniqueId() : undefined,
  });
  try {
    const { devices: _d, workers: _w, ...rest } = options;
    const report = await finetuneWith({ ...rest, device }, { dist });
    await dist.close(); // NCCL: finalize + ncclCommDestroy (every rank gets here at the same step)
    await comm.close();
    return report;
  } catch (e) {
    comm.abort(`rank ${d.rank} failed: ${(e as Error).message.replace(/^mimic: /, '')}`);
    await dist.close(); // NCCL: ncclCommAbort (the abort above reached the communicator)
    throw e;
  }
}

/** Free TCP port on the loopback (for a single-host job). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** The GPUs that 'all' means: CUDA_VISIBLE_DEVICES, else nvidia-smi's list. */
function visibleGpus(): string[] {
  const v = process.env.CUDA_VISIBLE_DEVICES;
  if (v !== undefined && v.trim() !== '') return v.split(',').map((s) => s.trim()).filter(Boolean);
  const r = spawnSync('nvidia-smi', ['--query-gpu=index', '--format=csv,noheader'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error('mimic: devices: \'all\' found no GPU (nvidia-smi did not answer); pass a list of device indices, or use workers for the CPU');
  return r.stdout.split('\n').map((s) => s.trim()).filter(Boolean);
}

interface WorkerEnd { rank: number; pid: number; code: number | null; signal: NodeJS.Signals | null; error?: string; name?: string }

/** finetune() with `devices` or `workers`. */
export async function runDistributed(options: FinetuneOptions, hooks: LaunchHooks = {}): Promise<TrainReport> {
  const { devices, workers } = options;
  if (devices !== undefined && workers !== undefined) throw new Error('mimic: pass devices (GPUs) or workers (CPU), not both');
  if (devices !== undefined && !Array.isArray(devices) && devices !== 'all') {
    if (typeof devices !== 'object' || devices === null) throw new Error(`mimic: devices must be 'all', a list of GPU indices or { worldSize, rank, masterAddr, masterPort } (got ${JSON.stringify(devices)})`);
    return runRank(options, resolveDistributed(devices)); // this process is one rank
  }
  let gpuIds: string[] | null = null;
  let world: number;
  if (workers !== undefined) {
    if (!Number.isInteger(workers) || workers < 1) throw new Error(`mimic: workers must be a whole number ≥ 1 (got ${workers})`);
    if (options.device === 'cuda') throw new Error('mimic: workers is CPU data parallelism; for GPUs pass devices (e.g. devices: \'all\' or --gpus N)');
    world = workers;
  } else {
    if (options.device === 'cpu') throw new Error('mimic: devices lists GPUs; for CPU data parallelism pass workers (--workers N)');
    const visible = visibleGpus();
    const list = devices === 'all' ? visible.map((_, i) => i) : devices as number[];
    if (list.length === 0) throw new Error('mimic: devices is empty');
    for (const i of list) {
      if (!Number.isInteger(i) || i < 0 || i >= visible.length) throw new Error(`mimic: device ${i} does not exist (${visible.length} visible GPU(s): 0..${visible.length - 1})`);
    }
    if (new Set(list).size !== list.length) throw new Error(`mimic: devices lists a GPU twice (${list.join(', ')})`);
    gpuIds = list.map((i) => visible[i]);
    world = list.length;
  }

  const port = await freePort();
  const runId = randomUUID();
  const threads = options.threads && options.threads > 0 ? options.threads : Math.max(1, Math.floor(os.cpus().length / world));
  const { signal, onProgress, fs: _fs, devices: _d, workers: _w, ...plain } = options;
  if (options.fs) throw new Error('mimic: a custom fs cannot be used with workers (each worker writes through node:fs)');
  const childOptions: FinetuneOptions = { ...plain, device: gpuIds ? 'cuda' : 'cpu', threads };
  const workerFile = hooks.workerFile ?? new URL(import.meta.url.endsWith('.ts') ? './worker.ts' : './worker.js', import.meta.url);

  const children: ChildProcess[] = [];
  const ends: (WorkerEnd | undefined)[] = new Array(world);
  const errors: ({ message: string; name: string } | undefined)[] = new Array(world);
  let report: TrainReport | undefined;
  let failedFirst: number | null = null;
  let killTimer: NodeJS.Timeout | undefined;

  return new Promise<TrainReport>((resolve, reject) => {
    const finish = () => {
      if (ends.filter(Boolean).length < world) return; // (a sparse array: some() would skip the holes)
      clearTimeout(killTimer);
      signal?.removeEventListener('abort', onAbort);
      const bad = ends.filter((e) => e!.code !== 0);
      if (!bad.length && report) return resolve(report);
      const describe = (e: WorkerEnd) => `worker rank ${e.rank} (pid ${e.pid}) ` +
        (e.signal ? `was killed by ${e.signal}` : `exited with code ${e.code}`) + (e.error ? `: ${e.error.replace(/^mimic: /, '')}` : '');
      const first = failedFirst !== null ? ends[failedFirst]! : bad[0] ?? ends[0]!;
      const rest = ends.filter((e) => e !== first && (e!.code !== 0 || e!.error));
      const aborted = errors[0]?.name === 'AbortError';
      const err = new Error(aborted ? errors[0]!.message
        : `mimic: distributed training failed: ${describe(first)}` + (rest.length ? `; then ${rest.map((e) => describe(e!)).join('; ')}` : ''));
      if (aborted) { err.name = 'AbortError'; (err as NodeJS.ErrnoException).code = 'ABORT_ERR'; }
      (err as Error & { workers?: WorkerEnd[] }).workers = ends as WorkerEnd[];
      reject(err);
    };
    const onAbort = () => { for (const c of children) if (c.connected) c.send({ type: 'abort' }); };
    signal?.addEventListener('abort', onAbort);

    for (let rank = 0; rank < world; rank++) {
      const env: NodeJS.ProcessEnv = {
        ...process.env, MIMIC_RANK: String(rank), MIMIC_WORLD_SIZE: String(world), MIMIC_MASTER_ADDR: '127.0.0.1',
        MIMIC_MASTER_PORT: String(port), MIMIC_RUN_ID: runId, NCCL_NVLS_ENABLE: '0',
      };
      if (gpuIds) env.CUDA_VISIBLE_DEVICES = gpuIds[rank];
      const child = hooks.fork ? hooks.fork(workerFile, env)
        : fork(workerFile, [], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
      children.push(child);
      child.on('message', (m: { type: string; progress?: Parameters<NonNullable<FinetuneOptions['onProgress']>>[0]; report?: TrainReport; message?: string; name?: string }) => {
        if (m.type === 'progress' && m.progress) { try { onProgress?.(m.progress); } catch { /* the caller's callback */ } }
        else if (m.type === 'report') report = m.report;
        else if (m.type === 'error') errors[rank] = { message: m.message ?? '', name: m.name ?? 'Error' };
      });
      child.on('error', () => undefined); // 'close' follows
      // A worker's end is taken from 'close', not 'exit': 'close' comes after the process exited
      // AND its IPC channel closed, i.e. after every message it sent (rank 0's report, a rank's
      // error) was emitted here. 'exit' can come first, and would then fail a good run for want
      // of the report still in the pipe.
      child.on('close', (code, sig) => {
        ends[rank] = { rank, pid: child.pid ?? -1, code, signal: sig, error: errors[rank]?.message, name: errors[rank]?.name };
        if ((code !== 0) && failedFirst === null) {
          failedFirst = rank;
          // the others see the dead peer over TCP and stop; whoever does not within the grace period is killed
          killTimer = setTimeout(() => { for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL'); }, hooks.graceMs ?? 10_000);
        }
        finish();
      });
      child.send({ type: 'start', options: childOptions });
    }
    hooks.onSpawn?.(children.map((c) => c.pid ?? -1));
  });
}
