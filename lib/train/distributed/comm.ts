/**
 * The communicator of data-parallel training, and its TCP backend.
 *
 * `Communicator` is what the training loop needs from its peers: a sum of buffers that every
 * rank receives bit-identical, a broadcast from rank 0, an all-gather, a barrier, and an abort
 * that reaches everyone. Two backends implement the gradient part: NCCL on the GPU (native,
 * native/dist/nccl_comm.h, see nccl.ts) and this TCP one (CPU training, and the control plane
 * — scalars, state, rendezvous — on the GPU too).
 *
 * Topology: a star around rank 0. Every rank connects to rank 0 (`MIMIC_MASTER_ADDR:PORT`);
 * a collective sends each rank's bytes to rank 0, which combines them in rank order and sends
 * the one result back. So the summation order is fixed — ((x₀ + x₁) + x₂) + … in fp32/fp64 —
 * and every rank gets the same bytes: the ranks' AdamW steps stay identical without any
 * re-synchronization. (A ring would spread the bandwidth; the star is chosen for determinism
 * and simplicity: on the CPU the all-reduce is small next to the compute, and the GPU's
 * gradients go through NCCL.)
 *
 * Failure: every wait has a deadline (timeoutMs); a peer whose socket closes, an ABORT frame, a
 * timeout or abort(reason) aborts the communicator: every pending and later call rejects with
 * an Error naming the cause, and rank 0 forwards the abort to every other rank, so no rank
 * waits forever on a dead one.
 */
import net from 'node:net';

/** Buffers a collective sums element-wise. */
export type NumericBuffer = Float32Array | Float64Array;

export interface Communicator {
  readonly rank: number;
  readonly worldSize: number;
  /** Element-wise sum over ranks, in place; every rank ends with identical bytes. */
  allReduceSum(buffers: NumericBuffer[]): Promise<void>;
  /** Rank 0's bytes to every rank (rank 0 passes them, the others pass nothing). */
  broadcast(bytes?: Uint8Array): Promise<Uint8Array>;
  /** Every rank's bytes, in rank order, on every rank. */
  allGather(bytes: Uint8Array): Promise<Uint8Array[]>;
  barrier(): Promise<void>;
  /** Fails every pending and later call with `reason`, and tells the peers. Idempotent. */
  abort(reason: string): void;
  /** Clean shutdown after the last collective. */
  close(): Promise<void>;
  /** Set once aborted: why. */
  readonly aborted: string | null;
  /** Calls `cb(reason)` when the communicator aborts (at once if it already did). */
  onAbort(cb: (reason: string) => void): void;
}

export interface RendezvousOptions {
  rank: number;
  worldSize: number;
  /** Rank 0's address. Default '127.0.0.1'. */
  masterAddr?: string;
  masterPort: number;
  /** How long the ranks wait for each other to join. Default 120 000 ms. */
  joinTimeoutMs?: number;
  /** Deadline of every later collective. Default 600 000 ms (a validation or checkpoint on rank 0 must fit). */
  timeoutMs?: number;
  /** Must be the same on every rank: refuses peers of another run. Default ''. */
  runId?: string;
  /** Rank 0 only: bytes handed to every other rank at the rendezvous (the NCCL unique id). */
  welcome?: Uint8Array;
}

const KIND = { HELLO: 1, WELCOME: 2, DATA: 3, ABORT: 4, BYE: 5 } as const;
const HEADER = 16; // u32 kind, u32 seq, u64 length (as two u32)

function frame(kind: number, seq: number, payload: Uint8Array): Buffer[] {
  const h = Buffer.alloc(HEADER);
  h.writeUInt32LE(kind, 0);
  h.writeUInt32LE(seq >>> 0, 4);
  h.writeUInt32LE(payload.byteLength % 2 ** 32, 8);
  h.writeUInt32LE(Math.floor(payload.byteLength / 2 ** 32), 12);
  return [h, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)];
}

interface Msg { kind: number; seq: number; payload: Buffer }

/** One TCP connection: framed messages in, a queue of waiters. */
class Peer {
  private chunks: Buffer[] = [];
  private have = 0;
  private queue: Msg[] = [];
  private waiter: { resolve: (m: Msg) => void; reject: (e: Error) => void } | null = null;
  private closedWith: Error | null = null;

