/**
 * The decode scheduler: who may run a step of generation, and when.
 *
 * Two levels:
 * - **admission**: at most `maxActive` generations hold a session (a KV cache) at once; the rest
 *   wait in FIFO order. A caller may bound the wait queue (`maxQueue`): when it is full,
 *   `acquire` fails at once with `EQUEUEFULL` (the server answers 429).
 * - **steps**: an admitted generation asks for one step at a time (a prompt chunk or one token).
 *   Pending steps are served first-come first-served, `maxBatch` at a time, by the `run` function
 *   given to the scheduler. Because a generation re-queues its next step only after its previous
 *   one finished, FIFO service is round-robin at token granularity: a long request cannot starve
 *   the others, and a new request's prefill runs at the next step.
 *
 * A batched backend (continuous batching: `model.nextBatch` on the CPU engine) passes
 * `maxBatch > 1` and a `run` that decodes every request of the batch in one native call: whatever
 * requests are pending when a step starts join it. With `maxBatch > 1` a step starts one event-loop
 * turn (setImmediate) after the previous one ended, so that every generation of the batch that
 * just finished has re-queued its next step, and new requests that arrived meanwhile have queued
 * their first, before the batch is cut (unless every admitted generation has already queued) — otherwise the first generation to re-queue would run
 * alone and the batch would fragment. `maxBatch = 1` (a backend without batching) runs each step
 * as soon as the previous one ends.
 */
import { InferError } from './errors.ts';

/** A result of `run` that fails one request of the batch alone (its step rejects with `error`). */
export class StepFailure {
  constructor(readonly error: unknown) {}
}

export interface SchedulerOptions<Req, Res> {
  /** Generations admitted at once (each holds a KV cache). Default 8. */
  maxActive?: number;
  /** Step requests run together in one `run` call. Default 1 (the CPU backend). */
  maxBatch?: number;
  /** Runs one batch of step requests; resolves with one result per request, in order (a StepFailure rejects that request only). */
  run: (batch: Req[]) => Promise<(Res | StepFailure)[]>;
}

export interface AcquireOptions {
  /** Aborting while waiting for admission resolves `acquire` with `null`. */
  signal?: AbortSignal;
  /** Fail with EQUEUEFULL instead of waiting when this many are already waiting. Default Infinity. */
  maxQueue?: number;
}

export interface Lease<Req, Res> {
  /**
   * Queues one step and resolves with its result when it has run. If the lease's signal aborts
   * while the step is still queued, it is dropped and the promise rejects with an AbortError.
   */
  step(req: Req): Promise<Res>;
  /** Gives the slot back (idempotent). */
  release(): void;
}

interface Waiter<Req, Res> { resolve: (lease: Lease<Req, Res> | null) => void; signal?: AbortSignal; onAbort?: () => void }
interface Pending<Req, Res> { req: Req; resolve: (r: Res) => void; reject: (e: unknown) => void; signal?: AbortSignal; onAbort?: () => void }

const abortError = () => Object.assign(new Error('The operation was aborted'), { name: 'AbortError' });

export class Scheduler<Req, Res> {
  readonly maxActive: number;
  readonly maxBatch: number;
  private readonly run: (batch: Req[]) => Promise<(Res | StepFailure)[]>;
  private activeCount = 0;
  private readonly waiters: Waiter<Req, Res>[] = [];
  private readonly pending: Pending<Req, Res>[] = [];
  private running = false;
  private scheduled = false;
  private stepsRun = 0;
  private idleResolvers: (() => void)[] = [];

  constructor(options: SchedulerOptions<Req, Res>) {
    const maxActive = options.maxActive ?? 8;
    const maxBatch = options.maxBatch ?? 1;
    if (!(Number.isInteger(maxActive) && maxActive >= 1)) throw new InferError('EINVAL', 'mimic: maxActive must be an integer ≥ 1');
    if (!(Number.isInteger(maxBatch) && maxBatch >= 1)) throw new InferError('EINVAL', 'mimic: maxBatch must be an integer ≥ 1');
    this.maxActive = maxActive;
    this.maxBatch = maxBatch;
    this.run = options.run;
  }

  /** Generations holding a slot now. */
  get active(): number { return this.activeCount; }
  /** Generations waiting for a slot. */
  get waiting(): number { return this.waiters.length; }
  /** Steps run so far (all batches together). */
  get steps(): number { return this.stepsRun; }

