/**
 * Which micro-batches of an optimizer step each rank runs.
 *
 * Every rank plans the same seeded global order (planBatches), so the step's micro-batches are
 * known everywhere without talking; this pure function splits them. The union over ranks is
 * exactly the step's examples, so the summed gradient — and with gradScale = 1 / (global
 * unmasked targets) the step — is the one device's.
 *
 *  - at least as many micro-batches as ranks: whole micro-batches, balanced by padded tokens
 *    (rows × longest row) with longest-processing-time-first (ties to the lower index/rank), each
 *    rank keeping them in the global order;
 *  - fewer (e.g. gradAccum 1 on 2 GPUs): the rows of each micro-batch are split into contiguous
 *    parts, one a rank, so that the ranks still share the work (a one-row micro-batch leaves
 *    the other ranks idle for it: they contribute a zero gradient).
 *
 * shardStepKeyed also says where each share sits in the step (MicroBatchKey), which seeds its
 * dropout: whole micro-batches draw one device's masks; a split micro-batch's parts draw their
 * own (other tensors: [rows of the part, longest row of the part]), independent of each other.
 */

/**
 * Where a micro-batch sits in the run: the optimizer step (0-based, over the whole run), its index
 * among that step's micro-batches in the global order, and — when its rows were split across the
 * ranks — which part (1-based; 0 for a whole micro-batch). The native trainer seeds the
 * micro-batch's dropout masks from (seed, step, micro, part) alone (accumulate's 5th argument),
 * so a whole micro-batch gets the masks it gets on one device, whichever rank runs it.
 */
export interface MicroBatchKey { step: number; micro: number; part: number }

/** One rank's share of a step: the example indices of each of its micro-batches, with their place in the step. */
export interface Shard { idx: number[]; micro: number; part: number }

export function shardStep(micro: number[][], lengths: ArrayLike<number>, worldSize: number): number[][][] {
  return shardStepKeyed(micro, lengths, worldSize).map((r) => r.map((s) => s.idx));
}

/** shardStep, each micro-batch with its index in the step (and its part, where rows are split). */
export function shardStepKeyed(micro: number[][], lengths: ArrayLike<number>, worldSize: number): Shard[][] {
  const out: Shard[][] = Array.from({ length: worldSize }, () => []);
  if (worldSize === 1) { out[0] = micro.map((m, j) => ({ idx: [...m], micro: j, part: 0 })); return out; }
  if (micro.length >= worldSize) {
    const cost = micro.map((m) => m.length * Math.max(...m.map((i) => lengths[i])));
    const order = micro.map((_, i) => i).sort((a, b) => cost[b] - cost[a] || a - b);
    const load = new Array(worldSize).fill(0);
    const owner = new Array(micro.length).fill(0);
    for (const i of order) {
      let best = 0;
      for (let r = 1; r < worldSize; r++) if (load[r] < load[best]) best = r;
      owner[i] = best;
      load[best] += cost[i];
    }
    micro.forEach((m, j) => out[owner[j]].push({ idx: [...m], micro: j, part: 0 }));
    return out;
  }
  micro.forEach((m, j) => {
    const parts = Math.min(worldSize, m.length);
    let start = 0;
    for (let r = 0; r < parts; r++) {
      const n = Math.floor(m.length / parts) + (r < m.length % parts ? 1 : 0);
      // a micro-batch left whole (one row) keeps part 0: the same tensors, the same masks as one device
      out[r].push({ idx: m.slice(start, start + n), micro: j, part: parts > 1 ? r + 1 : 0 });
      start += n;
    }
  });
  return out;
}
