// decode_persist — all layers of a batch-1 decode step as ONE persistent kernel, the same bits as
// decode_step.cu's graph of ~7 launches a layer (opt-in: MIMIC_DECODE_PERSIST=1).
//
// Why (bench/NOTES.md round 17). The step reads ~2.2 GB of weights; the graph streams a launch's
// weights only while the launch ahead drains (PDL), so every boundary is a bubble in the stream:
// with the products switched off altogether (MIMIC_GEMV_TC_ABLATE=2) the step still took 1.06 ms,
// 0.50 of the bandwidth bound. Weights depend on no activation, so nothing but the kernel
// boundaries stops them from streaming ahead across stages and layers.
//
// Layout. One block an SM (grid = the SMs, all co-resident: a cooperative launch) of 12 warps.
// Stages a layer: Q (q/k/v tiles + RoPE + KV append), A (attention, a query
// head an item), O (o + residual), G (gate/up, silu(gate)·up), D (down + residual). Tile i of a stage
// belongs to block i mod grid; head h to block grid − 1 − h (the blocks with fewer Q tiles).
//   copies (Filler): the block's tiles in order (layer by layer: its Q, O, G, D tiles), each one's
//     4-bit rows, absmax codes and absmax2 slice into a ring in shared memory (cp.async; an mbarrier
//     per item completes when its bytes landed), as far ahead as the ring's room and kNF items allow,
//     issued again each time an item's products free its bytes.
//   products: the items in the same order — wait for the bytes, decode the absmax, and (once a
//     stage) wait for the stage ahead: every block adds its finished items to a global counter
//     (fence, then an atomic: a release) and a consumer block spins on it (an acquire) — then run
//     gemv_tc's tile product (gemv_tc_tile.cuh) with the warp split gemv_tc would choose (the same
//     sums) and its epilogue. Each block that needs a norm computes it itself into shared memory,
//     once a stage (RmsRow: rmsnorm_rows' order), and copies the o and down inputs (attention out,
//     silu(gate)·up) to shared memory once a stage.
// Every buffer a stage writes is read only by the next stage or by its own rows, and written again
// only a whole chain of counters later: one set of buffers serves all layers. A wait that spins for
// 2 s (or for an item's bytes) sets the error word and lets the kernel run out (wrong results, no
// hang; mimic_cuda_check batch reads it).
//
// Status (round 17, H200): the same logits as the graph bit for bit (mimic_cuda_check batch rows),
// but 2.4-2.5 ms a step against the graph's 1.50: per SM one block runs the items one after another
// (products 2-4 µs an item, latency-bound at 3 warps a scheduler), where the graph runs two product
// blocks an SM side by side. Next: two items in flight an SM, or items of two tiles sharing x (more
// independent MMA chains a warp: MIMIC_DECODE_PERSIST_PAIRS=1, written, not yet measured) — NOTES
// round 17.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/env.h"
#include "cuda/common.cuh"
#include "cuda/decode_kernels.cuh"  // attn_head
#include "cuda/decode_persist.h"
#include "cuda/gemv_tc_tile.cuh"
#include "cuda/row_maths.cuh"

namespace mimic::cuda {
namespace {

using namespace gemv_tile;
using P_t = PersistParams;

constexpr int kCW = 12;                     // consumer warps
constexpr int kThreads = kCW * 32;
constexpr int kNF = 8;                      // items in flight at most (one mbarrier each)
using ConsBar = NamedBar<1, kCW * 32>;      // the consumer warps
using AttnBar = NamedBar<2, kAttnThreads>;  // consumer warps 0..7 (attention, norm)
__constant__ const int kWeightStages[4] = {kStageQ, kStageO, kStageG, kStageD};  // the stages with tiles, in order

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ unsigned long long now_ns() { return globaltimer_ns(); }
// Until the phase of `parity` completed (the item's bytes landed), or — a bug — 2 s: then the error
// word is set and the wait gives up (wrong results, no hang).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity, unsigned* err) {
  uint32_t ok = 0;
  SpinWatchdog dog;
  for (int it = 0; !ok; ++it) {
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(ok)
        : "r"(bar), "r"(parity)
        : "memory");
    if (!ok && (it & 63) == 63 && dog.expired()) { atomicExch(err, 2u); return; }
  }
}


// MIMIC_DECODE_PERSIST_STAMPS: stamp i (0 the stage's wait asked, 1 its first item's bytes landed,
// 2 its inputs ready, 3 its signal sent) of stage s, layer l, by thread 0.
constexpr int kStampItems = 6, kStampsPer = 4 + 3 * kStampItems;  // per (block, layer, stage)
__device__ __forceinline__ void stamp(const PersistParams& P, int l, int s, int i) {
  if (P.stamps && threadIdx.x == 0) P.stamps[(((int64_t)blockIdx.x * P.L + l) * kPersistStages + s) * kStampsPer + i] = now_ns();
}
// item n's stamps: 0 its bytes landed, 1 products done, 2 epilogue done
__device__ __forceinline__ void stamp_item(const PersistParams& P, int l, int s, int n, int i) {
  if (n < kStampItems) stamp(P, l, s, 4 + 3 * n + i);
}

