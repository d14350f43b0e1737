// model.nextBatch on device 'cuda' (native/cuda/decode_batch_cuda.cu): one GPU step for many
// sessions must give exactly the tokens of stepping each session alone with session.next —
// greedy and seeded sampling, staggered joins, prompt chunks beside one-token rows, more sessions
// than one 16-row GEMV block, with and without a LoRA adapter; the KV pool (session._release)
// hands caches to later sessions without changing their results. Runs only where the addon has
// CUDA and a GPU is present; elsewhere it is skipped (test/native/batch.test.ts covers the CPU).
// (The GPU round runs the same equality in C++: mimic_cuda_check model / batch, bench/gpu/round4.sh.)
import t from 'tap';
import { native, type NativeModel, type NativeSamplingOptions, type NativeSession } from '../../lib/native.ts';
import { modelDir, adapterFile } from './util/fixtures.ts';
import { readSafetensors } from './util/safetensors.ts';

const addon = native();
const GREEDY: NativeSamplingOptions = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };
const spec = { r: 4, alpha: 8, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] };

interface Plan { prompt: Int32Array; join: number; seed: number; sampling: NativeSamplingOptions; steps: number; chunk: number }

function plans(n: number, V: number, sampled: boolean): Plan[] {
  let x = 4242;
  const rnd = (k: number) => { x = (x * 1103515245 + 12345) % 2147483648; return x % k; };
  return Array.from({ length: n }, (_, i) => ({
    prompt: Int32Array.from({ length: 1 + rnd(i % 5 === 0 ? 300 : 40) }, () => rnd(V)),
    join: rnd(6),
    seed: 2000 + i,
    sampling: sampled
      ? { temperature: 0.5 + (i % 4) * 0.3, topK: [0, 5, 40][i % 3], topP: [1, 0.9, 0.6][i % 3], repetitionPenalty: [1, 1.3][i % 2] }
      : GREEDY,
    steps: 6 + rnd(10),
    chunk: [0, 3, 64][i % 3],
  }));
}

class Gen {
  session: NativeSession;
  tokens: number[] = [];
  private at = 0;
  private last = -1;
  constructor(model: NativeModel, readonly plan: Plan) {
    this.session = model.createSession(plan.prompt.length + plan.steps + 1, plan.seed);
  }
  get done(): boolean { return this.tokens.length >= this.plan.steps; }
  input(): { ids: Int32Array; sampling: NativeSamplingOptions; history: Int32Array } {
    const p = this.plan, chunk = p.chunk || p.prompt.length;
    const history = Int32Array.from([...p.prompt, ...this.tokens]);
    if (this.at < p.prompt.length) {
      const ids = p.prompt.subarray(this.at, this.at + chunk);
      return { ids, sampling: this.at + chunk >= p.prompt.length ? p.sampling : GREEDY, history };
    }
    return { ids: Int32Array.of(this.last), sampling: p.sampling, history };
  }
  take(tok: number): void {
    const p = this.plan;
    if (this.at < p.prompt.length) {
      this.at += p.chunk || p.prompt.length;
      if (this.at < p.prompt.length) return;
    }
    this.tokens.push(tok);
    this.last = tok;
  }
  release(): void { (this.session as NativeSession & { _release?: () => boolean })._release?.(); }
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
    g.release();
  }
  return out;
}

async function batched(model: NativeModel, ps: Plan[]): Promise<{ tokens: number[][]; maxWidth: number }> {
  const gens = ps.map((p) => new Gen(model, p));
  let maxWidth = 0;
  for (let step = 0; gens.some((g) => !g.done); step++) {
    const live = gens.filter((g) => g.plan.join <= step && !g.done);
    if (live.length === 0) continue;
    const ins = live.map((g) => g.input());
    maxWidth = Math.max(maxWidth, live.length);
    const toks = await model.nextBatch(live.map((g) => g.session), ins.map((x) => x.ids), ins.map((x) => x.sampling), ins.map((x) => x.history));
    live.forEach((g, i) => { g.take(toks[i]); if (g.done) g.release(); });
  }
  return { tokens: gens.map((g) => g.tokens), maxWidth };
}

if (!addon.cudaAvailable()) {
  t.pass('no CUDA device: the GPU batch checks are skipped (the CPU nextBatch is test/native/batch.test.ts)', { skip: 'no CUDA device' });
} else {
  const adapter: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(readSafetensors(adapterFile))) adapter[k] = v.data as Float32Array;
  for (const quant of ['none', 'nf4'] as const) {
    t.test(`cuda nextBatch equals session.next one by one (${quant})`, async (t) => {
      const model = await addon.loadModel(modelDir, { device: 'cuda', quant });
      t.teardown(() => model.dispose());
      const V = model.config.vocabSize;
      for (const lora of [false, true]) {
        if (lora) model.setLora(spec, adapter); else model.clearLora();
        for (const sampled of [false, true]) {
          for (const n of [2, 20, 40]) {
            const ps = plans(n, V, sampled);
            const want = await oneByOne(model, ps);
            const got = await batched(model, ps);
            t.same(got.tokens, want, `${n} sessions, ${sampled ? 'seeded sampling' : 'greedy'}, ${lora ? 'LoRA' : 'no adapter'}: ` +
              `same tokens (widest step ${got.maxWidth} sessions)`);
          }
        }
      }
    });
  }

  t.test('cuda nextBatch refuses bad batches before anything runs; released sessions start over', async (t) => {
    const model = await addon.loadModel(modelDir, { device: 'cuda', quant: 'nf4' });
    t.teardown(() => model.dispose());
    const a = model.createSession(16, 1), b = model.createSession(4, 2);
    const ids = Int32Array.of(1, 2, 3), h = new Int32Array(0);
    await t.rejects(model.nextBatch([a], [Int32Array.of(1 << 20)], [GREEDY], [h]), { code: 'ERANGE' });
    await t.rejects(model.nextBatch([a, b], [ids, Int32Array.of(1, 2, 3, 4, 5)], [GREEDY, GREEDY], [h, h]), { code: 'EFULL' });
    t.equal(a.length, 0, 'a failed step appends nothing');
    // a pooled cache is larger than asked: the session's own maxLength still bounds it
    await b.next(Int32Array.of(1, 2, 3, 4), GREEDY, h);
    await t.rejects(b.next(Int32Array.of(5), GREEDY, h), { code: 'EFULL' });
    const first = await a.next(ids, GREEDY, h);
    t.equal((a as NativeSession & { _release: () => boolean })._release(), true);
    t.equal(a.length, 0, '_release empties the session');
    t.equal(await a.next(ids, GREEDY, h), first, 'a released session runs again from a pooled cache');
  });
}
