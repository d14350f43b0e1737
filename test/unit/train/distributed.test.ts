// The data-parallel plumbing without the addon: the TCP communicator (rendezvous, collectives,
// determinism, failures, timeouts), the step sharding and its dropout keys, the NCCL teardown of
// a rank, how the parent reads its workers' ends, and the CLI flags.
import t from 'tap';
import net from 'node:net';
import { EventEmitter } from 'node:events';
import type { ChildProcess } from 'node:child_process';
import { rendezvous, type Communicator, type TcpCommunicator } from '../../../lib/train/distributed/comm.ts';
import { shardStep, shardStepKeyed } from '../../../lib/train/distributed/shard.ts';
import { decodeJsonAndTensors, encodeJsonAndTensors, makeDistContext, type NcclEnd } from '../../../lib/train/distributed/context.ts';
import { freePort, resolveDistributed, runDistributed } from '../../../lib/train/distributed/launch.ts';
import type { NativeTrainer } from '../../../lib/native.ts';
import { distributedFlags } from '../../../lib/cli/train.ts';
import { Rng } from '../../../lib/train/rng.ts';

async function group(world: number, extra: { timeoutMs?: number; joinTimeoutMs?: number } = {}): Promise<TcpCommunicator[]> {
  const port = await freePort();
  return Promise.all([...Array(world).keys()].map((rank) => rendezvous({ rank, worldSize: world, masterPort: port, joinTimeoutMs: 5000, timeoutMs: 5000, ...extra })));
}

t.test('allReduceSum: every rank gets the same bits, the fp32 sum in rank order', async (t) => {
  const world = 3;
  const comms = await group(world);
  const rng = new Rng(5);
  const n = 1001;
  const inputs = comms.map(() => new Float32Array(n).map(() => (rng.next() - 0.5) * 10 ** Math.floor(rng.next() * 8 - 4)));
  const scal = comms.map((_, r) => Float64Array.of(r + 0.1, 1e-17 * r));
  const bufs = inputs.map((x) => x.slice());
  await Promise.all(comms.map((c, r) => c.allReduceSum([bufs[r], scal[r]])));
  const want = new Float32Array(n);
  for (let i = 0; i < n; i++) want[i] = Math.fround(Math.fround(inputs[0][i] + inputs[1][i]) + inputs[2][i]);
  for (let r = 0; r < world; r++) {
    t.same(Buffer.from(bufs[r].buffer), Buffer.from(want.buffer), `rank ${r}: bit-identical to ((x0 + x1) + x2)`);
    t.same(Array.from(scal[r]), [(0.1 + 1.1) + 2.1, (0 + 1e-17) + 2e-17], `rank ${r}: fp64 scalars`);
  }
  const g = await Promise.all(comms.map((c, r) => c.allGather(Uint8Array.of(r, r))));
  for (const parts of g) t.same(parts.map((p) => Array.from(p)), [[0, 0], [1, 1], [2, 2]], 'allGather in rank order');
  const b = await Promise.all(comms.map((c) => c.broadcast(c.rank === 0 ? Uint8Array.of(7, 8, 9) : undefined)));
  for (const x of b) t.same(Array.from(x), [7, 8, 9], 'broadcast from rank 0');
  await Promise.all(comms.map((c) => c.barrier()));
  await Promise.all(comms.map((c) => c.close()));
});

t.test('a big buffer crosses in pieces', async (t) => {
  const comms = await group(2);
  const a = new Float32Array(3_000_000).fill(1), b = new Float32Array(3_000_000).fill(2);
  await Promise.all([comms[0].allReduceSum([a]), comms[1].allReduceSum([b])]);
  t.ok(a.every((x) => x === 3) && b.every((x) => x === 3), '12 MB summed on both ranks');
  await Promise.all(comms.map((c) => c.close()));
});

