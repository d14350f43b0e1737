// gemv_tc — the decode products of NF4 weights (N = 1..16 rows of x) on the tensor cores, with the
// 4-bit codes turned into bf16 PAIRS by one shared-memory lookup per byte. It replaces gemv.cu's
// NF4 path (one warp a row, one table lookup + one FFMA per weight) wherever the shape allows.
//
//   out[n, m] = res[n, m] + α · ( Σ_b absmax_{m,b} · Σ_{k∈b} bf16(NF4_CODE[c_{m,k}]) · x[n, k]
//                                 + s · Σ_j h[n, j] · B[m, j] ) + β · out[n, m]
//   b: the 64-wide absmax blocks of row m; absmax as gemv.cu (code2[u8]·absmax2 + offset, or plain).
//
// Why (bench/NOTES.md round 12/13): the batch-1 decode step is 2.8e9 NF4 values a token. gemv.cu
// spends per value a 4-byte LDS of the 16-entry code table, two ALU ops to cut the nibble, a bf16 →
// fp32 of x and an FFMA: ≈ 0.34 ms of shared-memory pipe and ≈ 0.45 ms of issue per token at 100 %,
// more than the 0.35 ms the NF4 bytes take at copy bandwidth — the kernel cannot reach the bound by
// hiding latency (round 12: PDL and more occupancy gave +3-4 %). Here a BYTE of codes (two values)
// costs two ALU ops + one conflict-free LDS that yields the bf16x2 pair ready for the MMA, and the
// products are mma.sync.m16n8k16 (one instruction per 256 weight values): ≈ 1.6 instructions a value.
//
// Numerics. The code value is rounded to bf16 (relative error ≤ 2⁻⁹, the same class as the
// prefill/training path's bf16(code·absmax)), x is bf16 as everywhere, products and sums are fp32
// (the MMA), and the absmax multiplies each 64-block's fp32 partial sum. Each output column n
// depends only on x[n] (the MMA's columns are independent and the reduction order is fixed by M and
// K alone), so a sequence's result does not depend on which other rows share the launch — the
// batched step's bit-for-bit property (decode_batch_cuda.cu) holds across N.
//
// Work layout. A block of W warps (12 where one wave of such blocks fits, else 8: launch()) owns 16
// rows m (one MMA M-tile) of one job (or of gate AND up); it first copies its whole 4-bit tile
// [16][K/2] and the rows' absmax codes into shared memory with cp.async — every byte in flight at
// once, no register held, and, in the decode graph's PDL launches (pdl.h), BEFORE waiting for the
// kernel ahead, so the next product's weights stream in while the attention or the norm before it
// runs (round 13: 425 tok/s register-fed, 488 staged, 570 staged + PDL). Warp w then takes the w-th
// W-th of the row's 64-blocks. In a block b, lane (g = lane/4,
// q = lane%4) reads bytes 8q..8q+7 (codes k = 16q..16q+15) of rows g and g+8 — one 8-byte LDS each
// (rows padded by 32 bytes: conflict-free). MMA step t (0..3) takes the lane's bytes 2t, 2t+1: A
// cols (2q, 2q+1) ← actual k = 16q+4t+{0,1}, cols (8+2q, 9+2q) ← 16q+4t+{2,3}. B (x, "col" layout,
// n = g) then needs x[n, 16q+4t .. +3]: the lane's 16 values of x are two 16-byte loads a block
// (from L2; the next block's are loaded while this one is multiplied). The four steps of a block
// accumulate into a zeroed fragment that is scaled by the rows' absmax and added to the running
// sum; the W warps' sums are added in warp order through shared memory, then the epilogue of
// gemv.cu (LoRA B, residual, α, β, bf16/fp32 out, or silu(gate)·up for a gate/up pair).
// The pair table: entry e (a code byte, first element = HIGH nibble) = bf16(code[e>>4]) in the low
// half, bf16(code[e&15]) in the high half, stored 32 times so that lane ℓ reads copy ℓ at word
// e·32 + ℓ: bank ℓ whatever the byte — conflict-free (32 KB, filled in ~0.1 µs, reused by the
// block's reduction afterwards).
// A launch whose one job (or gate/up pair) has more tiles than the SMs hold blocks of its size runs
// one wave of blocks that take two tiles each, one after the other (round 14: the 3B's gate/up, 512
// tiles for 264 resident blocks; −0.5-5 % a step). gemv_tc_qkv_rope (decode_step.cu) folds RoPE and
// the KV append into a layer's q/k/v launch (gemv_tc.h).
// Where the time goes (round 14, `cuda_check trace` ablations on the 3B step): with the weights
// staged before the PDL wait the copy is mostly hidden; what each launch adds to the step is the
// products after the wait (the pair lookups are ~1 LDS per 2 weights: the shared-memory pipe and
// its latency) plus ~1.6 µs of launch boundary.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "core/env.h"
#include "cuda/bf16_row_dot.cuh"
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/gemv_tc.h"
#include "cuda/gemv_tc_tile.cuh"
#include "cuda/pdl.h"
#include "cuda/row_maths.cuh"  // rope_cs, rope_rotate