// Thread 0 spins until *c >= target (acquire), then the consumers pass a barrier: what the counted
// items wrote is visible to loads through L2 (__ldcg) after it.
__device__ void wait_count(const unsigned* c, unsigned target, unsigned* err) {
  if (threadIdx.x == 0) {
    SpinWatchdog dog;
    for (int it = 0;; ++it) {
      unsigned v;
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(c) : "memory");
      if (v >= target) break;
      if ((it & 255) == 255) {
        if (*reinterpret_cast<volatile unsigned*>(err)) break;
        if (dog.expired()) { atomicExch(err, 1u); break; }
      }
    }
  }
  ConsBar{}();
}

// The consumers' stores of this stage made visible, then n items added to the stage's counter.
__device__ void signal_count(unsigned* c, unsigned n) {
  __threadfence();
  ConsBar{}();
  if (threadIdx.x == 0) atomicAdd(c, n);
}

// The byte ring the copies fill and the products drain in the same order: both sides walk the
// same allocations (an item never wraps; the tail that does not fit is skipped).
struct Ring {
  int size;
  long long head;
  __device__ int alloc(int bytes) {
    int off = (int)(head % size);
    if (off + bytes > size) { head += size - off; off = 0; }
    head += bytes;
    return off;
  }
};

// Item i of stage s (Q, O, G, D) of a layer: its two units u (gate/up of one tile, or — g.pair — two
// tiles of one projection, sharing x: twice the independent MMA chains a warp), each a job
// j0 + u·jstep (q k v o gate up down: 0..6) and 16 rows; returns j0. A single-tile item has one unit.
__device__ __forceinline__ int item_units(const P_t& P, int s, int i, TileRows (&rows)[2], int& jstep) {
  const PersistGeo& g = P.geo[s];
  jstep = g.pair ? 0 : 1;
  const int t0 = g.pair ? 2 * i : i;  // the first tile
  if (s == kStageQ) {
    const int nq = P.QD / kRows, nk = P.KD / kRows;
    const int ji = t0 < nq ? 0 : t0 < nq + nk ? 1 : 2, base = ji == 0 ? 0 : ji == 1 ? nq : nq + nk;
    const int per_head = P.D / kRows;
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int t = t0 + u - base;  // (pairs never straddle q/k/v: every count is even)
      rows[u] = ji < 2 ? TileRows{(t / per_head) * P.D + (t % per_head) * 8, P.D / 2 - 8} : TileRows{t * kRows, 0};
    }
    return ji;
  }
  rows[0] = TileRows{t0 * kRows, 0};
  rows[1] = TileRows{(t0 + g.pair) * kRows, 0};
  return s == kStageO ? 3 : s == kStageG ? 4 : 6;
}

// The ring item's place as gemv_tc_tile's Layout (offsets from the dynamic shared memory's base).
__device__ __forceinline__ Layout item_layout(const P_t& P, const PersistGeo& g, int off) {
  Layout Lo(g.K, g.nj);
  for (int u = 0; u < 2; ++u) {
    Lo.w_off[u] = P.ring_off + off + u * g.job_bytes;
    Lo.u8_off[u] = Lo.w_off[u] + kRows * Lo.w_pitch;
    Lo.am_off[u] = P.am_off + u * kRows * Lo.am_pitch * 4;
  }
  return Lo;
}

