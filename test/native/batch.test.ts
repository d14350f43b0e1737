// model.nextBatch (native/engine/decode_batch.cpp): one step for many sessions must give exactly
// the tokens of stepping each session alone with session.next — greedy and seeded sampling,
// sessions at different lengths joining at different steps, chunked prompts mixed with decode
// steps, with and without a LoRA adapter, fp32 and NF4, and batches wider than a matmul tile.
import t from 'tap';
import { native, type NativeModel, type NativeSamplingOptions, type NativeSession } from '../../lib/native.ts';
import { modelDir, adapterFile } from './util/fixtures.ts';
import { readSafetensors } from './util/safetensors.ts';

const GREEDY: NativeSamplingOptions = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };
const spec = { r: 4, alpha: 8, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] };
const adapter: Record<string, Float32Array> = {};
for (const [k, v] of Object.entries(readSafetensors(adapterFile))) adapter[k] = v.data as Float32Array;

interface Plan { prompt: Int32Array; join: number; seed: number; sampling: NativeSamplingOptions; steps: number; chunk: number }

/** Deterministic pseudo-random plans: prompts of 1..40 tokens, joins staggered over the first steps. */
function plans(n: number, V: number, sampled: boolean): Plan[] {
  let x = 12345;
  const rnd = (k: number) => { x = (x * 1103515245 + 12345) % 2147483648; return x % k; };
  return Array.from({ length: n }, (_, i) => ({
    prompt: Int32Array.from({ length: 1 + rnd(40) }, () => rnd(V)),
    join: rnd(6),
    seed: 1000 + i,
    sampling: sampled
      ? { temperature: 0.5 + (i % 4) * 0.3, topK: [0, 5, 40][i % 3], topP: [1, 0.9, 0.6][i % 3], repetitionPenalty: [1, 1.3][i % 2] }
      : GREEDY,
    steps: 6 + rnd(10),
    chunk: [0, 3, 7][i % 3], // 0: the whole prompt in one step
  }));
}

/** The inputs a generation feeds, step by step: prompt chunks (greedy but the last), then each token. */
class Gen {
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
}

async function oneByOne(model: NativeModel, ps: Plan[]): Promise<number[][]> {
  const out: number[][] = [];
  for (const p of ps) {
    const g = new Gen(model, p);
    while (!g.done) {
      const { ids, sampling, history } = g.input();
      g.take(await g.session.next(ids, sampling, history));
    }
    out.push(g.tokens);
  }
  return out;
}

async function batched(model: NativeModel, ps: Plan[]): Promise<{ tokens: number[][]; maxWidth: number; maxRows: number }> {
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
    live.forEach((g, i) => g.take(toks[i]));
  }
  return { tokens: gens.map((g) => g.tokens), maxWidth, maxRows };
}

for (const quant of ['none', 'nf4'] as const) {
  t.test(`nextBatch equals session.next one by one (${quant})`, async (t) => {
    const model = await native().loadModel(modelDir, { device: 'cpu', quant });
    t.teardown(() => model.dispose());
    const V = model.config.vocabSize;
    for (const lora of [false, true]) {
      if (lora) model.setLora(spec, adapter); else model.clearLora();
      for (const sampled of [false, true]) {
        for (const n of [1, 5, 40]) {
          const ps = plans(n, V, sampled);
          const want = await oneByOne(model, ps);
          const got = await batched(model, ps);
          t.same(got.tokens, want, `${n} sessions, ${sampled ? 'seeded sampling' : 'greedy'}, ${lora ? 'LoRA' : 'no adapter'}: ` +
            `same tokens (widest step ${got.maxWidth} sessions, ${got.maxRows} rows)`);
          if (n === 40) t.ok(got.maxRows > 64, 'some step ran more rows than one 64-row matmul tile');
        }
      }
    }
  });
}

t.test('nextBatch refuses bad batches clearly and leaves the sessions usable', async (t) => {
  const model = await native().loadModel(modelDir, { device: 'cpu', quant: 'none' });
  const other = await native().loadModel(modelDir, { device: 'cpu', quant: 'none' });
  t.teardown(() => { model.dispose(); other.dispose(); });
  const a = model.createSession(16, 1), b = model.createSession(4, 2), c = other.createSession(16, 3);
  const ids = Int32Array.of(1, 2, 3), h = new Int32Array(0);
  await t.rejects(model.nextBatch([], [], [], []), { code: 'EINVAL', message: /empty/ });
  await t.rejects(model.nextBatch([a, b], [ids], [GREEDY, GREEDY], [h, h]), { code: 'EINVAL', message: /same length/ });
  await t.rejects(model.nextBatch([a, c], [ids, ids], [GREEDY, GREEDY], [h, h]), { code: 'EINVAL', message: /another model/ });
  await t.rejects(model.nextBatch([a, a], [ids, ids], [GREEDY, GREEDY], [h, h]), { code: 'EINVAL', message: /same session/ });
  await t.rejects(model.nextBatch([a, {} as NativeSession], [ids, ids], [GREEDY, GREEDY], [h, h]), { code: 'EINVAL', message: /not a session/ });
  await t.rejects(model.nextBatch([a], [Int32Array.of()], [GREEDY], [h]), { code: 'EINVAL', message: /empty/ });
  await t.rejects(model.nextBatch([a], [[1] as unknown as Int32Array], [GREEDY], [h]), { code: 'EINVAL', message: /Int32Array/ });
  await t.rejects(model.nextBatch([a], [ids], [{ ...GREEDY, topP: 0 }], [h]), { code: 'EINVAL', message: /topP/ });
  await t.rejects(model.nextBatch([a], [Int32Array.of(1 << 20)], [GREEDY], [h]), { code: 'ERANGE' });
  // b holds 4 tokens: 5 do not fit, and a's cache must stay untouched by the failed step
  await t.rejects(model.nextBatch([a, b], [ids, Int32Array.of(1, 2, 3, 4, 5)], [GREEDY, GREEDY], [h, h]), { code: 'EFULL' });
  t.equal(a.length, 0, 'a failed step appends nothing');
  t.equal(b.length, 0);
  // busy: a running next() or nextBatch() holds its sessions
  const running = a.next(ids, GREEDY, h);
  await t.rejects(model.nextBatch([b, a], [ids, ids], [GREEDY, GREEDY], [h, h]), { code: 'EBUSY', message: /sessions\[1\]/ });
  await running;
  const inBatch = model.nextBatch([b], [ids], [GREEDY], [h]);
  await t.rejects(b.next(ids, GREEDY, h), { code: 'EBUSY' });
  await inBatch;
  t.equal(b.length, 3, 'b was released by the rejected batch and stepped by the next one');
  const [tok] = await model.nextBatch([a, b], [Int32Array.of(5), Int32Array.of(6)], [GREEDY, GREEDY], [h, h]);
  t.type(tok, 'number');
  t.equal(a.length, 4);
  model.dispose();
  await t.rejects(model.nextBatch([a], [ids], [GREEDY], [h]), { code: 'EDISPOSED' });
});