namespace mimic::cuda {
namespace {

using namespace gemv_tile;
using Params = GemvParams;
__device__ unsigned int g_release_probe;  // MIMIC_GEMV_TC_ABLATE & 8

// The LoRA B half staged in shared memory (P.lora_off > 0): unit u's h [kGemvMaxN][r] fp32, then the
// tile's 16 rows of B [16][r] bf16. B is a weight: copied with the tile, before the PDL wait; h is
// the A product's output: copied through L2 right after the wait, landing while the products run.
// Without it each epilogue thread summed its r terms from global memory — r dependent-address loads
// of h and B at the very end of the launch.
__device__ __forceinline__ LoraStaged lora_staged(char* smem, const Params& P, const GemvJob& J, int u) {
  if (!P.lora_off || !J.lora_B) return {};
  const float* h = reinterpret_cast<const float*>(smem + P.lora_off + u * P.lora_unit);
  return {h, reinterpret_cast<const bf16*>(h + kGemvMaxN * J.r)};
}
__device__ __forceinline__ void stage_lora_b(char* smem, const Params& P, const GemvJob& J, int u, TileRows rows, int tid, int nthreads) {
  const LoraStaged S = lora_staged(smem, P, J, u);
  if (!S.h) return;
  const int words = J.r >> 1;  // two bf16 a 4-byte copy
  for (int i = tid; i < kRows * words; i += nthreads) {
    const int r = i / words, c = i - r * words;
    cp_async4(const_cast<bf16*>(S.b) + r * J.r + 2 * c, J.lora_B + (int64_t)rows(r) * J.r + 2 * c);
  }
}
__device__ __forceinline__ void stage_lora_h(char* smem, const Params& P, const GemvJob& J, int u, int tid, int nthreads) {
  const LoraStaged S = lora_staged(smem, P, J, u);
  if (!S.h) return;
  for (int i = tid; i < (P.N * J.r) >> 2; i += nthreads) cp_async16(const_cast<float*>(S.h) + 4 * i, J.lora_h + 4 * i);
}

// The A blocks of a launch with its LoRA A products inside (gemv_tc_lora_in; gemv_tc /
// gemv_tc_qkv_rope with a folded norm): warp w < kLaRows of block b takes A row ra = b·kLaRows + w of
// the jobs' rows in job order (job u's r_u rows, then the next LoRA'd job's), its 16-byte chunks
// copied into shared memory before the PDL wait (a weight) and, for one row of x, x after it — then
// gemv.cu's bf16 product from shared memory (bf16_row_dot: h the same bits as lora_a_kernel's launch
// it replaces) — and writes h: no fence, no flag, each word of h is its own signal (the readers poll
// for it to leave kLoraHPending). (Round 18's first version, a warp streaming its row from L2 after
// the wait, took longer than the products: the step 19 % slower.)
// Folded norm (P.norm.x): x is bf16(w ⊙ x_fp32) of the residual row, every thread of the block
// staging its chunks and summing their squares; h = r·(A·x) with r from the block's sum (warps in
// order) — the products' own r sums the same squares in another order: the same error class as the
// fold itself (gemv_tc.h, GemvNorm).
constexpr int kLaRows = 4;
// Where a folded norm's per-warp Σ x² go in a product block: floats past the partial sums of up to
// 12 warps × 2 units (inside the pair table's space, free once the products are done)
constexpr int kNormSumsAt = 2 * 12 * kRows * 16;
static_assert((kNormSumsAt + 12) * 4 <= kPairBytes, "the norm sums fit in the table's space");
template <int NT, bool PDL, int W>
__device__ __forceinline__ void lora_a_block(char* smem, const Params& P) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, N = P.N;
  const int K = P.j[0].K, nch = K / 8;
  int ra = (int)blockIdx.x * kLaRows + warp, u = 0;
  const int jobs = P.nj + P.glu;
  for (; u < jobs; ++u) {  // job u and its row ra
    if (!P.j[u].lora_A) continue;
    if (ra < P.j[u].r) break;
    ra -= P.j[u].r;
  }
  const bool mine = warp < kLaRows && u < jobs;
  const GemvJob& J = P.j[mine ? u : 0];
  uint4* xs = reinterpret_cast<uint4*>(smem);  // x [K] (one row of x)
  uint4* arow = xs + nch + (int64_t)warp * nch;
  float* ssq = reinterpret_cast<float*>(xs + (1 + kLaRows) * (int64_t)nch);  // a folded norm's warp sums
  if (mine) stage_row_async(arow, J.lora_A + (int64_t)ra * K, nch, lane);
  asm volatile("cp.async.commit_group;\n");
  if constexpr (PDL) pdl_wait();
  float rn = 1.f;  // a folded norm's r
  if (N == 1 && P.norm.x) {
    const float4* xf = reinterpret_cast<const float4*>(P.norm.x);  // (L2: another kernel's output)
    const float4* wf = reinterpret_cast<const float4*>(P.norm.w);
    float s = 0.f;
    for (int c = threadIdx.x; c < nch; c += W * 32) xs[c] = fold_piece(xf, wf, c, s);
    s = warp_sum(s);
    if (lane == 0) ssq[warp] = s;
  } else if (N == 1) {
    stage_x_async(xs, J.x, nch, threadIdx.x, W * 32);
    asm volatile("cp.async.commit_group;\n");
  }
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  __syncthreads();
  if (!mine) return;
  if (N == 1 && P.norm.x) rn = fold_scale<W>(ssq, K, P.norm.eps);
  float* h = const_cast<float*>(J.lora_h);
  if (N == 1) {
    const float a = staged_row_dot(arow, xs, nch, lane);
    if (lane == 0) h[ra] = a * rn;
    return;
  }
  float acc[8 * NT];
#pragma unroll
  for (int n = 0; n < 8 * NT; ++n) acc[n] = 0.f;
  bf16_row_dot<8 * NT, false, true>(arow, nch, lane, N, J.x, K, nullptr, acc);
#pragma unroll
  for (int n = 0; n < 8 * NT; ++n) {
    acc[n] = warp_sum(acc[n]);
    if (lane == 0 && n < N) h[(int64_t)n * J.r + ra] = acc[n];
  }
}
// h[i] once it left kLoraHPending (relaxed loads through L2), or after 2 s — a bug: an A block never
// ran — the sentinel itself, a NaN that reaches the logits instead of a hang.
__device__ __forceinline__ float poll_h(const float* p) {
  uint32_t v;
  SpinWatchdog dog;
  for (int it = 0;; ++it) {
    asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    if (v != kLoraHPending) break;
    __nanosleep(64);  // (the A blocks are rarely late: do not crowd L2 while they are)
    if ((it & 15) == 15 && dog.expired()) break;
  }
  return __uint_as_float(v);
}

// F: a q/k/v launch with RoPE and the KV append in its epilogue (GemvRope in P.rope; N == 1).
// 3 blocks an SM (<= 80 registers) even where the shared memory only allows 2 (gate/up, down): round
// 15 gave those 128 registers (2 blocks) — 4 % slower: such a block fills the register file, and the
// next kernels' blocks (PDL) can no longer start beside it.
template <int NT, bool PDL, bool F, int W = 8>
__global__ void __launch_bounds__(W * 32, W == 8 ? 3 : 2) gemv_tc_kernel(const __grid_constant__ Params P) {
  extern __shared__ __align__(16) char smem[];
  if (P.la_blocks && (int)blockIdx.x < P.la_blocks) {  // an A block: it computes h (lora_a_block)
    if constexpr (PDL) pdl_trigger();
    lora_a_block<NT, PDL, W>(smem, P);
    return;
  }
  const int bid = (int)blockIdx.x - P.la_blocks;  // the product block
  int ji = 0;
#pragma unroll
  for (int i = 1; i < kGemvMaxJobs; ++i)
    if (i < P.nj && bid >= P.first_block[i]) ji = i;
  const GemvJob& J = P.j[ji];
  const GemvJob* Js = &P.j[ji];  // glu: Js[0] gate, Js[1] up (ji == 0)
  const int nj = 1 + P.glu;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const Layout Lo(J.K, nj);
  const int b_lo = warp * Lo.nb / W, b_hi = (warp + 1) * Lo.nb / W;
  const int b_end = P.ablate & 2 ? b_lo : b_hi;
  const char* tab_lane = smem + 4 * lane;
  float* code2 = reinterpret_cast<float*>(smem + kPairBytes);
  const int N = P.N;
  if constexpr (PDL) pdl_trigger();
  float rc = 0.f, rs = 0.f, res_v = 0.f;
  // P.tiles > 1 (one job or gate/up, more tiles than an SM holds blocks): this block also takes the
  // tiles P.tile_stride, 2·P.tile_stride, … on, one after another in the same shared memory, instead
  // of a second wave of blocks that would each start, fill the table and decode their absmax behind
  // the first (round 14, gate/up of the 3B: 512 tiles, 264 blocks resident; the step −5 %).
  for (int it = 0; it < P.tiles; ++it) {
    const int tile = bid - P.first_block[ji] + it * P.tile_stride;
    if (it > 0 && tile >= P.j[0].M / kRows) break;  // (P.tiles > 1: one job, first_block[0] = 0)
    TileRows rows{tile * kRows, 0};
    if (F && P.rope.head_dim && ji < 2) {  // 8 dims of one head and their partners D/2 on
      const int D = P.rope.head_dim, per_head = D / kRows;
      rows = TileRows{(tile / per_head) * D + (tile % per_head) * 8, D / 2 - 8};
    }
    if (it > 0) __syncthreads();  // the previous tile's epilogue is done with the table's space
    // weights first (they depend on no kernel: with PDL they stream in while the one before
    // finishes; round 13: a per-warp ring of 4 blocks instead, which can only run 4 blocks ahead of
    // the wait, decoded 492 tok/s against this 570).
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      if (u < nj) {
        stage_absmax<W>(smem, Lo, Js[u], u, rows, tid);
        if (!(P.ablate & 1)) stage_tile<W>(smem, Lo, Js[u], u, rows, tid);
        stage_lora_b(smem, P, Js[u], u, rows, tid, W * 32);
      }
    }
    asm volatile("cp.async.commit_group;\n");
    if (tid < 256) fill_pair_table(smem, P.lut, tid);
    if (it == 0) {
#pragma unroll
      for (int u = 0; u < 2; ++u)
        if (u < nj && !Js[u].absmax && tid < 256) code2[256 * u + tid] = Js[u].code2[tid];
    }
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");  // the tiles and absmax codes landed
    __syncthreads();
#pragma unroll
    for (int u = 0; u < 2; ++u)
      if (u < nj) decode_absmax<W>(smem, Lo, Js[u], code2 + 256 * u, u, rows, tid);
    if (it == 0) {
      // the rope pair's cos/sin need no kernel ahead (pos is copied in before the graph): before the wait
      if constexpr (F)
        if (P.rope.head_dim && ji < 2 && tid < kRows / 2) rope_cs(*P.rope.pos, P.rope.inv_freq[rows(tid) % P.rope.head_dim], rc, rs);
      if constexpr (PDL) pdl_wait();  // x, res, h and out belong to the kernels before
      if (P.lora_off && !P.la_blocks) {
#pragma unroll
        for (int u = 0; u < 2; ++u)
          if (u < nj) stage_lora_h(smem, P, Js[u], u, tid, W * 32);
        asm volatile("cp.async.commit_group;\n");
      }
      // the epilogue thread's residual, requested now: its L2 round trip hides under the products
      if (P.res_pre && P.tiles == 1 && !P.glu && !(F && P.rope.head_dim) && J.res && tid < kRows * 8 * NT) {
        const int n = tid % (8 * NT);
        if (n < N) res_v = __ldcg(J.res + (int64_t)n * J.M + rows(tid / (8 * NT)));
      }
    }
    float acc[2][NT][4];
#pragma unroll
    for (int u = 0; u < 2; ++u)
#pragma unroll
      for (int j = 0; j < NT; ++j) acc[u][j][0] = acc[u][j][1] = acc[u][j][2] = acc[u][j][3] = 0.f;
    __syncthreads();
    float ss = 0.f;  // a folded norm's Σ x² over the lane's x pieces
    tile_dot<NT>(smem, Lo, Js, nj, Js[0].x, warp, tab_lane, b_lo, b_end, lane, N, acc, P.ablate, P.x_warp, &P.norm, &ss);
    const bool fold = NT == 1 && P.norm.x;  // (plan_norm: one row of x)
    if (fold) ss = warp_sum(ss);
    __syncthreads();  // the table is done with: its space takes the partial sums
    float(*red)[W * kRows][16] = reinterpret_cast<float(*)[W * kRows][16]>(smem);
    float* red_ss = reinterpret_cast<float*>(smem) + kNormSumsAt;  // the warps' Σ x², past both units' sums
    store_partial<NT>(red[0] + warp * kRows, acc[0], lane);
    if (P.glu) store_partial<NT>(red[1] + warp * kRows, acc[1], lane);
    if (fold && lane == 0) red_ss[warp] = ss;
    if (P.lora_off) asm volatile("cp.async.wait_group 0;\n" ::: "memory");  // h landed (the barrier shares it)
    if (P.la_blocks && it == 0) {  // h from this launch's A blocks (long done by now, as a rule)
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        if (u < nj && Js[u].lora_B) {
          float* hs = const_cast<float*>(lora_staged(smem, P, Js[u], u).h);
          for (int i = tid; i < N * Js[u].r; i += W * 32) hs[i] = poll_h(Js[u].lora_h + i);
        }
      }
    }
    __syncthreads();
    const LoraStaged S0 = lora_staged(smem, P, J, 0);
    float xs = 1.f;  // a folded norm's r = rsqrt(Σ x² / K + eps), the warps' sums in warp order
    if (fold) xs = fold_scale<W>(red_ss, J.K, P.norm.eps);
    if (F && P.rope.head_dim) {
      rope_epilogue<W>(P.rope, J, ji, rows, red[0], tid, rc, rs, S0, xs);
    } else if (tid < kRows * 8 * NT) {
      const int r = tid / (8 * NT), n = tid % (8 * NT), m = rows(r);
      if (n < N) {
        const float v = row_total<W>(red[0], J, r, n, m, S0, xs);
        if (P.glu) {  // out = silu(gate)·up (each with its LoRA B first, as gemv.cu)
          const float u = row_total<W>(red[1], P.j[1], r, n, m, lora_staged(smem, P, P.j[1], 1), xs);
          const float sg = 1.f / (1.f + __expf(-v));
          static_cast<bf16*>(J.out)[(int64_t)n * J.M + m] = __float2bfloat16(v * sg * u);
        } else {
          gemv_store(J, n, m, v, P.res_pre && P.tiles == 1, res_v);
        }
      }
    }
  }
  if (P.ablate & 8) {  // MIMIC_GEMV_TC_ABLATE & 8 (timing only; results unchanged): the cost of a release a
                       // block (what a flag-based dependency between launches would add to every block)
    __syncthreads();
    if (tid == 0) {
      __threadfence();
      atomicAdd(&g_release_probe, 1u);
    }
  }
}