// The copies of the block's items, in the consumers' order, into the ring: every thread runs it with
// the same state (the same decisions), after each item's products have freed its bytes, issues its
// share of each item's 16-byte copies (cp.async) and arrives (noinc) on the item's mbarrier, which
// completes once every thread's copies landed. (Round 17: a bulk copy (TMA) a row from warp 0 made
// the step 12 % slower — ~64 bulk-copy instructions an item issue slowly.) It stops when the next item does not fit
// behind the unconsumed ones or kNF items are in flight. (A dedicated producer warp did the same
// but made 13 warps: 128 registers a thread, spilled, and ~2x slower products.)
struct Filler {
  Ring ring;  // the copies' allocations (the consumers replay the same ones)
  int l, si, i, issued;
  __device__ bool valid(const P_t& P) const { return l < P.L; }
  __device__ void next(const P_t& P) {  // the block's next item: tile i + grid of the stage, or the next stage's first
    i += gridDim.x;
    while (l < P.L && i >= P.items[kWeightStages[si]]) {
      i = blockIdx.x;
      if (++si == 4) { si = 0; ++l; }
    }
  }
  __device__ void start(const P_t& P) {
    ring = Ring{P.ring_bytes, 0};
    l = 0; si = 0; i = (int)blockIdx.x - (int)gridDim.x; issued = 0;
    next(P);
  }
  __device__ void run(char* smem, const P_t& P, long long cons_head, int consumed, int tid) {
    const uint32_t mbar0 = smem_addr(smem + P.mbar_off);
    while (valid(P) && issued - consumed < kNF) {
      const int s = kWeightStages[si];
      const PersistGeo& g = P.geo[s];
      Ring r2 = ring;
      const int off = r2.alloc(g.bytes);
      // it would overwrite an item not yet consumed — unless none is left: then the tail skipped to
      // start the item at offset 0 holds nothing (round 17: items of two down tiles, 136 KB in a 140 KB
      // ring, waited forever on this test alone)
      if (r2.head - cons_head > r2.size && cons_head != ring.head) break;
      ring = r2;
      const PersistLayer& Ly = P.layers[l];
      TileRows rows2[2];
      int jstep;
      const int j0 = item_units(P, s, i, rows2, jstep);
      const Layout Lo = item_layout(P, g, off);
      const uint32_t bar = mbar0 + 8 * (issued % kNF);
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        if (u >= g.nj) break;
        const GemvJob& J = Ly.j[j0 + u * jstep];
        const TileRows rows = rows2[u];
        // piece c = r·pieces + cc of the tile, c = tid, tid + kThreads, …: (r, cc) stepped without a division
        const int pieces = g.K >> 5, dr = kThreads / pieces, dc = kThreads - dr * pieces;
        for (int r = tid / pieces, cc = tid - r * pieces; r < kRows; r += dr, cc += dc) {
          if (cc >= pieces) { cc -= pieces; ++r; if (r >= kRows) break; }
          cp_async16(smem + Lo.w_off[u] + r * Lo.w_pitch + 16 * cc, J.packed + (int64_t)rows(r) * (g.K >> 1) + 16 * cc);
        }
        const int nb16 = Lo.nb >> 4;
        for (int c = tid; c < kRows * nb16; c += kThreads) {  // the rows' absmax codes (at most 2 a thread)
          const int r = c / nb16, cc = c - r * nb16;
          cp_async16(smem + Lo.u8_off[u] + r * Lo.nb + 16 * cc, J.am_u8 + (int64_t)rows(r) * Lo.nb + 16 * cc);
        }
        // the absmax2 values the rows' blocks use (indices a0..a1 of the 256-blocks)
        const int64_t a0 = ((int64_t)rows(0) * Lo.nb) >> 8, a1 = ((int64_t)rows(kRows - 1) * Lo.nb + Lo.nb - 1) >> 8;
        if (tid <= a1 - a0) cp_async4(smem + Lo.u8_off[u] + kRows * Lo.nb + 4 * tid, J.absmax2 + a0 + tid);
      }
      asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
      ++issued;
      next(P);
    }
  }
};

// Job u's fp32 absmax (Lo.am_off) from what the copies staged — its rows' u8 codes and absmax2
// slice — and the code2 table in shared memory: gemv_tile's decode_absmax without a global load.
__device__ __forceinline__ void decode_am(char* smem, const Layout& Lo, int u, TileRows rows, const float* code2, float offset, int tid) {
  const uint8_t* a8 = reinterpret_cast<const uint8_t*>(smem + Lo.u8_off[u]);
  const float* a2 = reinterpret_cast<const float*>(smem + Lo.u8_off[u] + kRows * Lo.nb);
  float* am = reinterpret_cast<float*>(smem + Lo.am_off[u]);
  const int64_t a0 = ((int64_t)rows(0) * Lo.nb) >> 8;
  for (int i = tid; i < kRows * Lo.nb; i += kCW * 32) {
    const int r = i / Lo.nb, b = i - r * Lo.nb;
    const int64_t row0 = (int64_t)rows(r) * Lo.nb;
    am[r * Lo.am_pitch + b] = fmaf(code2[a8[i]], a2[((row0 + b) >> 8) - a0], offset);
  }
}

// xs = bf16 RMSNorm of the fp32 row x (consumer warps 0..7; rmsnorm_rows' bits), then all consumers.
// PER: the terms a virtual thread sums (C <= 1024·PER; fewer registers, the same bits).
template <int PER>
__device__ void norm_into(bf16* xs, const float* x, const float* w, const P_t& P, float* sh, int tid, const unsigned* c,
                          unsigned target) {
  RmsRow<kAttnThreads, PER> row, wr;
  if (tid < kAttnThreads) wr.load(w, P.C);  // the weight is no block's output: before the wait
  if (c) wait_count(c, target, P.err);
  if (tid < kAttnThreads) {
    row.load(x, P.C);
    const float r = row.rms_rsqrt(P.C, P.eps, sh, AttnBar{});
#pragma unroll
    for (int k = 0; k < RmsRow<kAttnThreads, PER>::kNV; ++k)
#pragma unroll
      for (int i = 0; i < PER; ++i)
        if (const int cc = row.col(k, i); cc < P.C) xs[cc] = norm_out(wr.v[k][i], row.v[k][i], r);
  }
  ConsBar{}();
}