t.test('rendezvous errors are clear', async (t) => {
  const busy = net.createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => busy.close());
  const busyPort = (busy.address() as net.AddressInfo).port;
  await t.rejects(rendezvous({ rank: 0, worldSize: 2, masterPort: busyPort, joinTimeoutMs: 500 }), { code: 'ERENDEZVOUS', message: /in use/ }, 'port in use');
  await t.rejects(rendezvous({ rank: 0, worldSize: 2, masterPort: 70000 }), { code: 'EINVAL', message: /MIMIC_MASTER_PORT/ }, 'port out of range');
  await t.rejects(rendezvous({ rank: 2, worldSize: 2, masterPort: 1234 }), { code: 'EINVAL', message: /MIMIC_RANK/ }, 'rank out of range');
  const port = await freePort();
  let t0 = Date.now();
  await t.rejects(rendezvous({ rank: 1, worldSize: 2, masterPort: port, joinTimeoutMs: 400 }), { code: 'ETIMEDOUT', message: /could not reach rank 0 at 127\.0\.0\.1:\d+ within 400 ms/ }, 'no master');
  t.ok(Date.now() - t0 < 3000, 'within the timeout');
  t0 = Date.now();
  await t.rejects(rendezvous({ rank: 0, worldSize: 3, masterPort: port, joinTimeoutMs: 400 }), { code: 'ETIMEDOUT', message: /only 0 of 2 workers joined.*missing rank 1, 2/ }, 'missing workers');
  t.ok(Date.now() - t0 < 3000, 'within the timeout');
  const port2 = await freePort();
  const [r0, r1] = await Promise.allSettled([
    rendezvous({ rank: 0, worldSize: 2, masterPort: port2, joinTimeoutMs: 800 }),
    rendezvous({ rank: 1, worldSize: 3, masterPort: port2, joinTimeoutMs: 800 }),
  ]);
  t.equal(r1.status, 'rejected');
  t.match((r1 as PromiseRejectedResult).reason.message, /refused rank 1: world size mismatch: rank 0 has 2, rank 1 has 3/, 'a mismatched world size is refused');
  t.equal(r0.status, 'rejected', 'and rank 0 times out without it');
});