  /** Waits for a slot. Resolves `null` when `signal` aborts first. */
  acquire(options: AcquireOptions = {}): Promise<Lease<Req, Res> | null> {
    const { signal, maxQueue = Infinity } = options;
    if (signal?.aborted) return Promise.resolve(null);
    if (this.activeCount < this.maxActive && this.waiters.length === 0) {
      this.activeCount++;
      return Promise.resolve(this.makeLease(signal));
    }
    if (this.waiters.length >= maxQueue) {
      return Promise.reject(new InferError('EQUEUEFULL',
        `mimic: the queue is full (${this.activeCount} generating, ${this.waiters.length} waiting); try again later`));
    }
    return new Promise((resolve) => {
      const w: Waiter<Req, Res> = { resolve, signal };
      if (signal) {
        w.onAbort = () => {
          const i = this.waiters.indexOf(w);
          if (i >= 0) this.waiters.splice(i, 1);
          resolve(null);
        };
        signal.addEventListener('abort', w.onAbort, { once: true });
      }
      this.waiters.push(w);
    });
  }

  /** Resolves when nothing is running or queued (for an orderly dispose). */
  idle(): Promise<void> {
    if (!this.running && !this.scheduled && this.pending.length === 0 && this.activeCount === 0) return Promise.resolve();
    return new Promise((r) => this.idleResolvers.push(r));
  }

  private makeLease(signal?: AbortSignal): Lease<Req, Res> {
    let released = false;
    return {
      step: (req: Req) => {
        if (released) return Promise.reject(new Error('mimic: step() on a released lease'));
        if (signal?.aborted) return Promise.reject(abortError());
        return new Promise<Res>((resolve, reject) => {
          const p: Pending<Req, Res> = { req, resolve, reject, signal };
          if (signal) {
            p.onAbort = () => {
              const i = this.pending.indexOf(p);
              if (i >= 0) { this.pending.splice(i, 1); reject(abortError()); }
            };
            signal.addEventListener('abort', p.onAbort, { once: true });
          }
          this.pending.push(p);
          this.pump();
        });
      },
      release: () => {
        if (released) return;
        released = true;
        this.activeCount--;
        this.admit();
        this.checkIdle();
      },
    };
  }

  private admit(): void {
    while (this.activeCount < this.maxActive && this.waiters.length > 0) {
      const w = this.waiters.shift()!;
      if (w.onAbort) w.signal?.removeEventListener('abort', w.onAbort);
      this.activeCount++;
      w.resolve(this.makeLease(w.signal));
    }
  }

  private pump(): void {
    if (this.running || this.scheduled || this.pending.length === 0) return;
    // Start now when waiting cannot grow the batch: no batching, a full batch, or every admitted
    // generation already queued (a lone client pays no extra event-loop turn per token).
    if (this.maxBatch === 1 || this.pending.length >= Math.min(this.maxBatch, this.activeCount)) { this.startStep(); return; }
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.startStep();
    });
  }

  private startStep(): void {
    if (this.running || this.pending.length === 0) { this.checkIdle(); return; }
    this.running = true;
    const batch = this.pending.splice(0, this.maxBatch);
    for (const p of batch) if (p.onAbort) p.signal?.removeEventListener('abort', p.onAbort);
    let results: Promise<(Res | StepFailure)[]>;
    try {
      results = this.run(batch.map((p) => p.req));
    } catch (e) {
      results = Promise.reject(e);
    }
    results.then(
      (res) => {
        if (!Array.isArray(res) || res.length !== batch.length) {
          const err = new Error(`mimic: scheduler run() returned ${Array.isArray(res) ? res.length : typeof res} results for ${batch.length} requests`);
          for (const p of batch) p.reject(err);
        } else {
          batch.forEach((p, i) => {
            const r = res[i];
            if (r instanceof StepFailure) p.reject(r.error); else p.resolve(r);
          });
        }
      },
      (err) => { for (const p of batch) p.reject(err); },
    ).finally(() => {
      this.stepsRun += batch.length;
      this.running = false;
      this.pump();
      this.checkIdle();
    });
  }

  private checkIdle(): void {
    if (this.running || this.scheduled || this.pending.length > 0 || this.activeCount > 0) return;
    const rs = this.idleResolvers;
    this.idleResolvers = [];
    for (const r of rs) r();
  }
}
