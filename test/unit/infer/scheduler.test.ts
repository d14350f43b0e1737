// The scheduler: round-robin steps, bounded admission, aborts, batching.
import t from 'tap';
import { Scheduler, StepFailure } from '../../../lib/infer/scheduler.ts';

const tick = () => new Promise((r) => setImmediate(r));

t.test('steps of concurrent leases interleave round-robin', async (t) => {
  const order: string[] = [];
  const s = new Scheduler<string, string>({ maxActive: 4, run: async ([r]) => { order.push(r); await tick(); return [r]; } });
  const job = async (name: string, steps: number) => {
    const lease = (await s.acquire())!;
    for (let i = 0; i < steps; i++) await lease.step(name);
    lease.release();
  };
  await Promise.all([job('a', 6), job('b', 3), job('c', 3)]);
  t.same(order, ['a', 'b', 'c', 'a', 'b', 'c', 'a', 'b', 'c', 'a', 'a', 'a']);
  t.equal(s.steps, 12);
  t.equal(s.active, 0);
});

t.test('a late request joins at the next step instead of waiting for a long one', async (t) => {
  const order: string[] = [];
  const s = new Scheduler<string, string>({ run: async ([r]) => { order.push(r); await tick(); return [r]; } });
  const long = (async () => { const l = (await s.acquire())!; for (let i = 0; i < 20; i++) await l.step('long'); l.release(); })();
  await tick(); await tick(); await tick();
  const short = (async () => { const l = (await s.acquire())!; await l.step('short'); l.release(); })();
  await Promise.all([long, short]);
  const at = order.indexOf('short');
  t.ok(at > 0 && at < 6, `short ran at step ${at}, long before it finished`);
});

t.test('admission: maxActive slots, FIFO waiters, bounded queue', async (t) => {
  const s = new Scheduler<number, number>({ maxActive: 2, run: async (b) => b });
  const a = (await s.acquire())!;
  const b = (await s.acquire())!;
  t.equal(s.active, 2);
  const got: string[] = [];
  const c = s.acquire({ maxQueue: 2 }).then((l) => { got.push('c'); return l; });
  const d = s.acquire({ maxQueue: 2 }).then((l) => { got.push('d'); return l; });
  t.equal(s.waiting, 2);
  await t.rejects(s.acquire({ maxQueue: 2 }), { code: 'EQUEUEFULL', message: /queue is full/ });
  t.equal(s.waiting, 2, 'a refused request does not wait');
  b.release();
  const lc = await c;
  t.same(got, ['c']);
  a.release();
  const ld = await d;
  t.same(got, ['c', 'd']);
  lc!.release(); ld!.release();
  lc!.release();
  t.equal(s.active, 0, 'release is idempotent');
});

t.test('abort while waiting for a slot resolves null and frees the place', async (t) => {
  const s = new Scheduler<number, number>({ maxActive: 1, run: async (b) => b });
  const a = (await s.acquire())!;
  const ac = new AbortController();
  const w = s.acquire({ signal: ac.signal, maxQueue: 1 });
  t.equal(s.waiting, 1);
  ac.abort();
  t.equal(await w, null);
  t.equal(s.waiting, 0);
  t.equal(await s.acquire({ signal: AbortSignal.abort() }), null, 'already aborted');
  a.release();
});

t.test('abort drops a queued step at once', async (t) => {
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  const ran: string[] = [];
  const s = new Scheduler<string, string>({ run: async ([r]) => { ran.push(r); if (r === 'block') await gate; return [r]; } });
  const la = (await s.acquire())!;
  const ac = new AbortController();
  const lb = (await s.acquire({ signal: ac.signal }))!;
  const pa = la.step('block');
  const pb = lb.step('b');
  ac.abort();
  await t.rejects(pb, { name: 'AbortError' });
  release();
  t.equal(await pa, 'block');
  t.same(ran, ['block'], 'the aborted step never ran');
  await t.rejects(lb.step('again'), { name: 'AbortError' });
  la.release(); lb.release();
});

t.test('maxBatch > 1: pending steps run together (continuous batching shape)', async (t) => {
  const batches: string[][] = [];
  const s = new Scheduler<string, string>({ maxActive: 8, maxBatch: 4, run: async (b) => { batches.push(b); await tick(); return b.map((x) => x.toUpperCase()); } });
  const job = async (name: string, steps: number) => {
    const l = (await s.acquire())!;
    const out: string[] = [];
    for (let i = 0; i < steps; i++) out.push(await l.step(name));
    l.release();
    return out;
  };
  const res = await Promise.all([job('a', 3), job('b', 3), job('c', 1)]);
  t.same(res, [['A', 'A', 'A'], ['B', 'B', 'B'], ['C']]);
  t.same(batches[0], ['a', 'b', 'c'], 'steps queued in the same turn start together');
  t.same(batches.slice(1), [['a', 'b'], ['a', 'b']], 'each step re-queued after a batch joins the next one whole (no fragmentation)');
  t.ok(batches.every((b) => b.length <= 4));
});

t.test('run errors reject the step; wrong result counts are caught', async (t) => {
  const s = new Scheduler<number, number>({ run: async (b) => { if (b[0] === 0) throw new Error('boom'); return []; } });
  const l = (await s.acquire())!;
  await t.rejects(l.step(0), /boom/);
  await t.rejects(l.step(1), /returned 0 results for 1/);
  l.release();
  await s.idle();
  t.throws(() => new Scheduler({ maxActive: 0, run: async (b) => b }), /maxActive/);
});

t.test('maxBatch > 1: a newcomer joins at the next step; a StepFailure fails its request alone', async (t) => {
  const batches: string[][] = [];
  const s = new Scheduler<string, string | StepFailure>({
    maxActive: 8, maxBatch: 8,
    run: async (b) => { batches.push(b); await tick(); return b.map((x) => (x === 'bad' ? new StepFailure(new Error('bad step')) : x.toUpperCase())); },
  });
  const la = (await s.acquire())!;
  const long = (async () => { const out = []; for (let i = 0; i < 4; i++) out.push(await la.step('a')); return out; })();
  await tick(); await tick();
  const lb = (await s.acquire())!;
  const pb = lb.step('b');
  const lc = (await s.acquire())!;
  const pc = lc.step('bad');
  t.equal(await pb, 'B');
  await t.rejects(pc, /bad step/);
  t.same(await long, ['A', 'A', 'A', 'A']);
  const joined = batches.findIndex((b) => b.includes('b'));
  t.ok(joined >= 1 && batches[joined].includes('a') && batches[joined].includes('bad'), `b and bad joined a's batch at step ${joined}: ${JSON.stringify(batches)}`);
  la.release(); lb.release(); lc.release();
  await s.idle();
});