t.test('failures reach every rank: abort, a dead peer, a collective timeout', async (t) => {
  let comms = await group(3);
  let p = comms.slice(0, 2).map((c) => c.allReduceSum([new Float32Array(4)]));
  comms[2].abort('rank 2 ran out of memory');
  for (const [i, x] of p.entries()) await t.rejects(x, { code: 'EDISTABORT', message: /rank 2 ran out of memory/ }, `rank ${i} stops with rank 2's reason`);
  await t.rejects(comms[0].barrier(), { message: /stopped/ }, 'later calls fail too');

  comms = await group(3);
  p = [comms[0].barrier(), comms[2].barrier()];
  const t0 = Date.now();
  (comms[1] as unknown as { peers: { socket: net.Socket }[] }).peers[0].socket.destroy(); // as if rank 1 were killed
  await t.rejects(p[0], { message: /worker rank 1 disconnected/ }, 'rank 0 sees rank 1 go');
  await t.rejects(p[1], { message: /worker rank 1 disconnected/ }, 'rank 2 hears it from rank 0');
  t.ok(Date.now() - t0 < 2000, `within ${Date.now() - t0} ms`);

  comms = await group(2, { timeoutMs: 300 });
  await t.rejects(comms[0].barrier(), { message: /barrier \(#1\) waiting for worker rank 1: no answer within 300 ms/ }, 'a stuck peer times out');
  await t.rejects(comms[1].barrier(), { message: /stopped/ }, 'and the stuck rank learns of it');
});

t.test('shardStep: every example once, balanced, deterministic', async (t) => {
  const lengths = [5, 9, 3, 7, 7, 2, 8, 4, 6, 1];
  const micro = [[0, 2], [1], [3, 4], [5, 9], [6], [7, 8]];
  for (const world of [1, 2, 3, 4, 6, 8]) {
    const s = shardStep(micro, lengths, world);
    t.equal(s.length, world);
    t.same(s.flat(2).sort((a, b) => a - b), micro.flat().sort((a, b) => a - b), `world ${world}: the union is the step's examples`);
    t.same(s, shardStep(micro, lengths, world), 'the same on every call');
  }
  const s2 = shardStep(micro, lengths, 2).map((m) => m.reduce((n, b) => n + b.length * Math.max(...b.map((i) => lengths[i])), 0));
  t.ok(Math.abs(s2[0] - s2[1]) <= 9, `balanced padded tokens ${s2.join(' / ')}`);
  t.same(shardStep([[4, 5, 6, 7, 8]], lengths, 2), [[[4, 5, 6]], [[7, 8]]], 'fewer micro-batches than ranks: rows split');
  t.same(shardStep([[4]], lengths, 3), [[[4]], [], []], 'a one-row step leaves the others idle');
});

t.test('shardStepKeyed: each share knows its place in the step (the dropout key)', async (t) => {
  const lengths = [5, 9, 3, 7, 7, 2, 8, 4, 6, 1];
  const micro = [[0, 2], [1], [3, 4], [5, 9], [6], [7, 8]];
  t.same(shardStepKeyed(micro, lengths, 1), [micro.map((idx, j) => ({ idx, micro: j, part: 0 }))], 'one rank: index j, part 0');
  for (const world of [2, 3, 6]) {
    const s = shardStepKeyed(micro, lengths, world);
    t.same(s.map((r) => r.map((x) => x.idx)), shardStep(micro, lengths, world), `world ${world}: the same shares as shardStep`);
    const seen = s.flat().map((x) => x.micro).sort((a, b) => a - b);
    t.same(seen, micro.map((_, j) => j), `world ${world}: every micro-batch once, under its global index`);
    t.ok(s.flat().every((x) => x.part === 0 && x.idx.join() === micro[x.micro].join()), 'whole micro-batches: part 0, the same rows as on one device');
    for (const r of s) t.same(r.map((x) => x.micro), [...r.map((x) => x.micro)].sort((a, b) => a - b), 'each rank in the global order');
  }
  t.same(shardStepKeyed([[4, 5, 6, 7, 8], [1, 2]], lengths, 3), [
    [{ idx: [4, 5], micro: 0, part: 1 }, { idx: [1], micro: 1, part: 1 }],
    [{ idx: [6, 7], micro: 0, part: 2 }, { idx: [2], micro: 1, part: 2 }],
    [{ idx: [8], micro: 0, part: 3 }],
  ], 'rows split: parts 1.. of the same micro-batch index');
  t.same(shardStepKeyed([[4]], lengths, 2), [[{ idx: [4], micro: 0, part: 0 }], []], 'a one-row micro-batch stays whole: part 0');
});

t.test('DistContext.close: destroys a healthy NCCL communicator, aborts after an error, once; tolerates a build without NCCL', async (t) => {
  const fakeComm = () => {
    const listeners: ((r: string) => void)[] = [];
    const c = {
      rank: 0, worldSize: 2, aborted: null as string | null,
      onAbort(cb: (r: string) => void) { if (c.aborted) cb(c.aborted); else listeners.push(cb); },
      abort(reason: string) { c.aborted = reason; for (const cb of listeners.splice(0)) cb(reason); },
      async broadcast(x?: Uint8Array) { return x ?? new Uint8Array(128); },
    };
    return c as unknown as Communicator;
  };
  const fakeTrainer = (destroy: (calls: string[]) => Promise<NcclEnd>) => {
    const calls: string[] = [];
    let aborted = false;
    const tr = {
      async ncclInit() { calls.push('init'); },
      ncclAbort() { calls.push('abort'); aborted = true; },
      ncclDestroy(ms?: number) { calls.push(`destroy ${ms}`); return aborted ? Promise.resolve('aborted' as NcclEnd) : destroy(calls); },
    };
    return { tr: tr as unknown as NativeTrainer, calls };
  };

  let comm = fakeComm();
  let ctx = makeDistContext(comm, 'nccl', { timeoutMs: 1234, ncclId: new Uint8Array(128) });
  let f = fakeTrainer(async () => 'destroyed');
  await ctx.attach!(f.tr);
  t.equal(await ctx.close(), 'destroyed', 'a healthy communicator: ncclDestroy');
  t.equal(await ctx.close(), 'none', 'idempotent');
  t.same(f.calls, ['init', 'destroy 1234'], 'destroyed once, with the collective deadline; never aborted');

  comm = fakeComm();
  ctx = makeDistContext(comm, 'nccl', { timeoutMs: 50, ncclId: new Uint8Array(128) });
  f = fakeTrainer(async () => 'destroyed');
  await ctx.attach!(f.tr);
  comm.abort('rank 1 failed');
  t.equal(await ctx.close(), 'aborted', 'after an abort of the run: ncclCommAbort');
  t.same(f.calls, ['init', 'abort', 'destroy 50'], 'ncclAbort first, so that the destroy never waits on the peers');

  ctx = makeDistContext(fakeComm(), 'nccl', { timeoutMs: 50, ncclId: new Uint8Array(128) });
  f = fakeTrainer(async () => { throw Object.assign(new Error('no NCCL in this build'), { code: 'ENOTSUP' }); });
  await ctx.attach!(f.tr);
  t.equal(await ctx.close(), 'none', 'ENOTSUP is tolerated');

  ctx = makeDistContext(fakeComm(), 'nccl', { timeoutMs: 50 });
  t.equal(await ctx.close(), 'none', 'never attached: nothing to end');
  ctx = makeDistContext(fakeComm(), 'tcp', { timeoutMs: 50 });
  await ctx.attach!(fakeTrainer(async () => 'destroyed').tr);
  t.equal(await ctx.close(), 'none', 'the TCP transport has no communicator to end');
});

/** A scripted worker: on 'start' it plays `events` (emit name, args) in order, one a macrotask. */
function scriptedFork(scripts: Record<number, [string, ...unknown[]][]>) {
  let next = 0;
  return (_file: URL, env: NodeJS.ProcessEnv): ChildProcess => {
    const rank = Number(env.MIMIC_RANK);
    const c = new EventEmitter() as EventEmitter & { pid: number; exitCode: number | null; signalCode: string | null; connected: boolean; send(m: { type: string }): boolean; kill(): boolean };
    Object.assign(c, { pid: 90000 + next++, exitCode: null, signalCode: null, connected: true, kill: () => true });
    c.send = (m) => {
      if (m.type === 'start') {
        (async () => {
          for (const [name, ...args] of scripts[rank]) {
            await new Promise((r) => setImmediate(r));
            if (name === 'exit') { c.exitCode = args[0] as number | null; c.signalCode = args[1] as string | null; }
            if (name === 'close') c.connected = false;
            c.emit(name, ...args);
          }
        })();
      }
      return true;
    };
    return c as unknown as ChildProcess;
  };
}

t.test('the parent reads a worker\'s end on close, after its last message (exit can come first)', async (t) => {
  const opts = { model: 'm', data: 'd', out: 'o', workers: 2 };
  const report = { steps: 7, worldSize: 2 };
  // rank 0's exit notice overtakes its report, still in the IPC pipe
  const ok = await runDistributed(opts, { fork: scriptedFork({
    0: [['exit', 0, null], ['message', { type: 'report', report }], ['close', 0, null]],
    1: [['exit', 0, null], ['close', 0, null]],
  }) });
  t.same(ok, report, 'the report that came after the exit notice resolves the run');

  const err = await runDistributed(opts, { graceMs: 100, fork: scriptedFork({
    0: [['exit', 1, null], ['message', { type: 'error', message: 'mimic: distributed training stopped: worker rank 1 disconnected' }], ['close', 1, null]],
    1: [['exit', 3, null], ['message', { type: 'error', message: 'mimic: rank 1 ran out of memory' }], ['close', 3, null]],
  }) }).then(() => null, (e: Error) => e);
  t.ok(err, 'a failed worker fails the run');
  t.match(err!.message, /worker rank 1 \(pid \d+\) exited with code 3: rank 1 ran out of memory/, 'with the error it sent before its channel closed');
  t.match(err!.message, /worker rank 0 .* exited with code 1: distributed training stopped: worker rank 1 disconnected/);
});

t.test('real worker processes (a stand-in script): the report and errors arrive', async (t) => {
  const workerFile = new URL('./fake-dist-worker.ts', import.meta.url);
  const saved = { ...process.env };
  t.teardown(() => { process.env = saved; });
  process.env.MIMIC_FAKE_REPORT_MB = '4';
  const steps: number[] = [];
  const r = await runDistributed({ model: 'm', data: 'd', out: 'o', workers: 2, onProgress: (p) => steps.push(p.step) }, { workerFile }) as unknown as { steps: number; blob: string };
  t.equal(r.steps, 7);
  t.equal(r.blob.length, 4 << 20, 'a 4 MiB report, whole');
  t.same(steps, [1], 'progress forwarded');
  process.env.MIMIC_FAKE_EXIT = '3';
  await t.rejects(runDistributed({ model: 'm', data: 'd', out: 'o', workers: 2 }, { workerFile, graceMs: 2000 }),
    { message: /worker rank 1 \(pid \d+\) exited with code 3: rank 1 ran out of luck/ });
});

t.test('state over the wire; options from the environment; CLI flags', async (t) => {
  const bytes = encodeJsonAndTensors({ a: 1, s: 'x' }, { w: Float32Array.of(1, 2, 3), v: Float32Array.of(-0) });
  const d = decodeJsonAndTensors<{ a: number; s: string }>(bytes.subarray(0));
  t.same(d.json, { a: 1, s: 'x' });
  t.same(Array.from(d.tensors.w), [1, 2, 3]);
  t.equal(Object.is(d.tensors.v[0], -0), true);

  const saved = { ...process.env };
  t.teardown(() => { process.env = saved; });
  process.env.MIMIC_WORLD_SIZE = '4'; process.env.MIMIC_RANK = '3'; process.env.MIMIC_MASTER_ADDR = '10.0.0.1'; process.env.MIMIC_MASTER_PORT = '4000';
  t.match(resolveDistributed({}), { worldSize: 4, rank: 3, masterAddr: '10.0.0.1', masterPort: 4000 });
  t.match(resolveDistributed({ rank: 1, masterPort: 5 }), { worldSize: 4, rank: 1, masterPort: 5 }, 'options win over the environment');
  delete process.env.MIMIC_RANK;
  t.throws(() => resolveDistributed({}), /MIMIC_RANK/);
  process.env.MIMIC_RANK = 'x';
  t.throws(() => resolveDistributed({}), /MIMIC_RANK must be a whole number/);

  t.same(distributedFlags({ gpus: 2 }), { devices: [0, 1] });
  t.same(distributedFlags({ workers: 3 }), { workers: 3 });
  t.same(distributedFlags({ rendezvous: true }), { devices: {} });
  t.same(distributedFlags({}), {});
  t.throws(() => distributedFlags({ gpus: 2, workers: 2 }), /cannot be combined/);
});