  constructor(readonly socket: net.Socket, public rank: number, public onAbortFrame: (peer: Peer, reason: string) => void,
    public onClose: (peer: Peer) => void) {
    socket.setNoDelay(true);
    socket.on('data', (d) => this.data(d));
    socket.on('error', () => undefined); // 'close' follows
    socket.on('close', () => this.onClose(this));
  }

  private data(d: Buffer) {
    this.chunks.push(d);
    this.have += d.length;
    for (;;) {
      if (this.have < HEADER) return;
      if (this.chunks[0].length < HEADER) this.chunks = [Buffer.concat(this.chunks)];
      const h = this.chunks[0];
      const len = h.readUInt32LE(8) + h.readUInt32LE(12) * 2 ** 32;
      if (this.have < HEADER + len) return;
      const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
      const msg: Msg = { kind: all.readUInt32LE(0), seq: all.readUInt32LE(4), payload: all.subarray(HEADER, HEADER + len) };
      const rest = all.subarray(HEADER + len);
      this.chunks = rest.length ? [rest] : [];
      this.have = rest.length;
      if (msg.kind === KIND.ABORT) { this.onAbortFrame(this, msg.payload.toString('utf8')); continue; }
      if (this.waiter) { const w = this.waiter; this.waiter = null; w.resolve(msg); } else this.queue.push(msg);
    }
  }

  send(kind: number, seq: number, payload: Uint8Array = new Uint8Array(0)) {
    if (this.socket.destroyed) return;
    for (const b of frame(kind, seq, payload)) this.socket.write(b);
  }

  /** The next message; rejects when the peer fails (fail()) or after timeoutMs. */
  next(timeoutMs: number, what: () => string): Promise<Msg> {
    if (this.queue.length) return Promise.resolve(this.queue.shift()!);
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) => {
      const timer = timeoutMs > 0 ? setTimeout(() => { this.waiter = null; reject(new Error(`mimic: ${what()}: no answer within ${timeoutMs} ms`)); }, timeoutMs) : null;
      this.waiter = {
        resolve: (m) => { if (timer) clearTimeout(timer); resolve(m); },
        reject: (e) => { if (timer) clearTimeout(timer); reject(e); },
      };
    });
  }

  fail(e: Error) {
    this.closedWith ??= e;
    if (this.waiter) { const w = this.waiter; this.waiter = null; w.reject(e); }
  }
}

const envTimeout = () => {
  const v = Number(process.env.MIMIC_DIST_TIMEOUT_MS);
  return Number.isFinite(v) && v > 0 ? v : 600_000;
};

/** The TCP backend; made by rendezvous(). */
export class TcpCommunicator implements Communicator {
  aborted: string | null = null;
  private seq = 0;
  private closing = false;
  /** Rank 0's welcome bytes (the NCCL id), on every rank. */
  welcome: Uint8Array = new Uint8Array(0);

  /** peers: rank 0 holds ranks 1..W-1 (index = rank), the others hold rank 0 at index 0. */
  constructor(readonly rank: number, readonly worldSize: number, private peers: Peer[], readonly timeoutMs: number) {}

  /** @internal wires a peer's failures into this communicator. */
  static hooks(get: () => TcpCommunicator | undefined) {
    return {
      onAbortFrame: (peer: Peer, reason: string) => get()?.abortFrom(peer, reason),
      onClose: (peer: Peer) => {
        const c = get();
        const e = new Error(`mimic: ${peer.rank === 0 ? 'lost the connection to rank 0' : `worker rank ${peer.rank} disconnected`} (it exited or crashed; see its own error)`);
        peer.fail(e);
        if (c && !c.closing) c.abort(e.message.replace(/^mimic: /, ''));
      },
    };
  }

  private abortListeners: ((reason: string) => void)[] = [];
  onAbort(cb: (reason: string) => void): void {
    if (this.aborted) cb(this.aborted);
    else this.abortListeners.push(cb);
  }

  private abortFrom(peer: Peer, reason: string) {
    this.abort(reason, peer);
  }