// xs = the n bf16 of src (another block's output: through L2), then all consumers.
__device__ void copy_into(bf16* xs, const bf16* src, int n, int tid) {
  const uint4* s4 = reinterpret_cast<const uint4*>(src);
  uint4* d4 = reinterpret_cast<uint4*>(xs);
  for (int i = tid; i < n / 8; i += kCW * 32) d4[i] = __ldcg(s4 + i);
  ConsBar{}();
}

template <int W>
__device__ __forceinline__ void epilogue(const P_t& P, int s, bool pair, const GemvJob& J0, const GemvJob& J1, int ji,
                                         const TileRows (&rows)[2], float (*red)[kCW * kRows][16], int tid, float rc, float rs,
                                         const GemvRope& rope, float res_v) {
  if (s == kStageQ) {  // unit u's rope epilogue by threads 32u..32u+31
    if (tid < 32) rope_epilogue<W>(rope, J0, ji, rows[0], red[0], tid, rc, rs);
    else if (pair && tid < 64) rope_epilogue<W>(rope, J0, ji, rows[1], red[1], tid - 32, rc, rs);
  } else if (s == kStageG) {
    if (tid < kRows) {  // act = silu(gate)·up, as gemv_tc's glu epilogue
      const int m = rows[0](tid);
      const float v = row_total<W>(red[0], J0, tid, 0, m), u = row_total<W>(red[1], J1, tid, 0, m);
      const float sg = 1.f / (1.f + __expf(-v));
      P.act[m] = __float2bfloat16(v * sg * u);
    }
  } else if (tid < (pair ? 2 : 1) * kRows) {  // thread 16u + r: row r of unit u
    const int u = tid >> 4, r = tid & 15, m = rows[u](r);
    gemv_store(J0, 0, m, row_total<W>(red[u], J0, r, 0, m), true, res_v);
  }
}