constexpr int kMaxSmem = 200 * 1024;     // a block's shared memory at most (H100/H200: 227 KB usable)

// Blocks of this instantiation an SM holds at `smem` bytes: the occupancy API's answer, asked once
// per size (launch() needs it for every one-job launch, and eager steps launch ~140 a token).
// Once per instantiation pair: opt in to > 48 KB of dynamic shared memory (before any occupancy
// question: without it the API answers 0 blocks for such sizes).
template <int NT, bool F, int W>
void raise_smem() {
  static bool raised = false;
  if (raised) return;
  MIMIC_CUDA_CHECK(cudaFuncSetAttribute(gemv_tc_kernel<NT, false, F, W>, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem));
  MIMIC_CUDA_CHECK(cudaFuncSetAttribute(gemv_tc_kernel<NT, true, F, W>, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem));
  raised = true;
}

template <int NT, bool F, int W>
int blocks_per_sm(int smem) {
  thread_local std::vector<std::pair<int, int>> known;  // (smem, blocks)
  for (const auto& [s, n] : known)
    if (s == smem) return n;
  raise_smem<NT, F, W>();
  int n = 0;
  MIMIC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gemv_tc_kernel<NT, true, F, W>, W * 32, smem));
  known.emplace_back(smem, n);
  return n;
}