  abort(reason: string, from?: Peer): void {
    if (this.aborted) return;
    this.aborted = reason;
    const e = new Error(`mimic: distributed training stopped: ${reason}`);
    (e as NodeJS.ErrnoException).code = 'EDISTABORT';
    const bytes = Buffer.from(reason, 'utf8');
    for (const p of this.peers) {
      if (!p) continue;
      if (p !== from) p.send(KIND.ABORT, 0, bytes);
      p.fail(e);
      // let the ABORT frame leave before the socket goes
      p.socket.end();
      setTimeout(() => p.socket.destroy(), 200).unref();
    }
    for (const cb of this.abortListeners.splice(0)) { try { cb(reason); } catch { /* a listener's failure changes nothing */ } }
  }

  private check(): void {
    if (this.aborted) {
      const e = new Error(`mimic: distributed training stopped: ${this.aborted}`);
      (e as NodeJS.ErrnoException).code = 'EDISTABORT';
      throw e;
    }
  }

  private async guard<T>(f: () => Promise<T>, what: string): Promise<T> {
    this.check();
    try {
      return await f();
    } catch (e) {
      const msg = (e as Error).message.replace(/^mimic: /, '');
      if (!this.aborted) this.abort(`${what} on rank ${this.rank}: ${msg}`);
      throw e;
    }
  }

  /** The core: every rank's bytes to rank 0, `combine` there, the result to every rank. */
  private exchange(mine: Uint8Array, combine: (all: Uint8Array[]) => Uint8Array, what: string): Promise<Uint8Array> {
    const seq = ++this.seq;
    return this.guard(async () => {
      if (this.worldSize === 1) return combine([mine]);
      if (this.rank === 0) {
        const all: Uint8Array[] = [mine];
        for (let r = 1; r < this.worldSize; r++) {
          const m = await this.peers[r].next(this.timeoutMs, () => `${what} (#${seq}) waiting for worker rank ${r}`);
          if (m.kind !== KIND.DATA || m.seq !== seq) throw new Error(`mimic: ${what}: rank ${r} is out of step (collective #${m.seq}, expected #${seq})`);
          all.push(m.payload);
        }
        const out = combine(all);
        for (let r = 1; r < this.worldSize; r++) this.peers[r].send(KIND.DATA, seq, out);
        return out;
      }
      this.peers[0].send(KIND.DATA, seq, mine);
      const m = await this.peers[0].next(this.timeoutMs, () => `${what} (#${seq}) waiting for rank 0`);
      if (m.kind !== KIND.DATA || m.seq !== seq) throw new Error(`mimic: ${what}: out of step with rank 0 (collective #${m.seq}, expected #${seq})`);
      return m.payload;
    }, what);
  }

  async allReduceSum(buffers: NumericBuffer[]): Promise<void> {
    const bytes = buffers.reduce((n, b) => n + b.byteLength, 0);
    const mine = new Uint8Array(bytes);
    let off = 0;
    for (const b of buffers) { mine.set(new Uint8Array(b.buffer, b.byteOffset, b.byteLength), off); off += b.byteLength; }
    const out = await this.exchange(mine, (all) => {
      for (const a of all) if (a.byteLength !== bytes) throw new Error(`mimic: allReduceSum: ranks disagree on the size (${a.byteLength} vs ${bytes} bytes)`);
      const acc = new Uint8Array(bytes);
      let o = 0;
      for (const b of buffers) {
        const Ctor = b instanceof Float32Array ? Float32Array : Float64Array;
        const view = (u: Uint8Array) => new Ctor(new Uint8Array(u.subarray(o, o + b.byteLength)).buffer); // an aligned copy
        const A = view(all[0]);
        for (let r = 1; r < all.length; r++) {
          const B = view(all[r]);
          for (let i = 0; i < A.length; i++) A[i] += B[i]; // stored back as fp32/fp64: the ranks' sum in rank order
        }
        acc.set(new Uint8Array(A.buffer), o);
        o += b.byteLength;
      }
      return acc;
    }, 'allReduceSum');
    off = 0;
    for (const b of buffers) { new Uint8Array(b.buffer, b.byteOffset, b.byteLength).set(out.subarray(off, off + b.byteLength)); off += b.byteLength; }
  }