template <int DT, int PER>
__global__ void __launch_bounds__(kThreads, 1) decode_persist_kernel(const __grid_constant__ PersistParams P) {
  extern __shared__ __align__(128) char smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  if (tid < 256) {
    fill_pair_table(smem, P.lut, tid);
    reinterpret_cast<float*>(smem + P.code2_off)[tid] = P.code2[tid];
  }
  if (tid == 0) {
    for (int i = 0; i < kNF; ++i)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(smem + P.mbar_off + 8 * i)), "r"(kThreads) : "memory");
  }
  __syncthreads();
  Ring ring{P.ring_bytes, 0};
  Filler fill;
  fill.start(P);
  fill.run(smem, P, 0, 0, tid);
  const uint32_t mbar0 = smem_addr(smem + P.mbar_off);
  bf16* xs = reinterpret_cast<bf16*>(smem + P.xs_off);
  float* sh = reinterpret_cast<float*>(smem + P.sh_off);
  auto red = reinterpret_cast<float(*)[kCW * kRows][16]>(smem + P.red_off);
  const char* tab_lane = smem + 4 * lane;
  const int pos = *P.pos;
  int k = 0;
  float* code2s = reinterpret_cast<float*>(smem + P.code2_off);
  for (int l = 0; l < P.L; ++l) {
    // the layer's jobs into shared memory (the epilogues and absmax read them at every item)
    ConsBar{}();  // the last layer's epilogues are done with them
    for (int i = tid; i < (int)(sizeof(PersistLayer) / 4); i += kCW * 32)
      reinterpret_cast<uint32_t*>(smem + P.jobs_off)[i] = reinterpret_cast<const uint32_t*>(P.layers + l)[i];
    ConsBar{}();
    const PersistLayer& Ly = *reinterpret_cast<const PersistLayer*>(smem + P.jobs_off);
    unsigned* cnt = P.cnt + l * kPersistStages;
    const GemvRope rope{P.pos, P.inv_freq, P.D, Ly.kcache, Ly.vcache};
    for (int s = 0; s < kPersistStages; ++s) {
      if (s == kStageA) {
        int n = 0;
        for (int h = (int)gridDim.x - 1 - (int)blockIdx.x; h < P.Hq; h += gridDim.x, ++n) {
          const int group = P.Hq / P.Hkv, hk = h / group;
          if (h % group == 0)  // the KV head's old rows into L2 while q/k/v still run (decode_attn_kernel's prefetch)
            prefetch_kv_rows(Ly.kcache, Ly.vcache, hk, pos, P.Hkv, P.D, tid, kCW * 32);
          if (n == 0) {
            stamp(P, l, s, 0);
            wait_count(cnt + kStageQ, P.items[kStageQ], P.err);
            stamp(P, l, s, 1);
            stamp(P, l, s, 2);
          } else {
            ConsBar{}();  // the last head's scratch is read
          }
          if (tid < kAttnThreads) {
            float* a = reinterpret_cast<float*>(smem + P.red_off);  // the partial sums' space
            const AttnSmem S{a, a + 256, a + 288, a + 544, nullptr};
            attn_head<DT>(P.att, P.q, Ly.kcache, Ly.vcache, pos + 1, h, hk, P.Hkv, P.D, false, S, tid, AttnBar{});
          }
        }
        if (n) { signal_count(cnt + kStageA, n); stamp(P, l, s, 3); }
        continue;
      }
      const PersistGeo& g = P.geo[s];
      const int W = P.w[s];
      int n = 0;
      for (int i = blockIdx.x; i < P.items[s]; i += gridDim.x, ++n, ++k) {
        const int off = ring.alloc(g.bytes);
        TileRows rows[2];
        int jstep;
        const int j0 = item_units(P, s, i, rows, jstep);
        const GemvJob* Js = Ly.j + j0;  // unit 0's job (outs and residuals set by the host); unit 1's:
        const GemvJob& J1 = Ly.j[j0 + jstep];
        const int ji = s == kStageQ ? j0 : 0;
        const Layout Lo = item_layout(P, g, off);
        float rc = 0.f, rs = 0.f;  // the rope pair's cos/sin: unit u's by threads 32u..32u+7
        if (s == kStageQ && ji < 2 && (tid & 31) < kRows / 2 && (tid < 32 || (g.pair && tid < 64)))
          rope_cs(pos, P.inv_freq[rows[tid >> 5](tid & 31) % P.D], rc, rs);
        if (n == 0) stamp(P, l, s, 0);
        mbar_wait(mbar0 + 8 * (k % kNF), (k / kNF) & 1, P.err);  // the item's bytes landed
        if (n == 0) stamp(P, l, s, 1);
        stamp_item(P, l, s, n, 0);
#pragma unroll
        for (int u = 0; u < 2; ++u)  // (static indices into Lo: it stays in registers)
          if (u < g.nj) decode_am(smem, Lo, u, rows[u], code2s, (u ? J1 : Js[0]).offset, tid);
        if (n == 0) {  // the stage's input: once a stage
          if (s == kStageQ) {
            if (l == 0) ConsBar{}();
            norm_into<PER>(xs, P.x, Ly.in_norm, P, sh, tid, l > 0 ? P.cnt + (l - 1) * kPersistStages + kStageD : nullptr,
                           P.items[kStageD]);
          } else if (s == kStageO) {
            wait_count(cnt + kStageA, P.items[kStageA], P.err);
            copy_into(xs, P.att, P.QD, tid);
          } else if (s == kStageG) {
            norm_into<PER>(xs, P.h, Ly.post_norm, P, sh, tid, cnt + kStageO, P.items[kStageO]);
          } else {
            wait_count(cnt + kStageG, P.items[kStageG], P.err);
            copy_into(xs, P.act, P.I, tid);
          }
          stamp(P, l, s, 2);
        } else {
          ConsBar{}();  // the absmax decoded
        }
        float res_v = 0.f;  // the epilogue's residual, requested before the products (gemv_tc's res_pre)
        if ((s == kStageO || s == kStageD) && tid < (g.pair ? 2 : 1) * kRows) res_v = __ldcg(Js[0].res + rows[tid >> 4](tid & 15));
        float acc[2][1][4] = {};
        if (warp < W) {
          const int b_lo = warp * Lo.nb / W, b_hi = (warp + 1) * Lo.nb / W;
          tile_dot<1, true, 4>(smem, Lo, Js, g.nj, xs, warp, tab_lane, b_lo, b_hi, lane, 1, acc, 0, true);
        }
        ConsBar{}();  // every read of the item's ring bytes and of the last item's partial sums is done
        stamp_item(P, l, s, n, 1);
        fill.run(smem, P, ring.head, k + 1, tid);  // this item's bytes are free: the next ones' copies
        if (warp < W) {
          store_partial<1>(red[0] + warp * kRows, acc[0], lane);
          if (g.nj == 2) store_partial<1>(red[1] + warp * kRows, acc[1], lane);
        }
        ConsBar{}();
        if (W == 12) epilogue<12>(P, s, g.pair, Js[0], J1, ji, rows, red, tid, rc, rs, rope, res_v);
        else epilogue<8>(P, s, g.pair, Js[0], J1, ji, rows, red, tid, rc, rs, rope, res_v);
        stamp_item(P, l, s, n, 2);
      }
      if (n) { signal_count(cnt + s, n); stamp(P, l, s, 3); }
    }
  }
}