// A launch of one job (or gate/up) without rope pairs: its blocks may take two tiles each (P.tiles).
bool can_take_two_tiles(const Params& P) { return P.nj == 1 && !P.rope.head_dim; }

// One wave: when a single job (or gate/up) has more tiles than the SMs hold blocks of this size, each
// block takes two (P.tiles = 2); MIMIC_GEMV_TC_TILES=1 keeps one a block (the A/B leg). The product
// blocks a launch of `blocks` tiles runs, and their tiles each.
template <int NT, bool F, int W>
std::pair<int, int> product_blocks(const Params& P, int blocks, int smem) {
  if (can_take_two_tiles(P) && !env_is("MIMIC_GEMV_TC_TILES", "1")) {
    const int slots = blocks_per_sm<NT, F, W>(smem) * Context::get().sm_count;
    if (slots > 0 && blocks > slots && (blocks + 1) / 2 <= slots) return {(blocks + 1) / 2, 2};
  }
  return {blocks, 1};
}

template <int NT, bool F, int W>
void launch_w(const Params& P, int blocks, int smem) {
  raise_smem<NT, F, W>();
  Params Q = P;
  const auto [pb, tiles] = product_blocks<NT, F, W>(P, blocks, smem);
  Q.tiles = tiles;
  Q.tile_stride = tiles > 1 ? pb : 0;
  blocks = pb;
  // MIMIC_GEMV_TC_SMEM_PAD=bytes (profiling only; results unchanged): every launch asks for that much
  // more shared memory than it uses, the work split left as it is — what a bigger block costs the
  // chain (round 19's streamed second tile grew gate/up's blocks by 3 KB and slowed every later
  // launch; this separates the size from the streaming). Read at every launch (a recording).
  if (const char* pad = std::getenv("MIMIC_GEMV_TC_SMEM_PAD")) smem = std::min(kMaxSmem, smem + std::max(0, std::atoi(pad)));
  launch_pdl(gemv_tc_kernel<NT, false, F, W>, gemv_tc_kernel<NT, true, F, W>, dim3(blocks + Q.la_blocks), dim3(W * 32),
             (size_t)smem, Context::get().stream, Q);
  MIMIC_CUDA_LAUNCHED();
}

