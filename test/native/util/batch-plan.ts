// Shared by the nextBatch tests (CPU: batch.test.ts, GPU: cuda-batch.test.ts): deterministic
// generation plans, a driver that feeds one plan step by step, and the two ways to run a set of
// plans — each session alone with session.next, or all together with model.nextBatch.
import type { NativeModel, NativeSamplingOptions, NativeSession } from '../../../lib/native.ts';
import { adapterFile } from './fixtures.ts';
import { readSafetensors } from './safetensors.ts';

export const GREEDY: NativeSamplingOptions = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };
export const LORA_SPEC = { r: 4, alpha: 8, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] };

/** The fixture's PEFT adapter tensors (r=4 on all seven projections). */
export function fixtureAdapter(): Record<string, Float32Array> {
  const out: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(readSafetensors(adapterFile))) out[k] = v.data as Float32Array;
  return out;
}

export interface Plan { prompt: Int32Array; join: number; seed: number; sampling: NativeSamplingOptions; steps: number; chunk: number }

export interface PlanOptions {
  /** LCG seed of the plan generator. */
  seed: number;
  /** First session RNG seed (session i gets seedBase + i). */
  seedBase: number;
  /** Longest prompt of session i (its prompt has 1..maxPrompt(i) tokens). */
  maxPrompt: (i: number) => number;
  /** Prompt chunk sizes, cycled over sessions; 0 = the whole prompt in one step. */
  chunks: number[];
}

/** Deterministic pseudo-random plans: joins staggered over the first steps, sampled or greedy. */
export function plans(n: number, V: number, sampled: boolean, o: PlanOptions): Plan[] {
  let x = o.seed;
  const rnd = (k: number) => { x = (x * 1103515245 + 12345) % 2147483648; return x % k; };
  return Array.from({ length: n }, (_, i) => ({
    prompt: Int32Array.from({ length: 1 + rnd(o.maxPrompt(i)) }, () => rnd(V)),
    join: rnd(6),
    seed: o.seedBase + i,
    sampling: sampled
      ? { temperature: 0.5 + (i % 4) * 0.3, topK: [0, 5, 40][i % 3], topP: [1, 0.9, 0.6][i % 3], repetitionPenalty: [1, 1.3][i % 2] }
      : GREEDY,
    steps: 6 + rnd(10),
    chunk: o.chunks[i % o.chunks.length],
  }));
}

/** The inputs a generation feeds, step by step: prompt chunks (greedy but the last), then each token. */
export class Gen {
  session: NativeSession;
  tokens: number[] = [];
  private at = 0;
  private last = -1;
  constructor(model: NativeModel, readonly plan: Plan) {
    this.session = model.createSession(plan.prompt.length + plan.steps + 1, plan.seed);
  }
  get done(): boolean { return this.tokens.length >= this.plan.steps; }
  /** The next step's arguments. */
  input(): { ids: Int32Array; sampling: NativeSamplingOptions; history: Int32Array } {
    const p = this.plan, chunk = p.chunk || p.prompt.length;
    const history = Int32Array.from([...p.prompt, ...this.tokens]);
    if (this.at < p.prompt.length) {
      const ids = p.prompt.subarray(this.at, this.at + chunk);
      return { ids, sampling: this.at + chunk >= p.prompt.length ? p.sampling : GREEDY, history };
    }
    return { ids: Int32Array.of(this.last), sampling: p.sampling, history };
  }
  /** Takes the step's result. */
  take(tok: number): void {
    const p = this.plan;
    if (this.at < p.prompt.length) {
      this.at += p.chunk || p.prompt.length;
      if (this.at < p.prompt.length) return;
    }
    this.tokens.push(tok);
    this.last = tok;
  }
  /** Hands the session's KV cache back to the model's pool (CUDA), where the addon has it. */
  release(): void { (this.session as NativeSession & { _release?: () => boolean })._release?.(); }
}

/** Each plan alone through session.next; `release` returns each finished session's cache. */
export async function oneByOne(model: NativeModel, ps: Plan[], release = false): Promise<number[][]> {
  const out: number[][] = [];
  for (const p of ps) {
    const g = new Gen(model, p);
    while (!g.done) {
      const { ids, sampling, history } = g.input();
      g.take(await g.session.next(ids, sampling, history));
    }
    out.push(g.tokens);
    if (release) g.release();
  }
  return out;
}

/** All plans together through model.nextBatch, each joining at its step. */
export async function batched(model: NativeModel, ps: Plan[], release = false): Promise<{ tokens: number[][]; maxWidth: number; maxRows: number }> {
  const gens = ps.map((p) => new Gen(model, p));
  let maxWidth = 0, maxRows = 0;
  for (let step = 0; gens.some((g) => !g.done); step++) {
    const live = gens.filter((g) => g.plan.join <= step && !g.done);
    if (live.length === 0) continue;
    const ins = live.map((g) => g.input());
    maxWidth = Math.max(maxWidth, live.length);
    maxRows = Math.max(maxRows, ins.reduce((s, x) => s + x.ids.length, 0));
    const toks = await model.nextBatch(live.map((g) => g.session), ins.map((x) => x.ids), ins.map((x) => x.sampling), ins.map((x) => x.history));
    if (toks.length !== live.length) throw new Error(`nextBatch gave ${toks.length} tokens for ${live.length} sessions`);
    live.forEach((g, i) => { g.take(toks[i]); if (release && g.done) g.release(); });
  }
  return { tokens: gens.map((g) => g.tokens), maxWidth, maxRows };
}
