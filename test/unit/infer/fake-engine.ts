// A stand-in for the native engine: scripted next tokens, so the TS inference layer (decode loop,
// stop strings, streaming, scheduler) can be tested without the addon.
import type { NativeModel, NativeModelConfig, NativeSamplingOptions, NativeSession } from '../../../lib/native.ts';
import { Tokenizer } from '../../../lib/tokenize/tokenizer.ts';
import { Model } from '../../../lib/infer/model.ts';

export const fixtureDir = new URL('../../fixtures/ref/tiny-llama', import.meta.url).pathname;

export const tinyConfig: NativeModelConfig = {
  vocabSize: 384, hiddenSize: 64, intermediateSize: 160, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16,
  maxPosition: 512, rmsNormEps: 1e-5, tieWordEmbeddings: true, ropeTheta: 500000, ropeType: 'llama3', bosTokenId: 0, eosTokenIds: [4],
};

export interface StepLog { tag: string; ids: number[]; sampling: NativeSamplingOptions; historyLength: number }

export interface FakeOptions {
  /** Next token given the tokens in the cache (prompt + generated) and the session's tag. */
  next: (seq: number[], tag: string) => number;
  /** ms each step takes (default: one setImmediate). */
  stepMs?: number;
  config?: Partial<NativeModelConfig>;
  /** A batch holding a session for which this returns a code is refused with that code (before any step, as the engine's argument checks). */
  failIf?: (tag: string, ids: number[]) => string | undefined;
}

export class FakeEngine implements NativeModel {
  readonly config: NativeModelConfig;
  readonly device = 'cpu' as const;
  readonly quant = 'none' as const;
  readonly log: StepLog[] = [];
  sessions = 0;
  disposed = false;
  running = 0;
  maxRunning = 0;
  /** Sizes of the nextBatch calls, in order. */
  readonly batches: number[] = [];
  private tagOf = new Map<number, string>();
  /** Each session's synchronous part of a step: checks, appends, logs, returns the token. */
  private tags = new WeakMap<NativeSession, string>();
  private steps = new WeakMap<NativeSession, (ids: Int32Array, sampling: NativeSamplingOptions, history: Int32Array) => number>();
  constructor(private readonly o: FakeOptions) { this.config = { ...tinyConfig, ...o.config }; }

  async logits(ids: Int32Array): Promise<Float32Array> { return new Float32Array(ids.length * this.config.vocabSize); }
  async _logitsCached(ids: Int32Array): Promise<Float32Array> { return this.logits(ids); }
  createSession(maxLength: number, seed: number): NativeSession {
    const seq: number[] = [];
    const engine = this;
    const tag = `s${this.sessions++}`;
    void seed;
    const stepSync = (ids: Int32Array, sampling: NativeSamplingOptions, history: Int32Array) => {
      if (seq.length + ids.length > maxLength) throw Object.assign(new Error(`fake: cache overflow ${seq.length}+${ids.length} > ${maxLength}`), { code: 'EFULL' });
      seq.push(...ids);
      engine.log.push({ tag, ids: [...ids], sampling, historyLength: history.length });
      return engine.o.next(seq, tag);
    };
    const session: NativeSession = {
      get length() { return seq.length; },
      maxLength,
      async next(ids: Int32Array, sampling: NativeSamplingOptions, history: Int32Array) {
        return (await engine.nextBatch([session], [ids], [sampling], [history]))[0];
      },
      reset() { seq.length = 0; },
    };
    this.steps.set(session, stepSync);
    this.tags.set(session, tag);
    return session;
  }
  /** One native call at a time, like the engine's per-model lock: validates all, then steps all. */
  async nextBatch(sessions: NativeSession[], ids: Int32Array[], sampling: NativeSamplingOptions[], history: Int32Array[]): Promise<Int32Array> {
    this.running++;
    this.maxRunning = Math.max(this.maxRunning, this.running);
    try {
      this.batches.push(sessions.length);
      for (let i = 0; i < sessions.length; i++) {
        const code = this.o.failIf?.(this.tags.get(sessions[i])!, [...ids[i]]);
        if (code) throw Object.assign(new Error(`fake: refused ${this.tags.get(sessions[i])} (${code})`), { code });
      }
      for (let i = 0; i < sessions.length; i++) {
        const s = sessions[i];
        if (s.length + ids[i].length > s.maxLength) throw Object.assign(new Error(`fake: cache overflow ${s.length}+${ids[i].length} > ${s.maxLength}`), { code: 'EFULL' });
      }
      if (this.o.stepMs) await new Promise((r) => setTimeout(r, this.o.stepMs));
      else await new Promise((r) => setImmediate(r));
      return Int32Array.from(sessions.map((s, i) => this.steps.get(s)!(ids[i], sampling[i], history[i])));
    } finally {
      this.running--;
    }
  }
  setLora(): void {}
  getLora() { return {}; }
  clearLora(): void {}
  createTrainer(): never { throw new Error('fake: no trainer'); }
  dispose(): void { this.disposed = true; }
}

let tok: Tokenizer | undefined;
export async function fixtureTokenizer(): Promise<Tokenizer> {
  tok ??= await Tokenizer.load(fixtureDir, [4]);
  return tok;
}

/**
 * A Model over a fake engine. `output` is either the generated ids in order (the k-th call of a
 * session after prefill returns output[k], then `after` forever; use prefillChunk 0 so the
 * prompt is one call) or a function of the cache contents.
 */
export async function scriptedModel(output: number[] | ((seq: number[], tag: string) => number),
  opts: { after?: number; stepMs?: number; maxSessions?: number; prefillChunk?: number; maxBatch?: number; config?: Partial<NativeModelConfig>; failIf?: FakeOptions['failIf'] } = {}) {
  const calls = new Map<string, number>();
  const engine = new FakeEngine({
    stepMs: opts.stepMs,
    config: opts.config,
    failIf: opts.failIf,
    next: (seq, tag) => {
      if (typeof output === 'function') return output(seq, tag);
      const k = calls.get(tag) ?? 0;
      calls.set(tag, k + 1);
      return k < output.length ? output[k] : (opts.after ?? 5);
    },
  });
  const model = new Model(engine, await fixtureTokenizer(), {
    dir: fixtureDir, maxSessions: opts.maxSessions, prefillChunk: opts.prefillChunk ?? 0, maxBatch: opts.maxBatch,
  });
  return { model, engine };
}