int round_up(int v, int a) { return (v + a - 1) / a * a; }

using Kernel = void (*)(PersistParams);
Kernel kernel_for(int D, int C) {
  if (C <= kRmsVirtual * 4) return D == 128 ? decode_persist_kernel<128, 4> : decode_persist_kernel<0, 4>;
  return D == 128 ? decode_persist_kernel<128, kRmsPer> : decode_persist_kernel<0, kRmsPer>;
}

}  // namespace

bool decode_persist_wanted() { return env_is("MIMIC_DECODE_PERSIST", "1"); }

bool decode_persist_prepare(const DeviceModel& d, const DeviceKV& kv, const PersistIO& io, PersistStep& st, std::string* why) {
  auto no = [&](const char* w) {
    if (why) *why = w;
    return false;
  };
  const LlamaConfig& c = d.cfg;
  const int C = c.hidden_size, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim, I = c.intermediate_size;
  const int QD = Hq * D, KD = Hkv * D, L = c.num_layers;
  if (L < 1 || (int)kv.k.size() < L) return no("no cache");
  if (D % kRows || D > 256 || Hq % Hkv || C > kRmsVirtual * kRmsPer) return no("head_dim or hidden size");
  int dev = 0, optin = 0, major = 0;
  MIMIC_CUDA_CHECK(cudaGetDevice(&dev));
  MIMIC_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  MIMIC_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  if (major < 9) return no("needs sm_90");
  std::vector<PersistLayer> hl(L);
  PersistParams P{};
  const int Ks[kPersistStages] = {C, 0, QD, C, I};
  for (int l = 0; l < L; ++l) {
    const DLayer& Ly = d.layers[l];
    for (int i = 0; i < 7; ++i) {
      const DLinear& Lin = Ly.proj[i];
      if (!Lin.is_nf4) return no("a projection is not NF4");
      if (Lin.src && Lin.r > 0) return no("a LoRA adapter is attached");
      GemvJob j = gemv_job_nf4(Lin.nf4);
      if (j.absmax || !j.am_u8 || !j.absmax2 || !j.code2) return no("absmax not double-quantized");
      if (j.K % 1024 || j.M % kRows || ((uintptr_t)j.packed & 15) || ((uintptr_t)j.am_u8 & 15)) return no("shape or alignment");
      hl[l].j[i] = j;
    }
    GemvJob* j = hl[l].j;  // the epilogues' outs and residuals (gemv_store's fields)
    j[0].out = io.q;
    j[3].res = io.x; j[3].out = io.h; j[3].out_f32 = true;  // h = x + o(att)
    j[4].out = io.act;                                      // act = silu(gate)·up
    j[6].res = io.h; j[6].out = io.x; j[6].out_f32 = true;  // x = h + down(act)
    hl[l].in_norm = Ly.in_norm.p;
    hl[l].post_norm = Ly.post_norm.p;
    hl[l].kcache = kv.k[l].p;
    hl[l].vcache = kv.v[l].p;
  }
  // one double-quant code table for every projection (bitsandbytes' dynamic map): staged once
  {
    std::vector<float> first(256), other(256);
    MIMIC_CUDA_CHECK(cudaMemcpy(first.data(), hl[0].j[0].code2, 1024, cudaMemcpyDeviceToHost));
    for (int l = 0; l < L; ++l)
      for (int i = 0; i < 7; ++i) {
        if (hl[l].j[i].code2 == hl[0].j[0].code2) continue;
        MIMIC_CUDA_CHECK(cudaMemcpy(other.data(), hl[l].j[i].code2, 1024, cudaMemcpyDeviceToHost));
        if (std::memcmp(first.data(), other.data(), 1024)) return no("the projections' code2 tables differ");
      }
    std::memcpy(P.code2, first.data(), 1024);
  }
  // the warp split of each product, as gemv_tc would launch it (x any aligned pointer: plan checks it)
  {
    GemvJob js[7];  // layer 0's jobs as built above (plan reads their weights and shapes, not outs)
    for (int i = 0; i < 7; ++i) { js[i] = hl[0].j[i]; js[i].x = io.q; }
    P.w[kStageQ] = gemv_tc_warps(js, 3, false, true);
    P.w[kStageO] = gemv_tc_warps(js + 3, 1, false, false);
    P.w[kStageG] = gemv_tc_warps(js + 4, 2, true, false);
    P.w[kStageD] = gemv_tc_warps(js + 6, 1, false, false);
  }
  for (int s : {(int)kStageQ, (int)kStageO, (int)kStageG, (int)kStageD}) {
    const int W = P.w[s], nb = Ks[s] / 64;
    if (W != 8 && W != 12) return no("a product is not on gemv_tc");
    if ((nb + W - 1) / W > 16) return no("K too long for the warp-slice path");
  }
  P.layers = nullptr;
  P.L = L;
  P.x = io.x; P.h = io.h; P.q = io.q; P.att = io.att; P.act = io.act; P.pos = io.pos;
  P.inv_freq = d.inv_freq.p;
  P.C = C; P.QD = QD; P.KD = KD; P.I = I; P.Hq = Hq; P.Hkv = Hkv; P.D = D; P.eps = c.rms_norm_eps;
  // items of two tiles (Q, O, D) with MIMIC_DECODE_PERSIST_PAIRS=1 where every count is even — NOT yet
  // run on a GPU since the ring fix above (its one call hung on that bug); one-tile items are the default
  const bool pairs = env_is("MIMIC_DECODE_PERSIST_PAIRS", "1");
  P.geo[kStageQ].pair = pairs && (QD / kRows) % 2 == 0 && (KD / kRows) % 2 == 0 && (D / kRows) % 2 == 0;
  P.geo[kStageO].pair = P.geo[kStageD].pair = pairs && (C / kRows) % 2 == 0;
  P.geo[kStageG].pair = 0;
  P.items[kStageQ] = (QD + 2 * KD) / kRows / (1 + P.geo[kStageQ].pair);
  P.items[kStageA] = Hq;
  P.items[kStageO] = C / kRows / (1 + P.geo[kStageO].pair);
  P.items[kStageG] = I / kRows;
  P.items[kStageD] = C / kRows / (1 + P.geo[kStageD].pair);
  int max_item = 0, am_bytes = 0;
  for (int s : {(int)kStageQ, (int)kStageO, (int)kStageG, (int)kStageD}) {
    PersistGeo& g = P.geo[s];
    g.K = Ks[s];
    g.nj = s == kStageG || g.pair ? 2 : 1;
    const int nb = g.K / 64;
    g.job_bytes = kRows * (g.K / 2 + 32) + kRows * nb + 128;  // + the absmax2 slice (<= 32 floats)
    const int span = s == kStageQ ? D / 2 + 8 : kRows;  // rows from a tile's first to its last
    if (((int64_t)span * nb + nb) / 256 + 2 > 32) return no("absmax2 slice too long");
    g.bytes = round_up(g.nj * g.job_bytes, 128);
    max_item = std::max(max_item, g.bytes);
    am_bytes = std::max(am_bytes, g.nj * kRows * (nb + 1) * 4);
  }
  // shared memory: pair table | partial sums (attention scratch) | absmax | x | norm scratch | mbarriers | ring counters | ring
  constexpr int kPair = 256 * 32 * 4, kRed = 2 * kCW * kRows * 16 * 4;
  static_assert(kRed >= (256 + 32 + kAttnThreads + kAttnThreads * 8) * 4, "attention scratch fits the partial sums' space");
  int o = kPair;
  P.red_off = o; o += kRed;
  P.am_off = o; o += round_up(am_bytes, 128);
  P.xs_off = o; o += round_up(2 * std::max({C, QD, I}), 128);
  P.sh_off = o; o += 128;
  P.code2_off = o; o += 256 * 4;
  P.jobs_off = o; o += round_up((int)sizeof(PersistLayer), 128);
  P.mbar_off = o; o += 8 * kNF;
  P.ring_off = o = round_up(o, 128);
  P.ring_bytes = (optin - o) / 128 * 128;
  if (P.ring_bytes < max_item) return no("shared memory too small for an item");
  std::memcpy(P.lut, mimic::NF4_CODE, sizeof P.lut);
  auto kern = kernel_for(D, C);
  MIMIC_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
  int per_sm = 0;
  MIMIC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, kThreads, optin));
  if (per_sm < 1) return no("the kernel does not fit an SM");
  if (env_is("MIMIC_DECODE_PERSIST_WHY", "1"))
    std::fprintf(stderr, "mimic: decode_persist: %d blocks x %d threads, %d B shared (ring %d B), warps Q/O/G/D %d/%d/%d/%d\n",
                 Context::get().sm_count, kThreads, optin, P.ring_bytes, P.w[kStageQ], P.w[kStageO], P.w[kStageG], P.w[kStageD]);
  st.layers = upload(hl.data(), hl.size());
  st.cnt.alloc((size_t)L * kPersistStages + 1);
  MIMIC_CUDA_CHECK(cudaMemset(st.cnt.p, 0, st.cnt.bytes()));
  P.layers = st.layers.p;
  P.cnt = st.cnt.p;
  P.err = st.cnt.p + (size_t)L * kPersistStages;
  P.stamps = nullptr;
  if (env_is("MIMIC_DECODE_PERSIST_STAMPS", "1")) {
    st.stamps.alloc((size_t)Context::get().sm_count * L * kPersistStages * kStampsPer);
    MIMIC_CUDA_CHECK(cudaMemset(st.stamps.p, 0, st.stamps.bytes()));
    P.stamps = st.stamps.p;
  }
  st.P = P;
  st.smem = optin;
  st.grid = Context::get().sm_count;
  return true;
}