  async allGather(bytes: Uint8Array): Promise<Uint8Array[]> {
    const out = await this.exchange(bytes, (all) => {
      const head = Buffer.alloc(4 + 8 * all.length);
      head.writeUInt32LE(all.length, 0);
      all.forEach((a, i) => head.writeDoubleLE(a.byteLength, 4 + 8 * i));
      return Buffer.concat([head, ...all.map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength))]);
    }, 'allGather');
    const b = Buffer.from(out.buffer, out.byteOffset, out.byteLength);
    const n = b.readUInt32LE(0);
    const parts: Uint8Array[] = [];
    let off = 4 + 8 * n;
    for (let i = 0; i < n; i++) { const len = b.readDoubleLE(4 + 8 * i); parts.push(new Uint8Array(b.subarray(off, off + len))); off += len; }
    return parts;
  }

  async broadcast(bytes?: Uint8Array): Promise<Uint8Array> {
    if (this.rank === 0 && !bytes) throw new Error('mimic: broadcast: rank 0 must pass the bytes');
    return new Uint8Array(await this.exchange(this.rank === 0 ? bytes! : new Uint8Array(0), (all) => all[0], 'broadcast'));
  }

  async barrier(): Promise<void> {
    await this.exchange(new Uint8Array(0), () => new Uint8Array(0), 'barrier');
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (!this.aborted && this.worldSize > 1) {
      // a last barrier, so that no rank closes while another still waits on it
      try { await this.exchange(new Uint8Array(0), () => new Uint8Array(0), 'close'); } catch { /* aborted meanwhile */ }
    }
    await Promise.all(this.peers.filter(Boolean).map((p) => new Promise<void>((resolve) => {
      if (p.socket.destroyed) return resolve();
      p.socket.once('close', () => resolve());
      p.socket.end();
      setTimeout(() => { p.socket.destroy(); resolve(); }, 1000).unref();
    })));
  }
}

function rendezvousError(msg: string, code = 'ERENDEZVOUS'): Error {
  const e = new Error(`mimic: rendezvous failed: ${msg}`);
  (e as NodeJS.ErrnoException).code = code;
  return e;
}

/**
 * Joins the ranks: rank 0 listens on masterAddr:masterPort and waits for the others, which
 * connect (retrying while rank 0 is not up yet) and introduce themselves; rank 0 checks
 * world size, rank and runId, and answers with its welcome bytes. Rejects with a clear error
 * (ERENDEZVOUS / ETIMEDOUT) on a bad port, an unreachable master, a mismatched peer or a timeout.
 */