// 12 warps a block wherever the blocks still fit in one wave at 2 an SM, else 8 (round 16, the 3B
// step, same process: 1.4 % faster than 8 everywhere; o −1 µs, gate/up −0.6 µs a layer; q/k/v's 320
// tiles do not fit one wave of 12-warp blocks). Asked of the N <= 8 instantiation whatever N is: the
// warps split K, so the choice fixes the order of the sums and must depend on the shape alone.
// MIMIC_GEMV_TC_WARPS=8: 8 always (the A/B leg; read at every launch, i.e. at a graph's recording).
template <bool F>
int warps_for(const Params& P, int blocks, int smem) {
  const int slots12 = env_is("MIMIC_GEMV_TC_WARPS", "8") ? 0 : blocks_per_sm<1, F, 12>(smem) * Context::get().sm_count;
  const bool fits = blocks <= slots12 || (can_take_two_tiles(P) && (blocks + 1) / 2 <= slots12);
  return fits ? 12 : 8;
}
template <int NT, bool F>
void launch(const Params& P, int blocks, int smem) {
  if (warps_for<F>(P, blocks, smem) == 12) launch_w<NT, F, 12>(P, blocks, smem);
  else launch_w<NT, F, 8>(P, blocks, smem);
}

bool aligned(const void* p, uintptr_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

}  // namespace

