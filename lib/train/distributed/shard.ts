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
 */
export function shardStep(micro: number[][], lengths: ArrayLike<number>, worldSize: number): number[][][] {
  const out: number[][][] = Array.from({ length: worldSize }, () => []);
  if (worldSize === 1) { out[0] = micro.map((m) => [...m]); return out; }
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
    micro.forEach((m, i) => out[owner[i]].push([...m]));
    return out;
  }
  for (const m of micro) {
    const parts = Math.min(worldSize, m.length);
    let start = 0;
    for (let r = 0; r < parts; r++) {
      const n = Math.floor(m.length / parts) + (r < m.length % parts ? 1 : 0);
      out[r].push(m.slice(start, start + n));
      start += n;
    }
  }
  return out;
}