export async function rendezvous(o: RendezvousOptions): Promise<TcpCommunicator> {
  const { rank, worldSize } = o;
  const addr = o.masterAddr ?? '127.0.0.1';
  const port = o.masterPort;
  const joinTimeout = o.joinTimeoutMs ?? 120_000;
  const timeoutMs = o.timeoutMs ?? envTimeout();
  const runId = o.runId ?? '';
  if (!Number.isInteger(worldSize) || worldSize < 1) throw rendezvousError(`world size must be a whole number ≥ 1 (got ${worldSize}; MIMIC_WORLD_SIZE)`, 'EINVAL');
  if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize) throw rendezvousError(`rank must be in [0, ${worldSize}) (got ${rank}; MIMIC_RANK)`, 'EINVAL');
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw rendezvousError(`master port must be in 1..65535 (got ${port}; MIMIC_MASTER_PORT)`, 'EINVAL');
  let comm: TcpCommunicator | undefined;
  const hooks = TcpCommunicator.hooks(() => comm);
  const where = `${addr}:${port}`;

  if (worldSize === 1) {
    comm = new TcpCommunicator(0, 1, [], timeoutMs);
    comm.welcome = o.welcome ?? new Uint8Array(0);
    return comm;
  }

  if (rank === 0) {
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => reject(rendezvousError(
        `rank 0 cannot listen on ${where}: ${e.code === 'EADDRINUSE' ? 'the port is in use (choose another MIMIC_MASTER_PORT)' : e.code === 'EADDRNOTAVAIL' ? 'the address is not one of this host\'s (MIMIC_MASTER_ADDR)' : e.message}`)));
      server.listen(port, addr, () => resolve());
    });
    const peers: Peer[] = new Array(worldSize);
    try {
      await new Promise<void>((resolve, reject) => {
        let joined = 0;
        const timer = setTimeout(() => {
          const missing = [...Array(worldSize).keys()].filter((r) => r > 0 && !peers[r]);
          reject(rendezvousError(`only ${joined} of ${worldSize - 1} workers joined rank 0 on ${where} within ${joinTimeout} ms (missing rank ${missing.join(', ')})`, 'ETIMEDOUT'));
        }, joinTimeout);
        server.on('connection', (socket) => {
          const peer = new Peer(socket, -1, () => undefined, () => undefined);
          peer.next(joinTimeout, () => 'waiting for a worker to introduce itself').then((m) => {
            let hello: { rank?: number; worldSize?: number; runId?: string } = {};
            try { hello = JSON.parse(m.payload.toString('utf8')); } catch { /* checked below */ }
            const refuse = (why: string) => { peer.send(KIND.ABORT, 0, Buffer.from(why)); socket.end(); };
            if (m.kind !== KIND.HELLO) return refuse('not a mimic worker');
            if (hello.worldSize !== worldSize) return refuse(`world size mismatch: rank 0 has ${worldSize}, rank ${hello.rank} has ${hello.worldSize}`);
            if (hello.runId !== runId) return refuse(`run id mismatch: rank ${hello.rank} belongs to another run`);
            const r = hello.rank!;
            if (!Number.isInteger(r) || r < 1 || r >= worldSize) return refuse(`rank ${r} is out of range [1, ${worldSize})`);
            if (peers[r]) return refuse(`rank ${r} joined twice (two workers with the same MIMIC_RANK)`);
            peer.rank = r;
            peer.onAbortFrame = hooks.onAbortFrame;
            peer.onClose = hooks.onClose;
            peers[r] = peer;
            if (++joined === worldSize - 1) { clearTimeout(timer); resolve(); }
          }, () => socket.destroy());
        });
      });
    } catch (e) {
      for (const p of peers) p?.socket.destroy();
      server.close();
      throw e;
    }
    server.close();
    comm = new TcpCommunicator(0, worldSize, peers, timeoutMs);
    comm.welcome = o.welcome ?? new Uint8Array(0);
    for (let r = 1; r < worldSize; r++) peers[r].send(KIND.WELCOME, 0, comm.welcome);
    return comm;
  }

  // rank > 0: connect, retrying while rank 0 is not listening yet
  const deadline = Date.now() + joinTimeout;
  let socket: net.Socket | undefined;
  let last = '';
  while (!socket) {
    try {
      socket = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({ host: addr, port }, () => { s.removeAllListeners('error'); resolve(s); });
        s.once('error', reject);
        s.setTimeout(Math.max(100, Math.min(5000, deadline - Date.now())), () => s.destroy(new Error('connect timed out')));
      });
      socket.setTimeout(0);
    } catch (e) {
      last = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      if (Date.now() + 100 > deadline) {
        throw rendezvousError(`rank ${rank} could not reach rank 0 at ${where} within ${joinTimeout} ms (${last}): is rank 0 running, and are MIMIC_MASTER_ADDR / MIMIC_MASTER_PORT right?`, 'ETIMEDOUT');
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  let refused: string | null = null;
  const peer = new Peer(socket, 0, (_p, reason) => { refused = reason; peer.fail(rendezvousError(`rank 0 refused rank ${rank}: ${reason}`)); },
    () => peer.fail(rendezvousError(refused ? `rank 0 refused rank ${rank}: ${refused}` : `rank 0 at ${where} closed the connection during the rendezvous`)));
  peer.send(KIND.HELLO, 0, Buffer.from(JSON.stringify({ rank, worldSize, runId })));
  const m = await peer.next(Math.max(1, deadline - Date.now()), () => `rank ${rank} waiting for rank 0 to welcome it (all ${worldSize} ranks must join)`)
    .catch((e: Error) => { socket!.destroy(); throw /rendezvous failed/.test(e.message) ? e : rendezvousError(e.message.replace(/^mimic: /, ''), 'ETIMEDOUT'); });
  if (m.kind !== KIND.WELCOME) { socket.destroy(); throw rendezvousError(`unexpected answer from rank 0 (kind ${m.kind})`); }
  // from now on, the communicator handles this socket's failures
  peer.onAbortFrame = hooks.onAbortFrame;
  peer.onClose = hooks.onClose;
  comm = new TcpCommunicator(rank, worldSize, [peer], timeoutMs);
  comm.welcome = new Uint8Array(m.payload);
  return comm;
}