bool gemv_tc_enabled() {
  static const bool on = env_switch_on("MIMIC_GEMV_TC");
  return on;
}

bool gemv_tc_fits(const GemvJob& j) {
  return j.packed && j.M % kRows == 0 && j.K % 64 == 0 && aligned(j.packed, 16) && aligned(j.x, 16) &&
         (j.absmax || aligned(j.am_u8, 16)) && Layout(j.K, 2).bytes <= kMaxSmem;
}

namespace {
// A folded RMSNorm (GemvNorm) into P, or false where the launch cannot take it: tile_dot folds it
// only in its one-row warp-slice path (N = 1, x by warp slices of at most 16 blocks — K <= 8192 at
// 8 warps — not ablated), and xn is never written, so a LoRA B needs its h from the launch's own A
// blocks (lora_A set: plan_lora_in).
bool plan_norm(const GemvJob* jobs, int n_jobs, int64_t N, const GemvNorm& norm, Params& P) {
  if (N != 1 || !P.x_warp || (P.ablate & 4) || !aligned(norm.x, 16) || !aligned(norm.w, 16) || !norm.w) return false;
  for (int i = 0; i < n_jobs; ++i)
    if ((jobs[i].lora_B && !jobs[i].lora_A) || jobs[i].K != jobs[0].K) return false;
  if ((jobs[0].K >> 6) > 16 * 8) return false;
  P.norm = norm;
  return true;
}

// The launch's parameters, block count and shared memory (no fold); false when a job does not fit.
bool plan(const GemvJob* jobs, int n_jobs, int64_t N, bool glu, Params& P, int& blocks, int& smem) {
  if (!gemv_tc_enabled() || N < 1 || N > 16 || n_jobs < 1 || n_jobs > kGemvMaxJobs) return false;
  for (int i = 0; i < n_jobs; ++i)
    if (!gemv_tc_fits(jobs[i])) return false;
  P = Params{};
  std::memcpy(P.lut, mimic::NF4_CODE, sizeof P.lut);
  blocks = smem = 0;
  for (int i = 0; i < n_jobs; ++i) {
    P.j[i] = jobs[i];
    P.first_block[i] = blocks;
    if (!glu || i == 0) blocks += jobs[i].M / kRows;
    smem = std::max(smem, Layout(jobs[i].K, glu ? 2 : 1).bytes);
  }
  P.first_block[n_jobs] = blocks;
  // LoRA B staged in shared memory (lora_staged) where every LoRA job allows it: r % 4 == 0 (h by
  // 16-byte copies), r <= 64, aligned h and B; sized for kGemvMaxN rows of h whatever N is, so that
  // the block size — and with it the warp split, the order of the sums — does not depend on N.
  // MIMIC_GEMV_TC_LORA_SMEM=0: read from global in the epilogue (the A/B leg).
  int rmax = 0;
  bool stage = env_switch_on("MIMIC_GEMV_TC_LORA_SMEM");
  for (int i = 0; i < n_jobs; ++i) {
    const GemvJob& j = jobs[i];
    if (!j.lora_B) continue;
    rmax = std::max(rmax, j.r);
    stage = stage && j.r % 4 == 0 && j.r <= 64 && aligned(j.lora_h, 16) && aligned(j.lora_B, 4);
  }
  P.lora_off = P.lora_unit = P.la_blocks = 0;
  if (rmax && stage) {
    P.lora_off = (smem + 15) / 16 * 16;
    P.lora_unit = (kGemvMaxN * rmax * 4 + kRows * rmax * 2 + 15) / 16 * 16;
    smem = P.lora_off + (glu ? 2 : 1) * P.lora_unit;
  }
  P.nj = glu ? 1 : n_jobs;
  P.glu = glu ? 1 : 0;
  P.N = (int)N;
  // read at every plan (a graph's recording), not once, so that one process can alternate A/B legs
  const char* ab = std::getenv("MIMIC_GEMV_TC_ABLATE");
  P.ablate = ab ? std::atoi(ab) : 0;
  P.res_pre = env_switch_on("MIMIC_GEMV_TC_RESPRE");  // 0: the residual loaded in the epilogue (the A/B leg)
  P.x_warp = env_switch_on("MIMIC_GEMV_TC_XWARP");     // 0: x loaded a block ahead (the A/B leg)
  return true;
}
}  // namespace