void decode_persist_launch(const PersistStep& st, cudaStream_t stream) {
  MIMIC_CUDA_CHECK(cudaMemsetAsync(st.cnt.p, 0, sizeof(unsigned) * (size_t)st.P.L * kPersistStages, stream));
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(st.grid);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = (size_t)st.smem;
  cfg.stream = stream;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeCooperative;  // every block resident at once: the waits need it
  at[0].val.cooperative = 1;
  cfg.attrs = at;
  cfg.numAttrs = 1;
  auto kern = kernel_for(st.P.D, st.P.C);
  MIMIC_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kern, st.P));
}

std::string decode_persist_profile(const PersistStep& st) {
  if (!st.stamps.n) return "";
  const int G = st.grid, L = st.P.L, S = kPersistStages;
  std::vector<unsigned long long> t(st.stamps.n);
  Context::get().sync();
  MIMIC_CUDA_CHECK(cudaMemcpy(t.data(), st.stamps.p, st.stamps.bytes(), cudaMemcpyDeviceToHost));
  auto at = [&](int b, int l, int s, int i) { return t[(((size_t)b * L + l) * S + s) * kStampsPer + i]; };
  const char* names[] = {"Q", "A", "O", "G", "D"};
  std::string out;
  char line[256];
  auto done = [&](int l, int s) {  // the last block's signal (0: no block had items)
    unsigned long long m = 0;
    for (int b = 0; b < G; ++b) m = std::max(m, at(b, l, s, 3));
    return m;
  };
  for (int l : {L / 2 - 1, L / 2}) {
    unsigned long long prev = done(l - 1 >= 0 ? l - 1 : 0, kStageD);
    std::snprintf(line, sizeof line, "PERSIST layer %d: %.2f us (last D signal to last D signal)\n", l, (done(l, kStageD) - prev) / 1e3);
    out += line;
    for (int s = 0; s < S; ++s) {
      const unsigned long long last = done(l, s);
      double wait = 0, bytes_late = 0, busy = 0, first_ready = 1e30;
      int nb = 0;
      for (int b = 0; b < G; ++b) {
        if (!at(b, l, s, 3)) continue;
        ++nb;
        wait += (double)(at(b, l, s, 2) - at(b, l, s, 0));
        bytes_late += (double)(at(b, l, s, 1) - at(b, l, s, 0));
        busy += (double)(at(b, l, s, 3) - at(b, l, s, 2));
        first_ready = std::min(first_ready, (double)at(b, l, s, 2));
      }
      if (!nb) continue;
      std::snprintf(line, sizeof line,
                    "PERSIST   %s: exposed %6.2f us | %3d blocks; mean: bytes wait %5.2f, inputs wait %5.2f, busy %5.2f us; first ready %+.2f us after the stage ahead\n",
                    names[s], (last - prev) / 1e3, nb, bytes_late / nb / 1e3, (wait - bytes_late) / nb / 1e3, busy / nb / 1e3, (first_ready - prev) / 1e3);
      out += line;
      for (int n = 0; n < kStampItems && s != kStageA; ++n) {  // item n: bytes, products, epilogue (mean over blocks that had it)
        double w = 0, pr = 0, ep = 0;
        int c = 0;
        for (int b = 0; b < G; ++b) {
          const unsigned long long t0 = at(b, l, s, 4 + 3 * n), t1 = at(b, l, s, 5 + 3 * n), t2 = at(b, l, s, 6 + 3 * n);
          if (!t2 || t2 < at(b, l, s, 0)) continue;  // (stale from an earlier step: fewer items)
          const unsigned long long before = n ? at(b, l, s, 6 + 3 * (n - 1)) : at(b, l, s, 2);
          ++c;
          w += n ? (double)t0 - (double)before : 0.0;
          pr += (double)t1 - (double)(n ? t0 : at(b, l, s, 2));
          ep += (double)(t2 - t1);
        }
        if (!c) break;
        std::snprintf(line, sizeof line, "PERSIST     item %d (%3d blocks): bytes wait %5.2f, products %5.2f, epilogue %5.2f us\n", n, c,
                      w / c / 1e3, pr / c / 1e3, ep / c / 1e3);
        out += line;
      }
      prev = last;
    }
  }
  return out;
}

unsigned decode_persist_error(const PersistStep& st) {
  unsigned e = 0;
  Context::get().sync();
  MIMIC_CUDA_CHECK(cudaMemcpy(&e, st.P.err, sizeof e, cudaMemcpyDeviceToHost));
  return e;
}

}  // namespace mimic::cuda