// The A blocks (lora_a_block) of the jobs that carry lora_A into P.la_blocks — false where the launch
// cannot take them: every LoRA'd job needs A, B and h (B staged in shared memory, the polls read it
// there), K % 8 == 0 and 16-byte rows (the A blocks' 16-byte path: gemv.cu's bits), A rows and x
// fitting the launch's shared memory, and every block of the grid resident at once (the products
// poll for what the A blocks write). No job with lora_A: nothing to add, true.
template <bool F>
bool plan_lora_in(const GemvJob* jobs, int n_jobs, int64_t N, Params& P, int blocks, int smem) {
  int rows = 0;
  for (int i = 0; i < n_jobs; ++i) {
    const GemvJob& j = jobs[i];
    if (!j.lora_A) continue;
    if (!j.lora_B || !j.lora_h || j.K % 8 || !aligned(j.lora_A, 16) || !aligned(j.x, 16)) return false;
    rows += j.r;
  }
  if (!rows) return true;
  if (N > kGemvMaxN || !P.lora_off || (size_t)(kLaRows + 1) * jobs[0].K * 2 + 64 > (size_t)smem) return false;
  // the warp split the launch without A blocks takes (the products' bits), then its product blocks
  const int W = warps_for<F>(P, blocks, smem);
  const int pb = W == 12 ? product_blocks<1, F, 12>(P, blocks, smem).first : product_blocks<1, F, 8>(P, blocks, smem).first;
  const int slots = (W == 12 ? blocks_per_sm<1, F, 12>(smem) : blocks_per_sm<1, F, 8>(smem)) * Context::get().sm_count;
  const int la = (rows + kLaRows - 1) / kLaRows;
  if (pb + la > slots) return false;
  P.la_blocks = la;  // (launch asks warps_for the same question: the same W)
  return true;
}

bool gemv_tc(const GemvJob* jobs, int n_jobs, int64_t N, bool glu, const GemvNorm* norm) {
  Params P;
  int blocks, smem;
  if (!plan(jobs, n_jobs, N, glu, P, blocks, smem)) return false;
  if (norm && !plan_norm(jobs, n_jobs, N, *norm, P)) return false;
  if (!plan_lora_in<false>(jobs, n_jobs, N, P, blocks, smem)) return false;
  if (N <= 8) launch<1, false>(P, blocks, smem);
  else launch<2, false>(P, blocks, smem);
  return true;
}

int gemv_tc_warps(const GemvJob* jobs, int n_jobs, bool glu, bool rope) {
  Params P;
  int blocks, smem;
  if (!plan(jobs, n_jobs, 1, glu, P, blocks, smem)) return 0;
  if (!rope) return warps_for<false>(P, blocks, smem);
  P.rope.head_dim = 1;  // rope pairs: no two-tile blocks (can_take_two_tiles)
  return warps_for<true>(P, blocks, smem);
}

bool gemv_tc_lora_in(const GemvJob& j, int64_t N) { return j.lora_A && gemv_tc(&j, 1, N, false); }

bool gemv_tc_qkv_rope(const GemvJob* jobs, const GemvRope& rope, const GemvNorm* norm) {
  Params P;
  int blocks, smem;
  if (!plan(jobs, 3, 1, false, P, blocks, smem)) return false;
  if (norm && !plan_norm(jobs, 3, 1, *norm, P)) return false;
  P.rope.head_dim = rope.head_dim;  // (no two-tile blocks: plan_lora_in counts the blocks as launch will)
  if (!plan_lora_in<true>(jobs, 3, 1, P, blocks, smem)) return false;
  const int D = rope.head_dim;
  if (D <= 0 || D % kRows || jobs[0].M % D || jobs[1].M % D || jobs[2].M != jobs[1].M || !rope.pos || !rope.inv_freq ||
      !rope.kcache || !rope.vcache || !jobs[0].out)
    return false;
  for (int i = 0; i < 3; ++i) {
    const GemvJob& j = jobs[i];
    MIMIC_CHECK(!j.lora_B || (j.lora_h && j.r > 0), "EINVAL", "gemv_tc_qkv_rope: job ", i, " has LoRA B without h or rank");
    if (j.out_f32 || j.res || j.beta != 0.f) return false;
  }
  P.rope = rope;
  launch<1, true>(P, blocks, smem);
  return true;
}

}  // namespace mimic::cuda
