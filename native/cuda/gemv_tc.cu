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
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/gemv_tc.h"
#include "cuda/pdl.h"
#include "cuda/row_maths.cuh"  // rope_cs, rope_rotate

namespace mimic::cuda {
namespace {

constexpr int kRows = 16;
// W, the warps a block (8 or 12: launch()), is a template parameter of the kernel and its helpers.

using Params = GemvParams;
__device__ unsigned int g_release_probe;  // MIMIC_GEMV_TC_ABLATE & 8

// Dynamic shared memory of a block (bytes): the pair table (the warps' partial sums reuse it), the
// double-quant codes, then per job u (1, or 2 for gate/up) the absmax of its 16 rows [16][nb+1] fp32
// (odd pitch: the 8 rows a warp reads at once sit in 8 banks), the raw u8 absmax codes (rows in tile
// order; a rope-paired tile with an odd nb reads its codes from global instead), and the 4-bit
// weight tile [16][K/2 + 32] (32-byte pad: a quarter-warp's 8-byte loads of 4 rows hit 16 banks).
constexpr int kPairBytes = 256 * 32 * 4;
static_assert(2 * 12 * kRows * 16 * 4 <= kPairBytes, "the partial sums of up to 12 warps fit in the table's space");
struct Layout {
  int nb, am_pitch, w_pitch, am_off[2], u8_off[2], w_off[2], bytes;
  __host__ __device__ Layout(int K, int jobs) {
    nb = K >> 6;
    am_pitch = nb + 1;
    w_pitch = (K >> 1) + 32;
    int o = kPairBytes + 2 * 256 * 4;
    for (int u = 0; u < 2; ++u) {
      am_off[u] = o; o += u < jobs ? 4 * kRows * am_pitch : 0;
      u8_off[u] = o; o += u < jobs ? kRows * nb : 0;  // a multiple of 16: kRows = 16
      w_off[u] = o;  o += u < jobs ? kRows * w_pitch : 0;
    }
    bytes = o;
  }
};

// The weight rows of a block's 16 tile rows r: m0 + r, except in a q/k job of gemv_tc_qkv_rope, where
// rows 8..15 sit hs = D/2 − 8 further on so that tile rows r and r + 8 are a rope pair (d, d + D/2).
struct TileRows {
  int m0, hs;
  __device__ int operator()(int r) const { return m0 + r + (r >= 8 ? hs : 0); }
};

// The pair of byte i (0..3) of word w, from the lane's copy: byte offset (byte·32 + lane)·4. (A shift,
// two LOP3s and the LDS in SASS; round 15 made it one LOP3 by inline PTX: no change in the step.)
__device__ __forceinline__ uint32_t pair_of(const char* tab_lane, uint32_t w, int i) {
  const uint32_t off = i == 0 ? (w << 7) & 0x7f80u : (w >> (8 * i - 7)) & 0x7f80u;
  return *reinterpret_cast<const uint32_t*>(tab_lane + off);
}

// Job u's 4-bit tile [16][K/2], copied into shared memory asynchronously: every byte of the tile in
// flight at once, no register held (round 13: the register-fed v1 kept ~10 KB an SM in flight and
// ran at 15-23 % of DRAM). Round 14 tried each warp staging and awaiting only its own 64-blocks in two
// halves (products overlapping the copy): 4 % slower in the step — the copy is not what a block waits
// for after the PDL wait (the timeline's ablations: the products are).
// Warp w copies rows w, w + W, …, its lanes striding over a row's 16-byte pieces (no integer division
// per piece: round 15's profile had the staging loops at ~25 % of gate/up's instructions).
template <int W>
__device__ __forceinline__ void stage_tile(char* smem, const Layout& Lo, const GemvJob& J, int u, TileRows rows, int tid) {
  const int row_bytes = J.K >> 1, pieces = row_bytes >> 4, warp = tid >> 5, lane = tid & 31;
  char* dst = smem + Lo.w_off[u];
  for (int r = warp; r < kRows; r += W) {
    const uint8_t* src = J.packed + (int64_t)rows(r) * row_bytes;
    for (int c = lane; c < pieces; c += 32) cp_async16(dst + r * Lo.w_pitch + 16 * c, src + 16 * c);
  }
}

// The absmax inputs of job u's 16 rows: u8 codes by cp.async (16·nb contiguous bytes, 16-byte
// aligned; a rope-paired tile's two halves are not, and decode_absmax reads their codes itself),
// or plain fp32 absmax straight into the padded am rows.
template <int W>
__device__ __forceinline__ void stage_absmax(char* smem, const Layout& Lo, const GemvJob& J, int u, TileRows rows, int tid) {
  constexpr int kThreads = W * 32;
  if (J.absmax) {
    const int warp = tid >> 5, lane = tid & 31;
    for (int r = warp; r < kRows; r += W)
      for (int b = lane; b < Lo.nb; b += 32)
        reinterpret_cast<float*>(smem + Lo.am_off[u])[r * Lo.am_pitch + b] = __ldg(J.absmax + (int64_t)rows(r) * Lo.nb + b);
  } else if (rows.hs == 0) {
    const uint8_t* a8 = J.am_u8 + (int64_t)rows.m0 * Lo.nb;
    for (int i = tid; i < (kRows * Lo.nb) >> 4; i += kThreads) cp_async16(smem + Lo.u8_off[u] + 16 * i, a8 + 16 * i);
  } else if (Lo.nb % 2 == 0) {  // rope pairs: two runs of 8 rows, each 8·nb bytes (16-byte multiples)
    const int half = (8 * Lo.nb) >> 4;
    for (int i = tid; i < 2 * half; i += kThreads) {
      const int h = i / half, c = i - h * half;
      cp_async16(smem + Lo.u8_off[u] + 8 * Lo.nb * h + 16 * c, J.am_u8 + (int64_t)rows(8 * h) * Lo.nb + 16 * c);
    }
  }
}

// u8 codes → fp32 absmax of job u's tile (after the copies landed): absmax = code2[u8]·absmax2 + offset.
template <int W>
__device__ __forceinline__ void decode_absmax(char* smem, const Layout& Lo, const GemvJob& J, const float* code2, int u,
                                              TileRows rows, int tid) {
  if (J.absmax) return;
  const uint8_t* a8 = reinterpret_cast<const uint8_t*>(smem + Lo.u8_off[u]);
  float* am = reinterpret_cast<float*>(smem + Lo.am_off[u]);
  const int warp = tid >> 5, lane = tid & 31;
  const bool staged = rows.hs == 0 || Lo.nb % 2 == 0;
  for (int r = warp; r < kRows; r += W) {
    const int64_t row0 = (int64_t)rows(r) * Lo.nb;
    for (int b = lane; b < Lo.nb; b += 32) {
      const uint8_t c = staged ? a8[r * Lo.nb + b] : __ldg(J.am_u8 + row0 + b);
      am[r * Lo.am_pitch + b] = fmaf(code2[c], __ldg(J.absmax2 + ((row0 + b) >> 8)), J.offset);
    }
  }
}

// The products of one 64-block b for job u: 4 MMA steps into a zeroed fragment, scaled by the two
// rows' absmax into acc.
template <int NT>
__device__ __forceinline__ void block_mma(const char* tab_lane, uint2 wa, uint2 wb, float ama, float amb,
                                          const uint4 (&xc)[NT][2], float (&acc)[NT][4]) {
  float t[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) t[j][0] = t[j][1] = t[j][2] = t[j][3] = 0.f;
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const uint32_t la = s < 2 ? wa.x : wa.y, lb = s < 2 ? wb.x : wb.y;
    const int bi = 2 * (s & 1);  // bytes 2s, 2s+1 of the 8: word s/2, bytes bi, bi+1
    uint32_t a[4];
    a[0] = pair_of(tab_lane, la, bi);
    a[2] = pair_of(tab_lane, la, bi + 1);
    a[1] = pair_of(tab_lane, lb, bi);
    a[3] = pair_of(tab_lane, lb, bi + 1);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const uint4& xh = xc[j][s >> 1];  // x words 2s, 2s+1 of the lane's 8
      mma_bf16(t[j], a, (s & 1) ? xh.z : xh.x, (s & 1) ? xh.w : xh.y);
    }
  }
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    acc[j][0] = fmaf(ama, t[j][0], acc[j][0]);
    acc[j][1] = fmaf(ama, t[j][1], acc[j][1]);
    acc[j][2] = fmaf(amb, t[j][2], acc[j][2]);
    acc[j][3] = fmaf(amb, t[j][3], acc[j][3]);
  }
}

__device__ __forceinline__ uint4 shfl4(uint4 v, int src) {
  return make_uint4(__shfl_sync(~0u, v.x, src), __shfl_sync(~0u, v.y, src), __shfl_sync(~0u, v.z, src),
                    __shfl_sync(~0u, v.w, src));
}

// Σ over the warp's 64-blocks [b_lo, b_hi) of the tile's rows g, g+8, for nj jobs (2: gate and up,
// one x) into acc[u] (the C fragments of the NT n-tiles; zero on entry). Codes and absmax from the
// tiles staged in shared memory; x [N, K] from global (L2, pdl.h).
// One row of x (the decode step) and at most 16 blocks a warp (K <= 8192): the warp loads its whole
// x slice at once — lane ℓ holds its 16-byte pieces ℓ, ℓ + 32, … — and each block's B fragment comes
// by shuffles: one L2 round trip a warp instead of one a block (round 15: with x not loaded at all
// the step was 10 % faster — each block waited for its x from L2). Lanes g > 0 feed columns n > 0,
// which nobody reads, so they take the same values as g = 0. Otherwise x is loaded a block ahead.
template <int NT>
__device__ __forceinline__ void tile_dot(char* smem, const Layout& Lo, const GemvJob* Js, int nj, const bf16* x,
                                         int warp, const char* tab_lane, int b_lo, int b_hi, int lane, int N,
                                         float (&acc)[2][NT][4], bool x_ablate, bool x_warp) {
  const int g = lane >> 2, q = lane & 3, K = Js[0].K;
  const int pitch = Lo.w_pitch;
  const int w0 = g * pitch + 8 * q;  // + Lo.w_off[u]
  auto products = [&](int b, const uint4 (&xc)[NT][2]) {  // block b with its B fragments xc
    uint2 wa[2], wb[2];
    const int off = 32 * b;
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      if (u < nj) {
        const char* w = smem + Lo.w_off[u] + w0 + off;
        wa[u] = *reinterpret_cast<const uint2*>(w);
        wb[u] = *reinterpret_cast<const uint2*>(w + 8 * pitch);
      }
    }
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      if (u < nj) {
        const float* am = reinterpret_cast<const float*>(smem + Lo.am_off[u]) + g * Lo.am_pitch + b;
        block_mma<NT>(tab_lane, wa[u], wb[u], am[0], am[8 * Lo.am_pitch], xc, acc[u]);
      }
    }
  };
  if (NT == 1 && N == 1 && b_hi - b_lo <= 16 && x_warp && !x_ablate) {
    constexpr int kT = 4;  // 16-byte pieces a lane: 32·4 = 128 = 16 blocks of 64 values
    const uint4* xp = reinterpret_cast<const uint4*>(x + 64 * b_lo);
    const int pieces = 8 * (b_hi - b_lo);
    uint4 xs[kT];
#pragma unroll
    for (int t = 0; t < kT; ++t) xs[t] = lane + 32 * t < pieces ? __ldcg(xp + lane + 32 * t) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int t = 0; t < kT; ++t) {
      const int nbb = min(4, b_hi - b_lo - 4 * t);
#pragma unroll 1
      for (int bb = 0; bb < nbb; ++bb) {  // block b_lo + 4t + bb: pieces 8bb + 2q, + 1 of xs[t]
        uint4 xc[NT][2];
        xc[0][0] = shfl4(xs[t], 8 * bb + 2 * q);
        xc[0][1] = shfl4(xs[t], 8 * bb + 2 * q + 1);
        products(b_lo + 4 * t + bb, xc);
      }
    }
    return;
  }
  const bf16* xr[NT];
  bool xon[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int n = 8 * j + g;
    xon[j] = n < N;
    xr[j] = x + (int64_t)(xon[j] ? n : 0) * K + 16 * q;
  }
  uint4 xn[NT][2];  // the next block's x, loaded while this one is multiplied
  auto load_x = [&](int b, uint4 (&d)[NT][2]) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      if (x_ablate) {  // MIMIC_GEMV_TC_ABLATE & 4 (timing only): no x load at all
        d[j][0] = d[j][1] = make_uint4(0x3f803f80u + b, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u);
      } else if (xon[j] && b < b_hi) {
        const uint4* xp = reinterpret_cast<const uint4*>(xr[j] + 64 * b);
        d[j][0] = __ldcg(xp);  // through L2: x is another kernel's output (pdl.h: never __ldg under PDL)
        d[j][1] = __ldcg(xp + 1);
      } else {
        d[j][0] = d[j][1] = make_uint4(0, 0, 0, 0);
      }
    }
  };
  load_x(b_lo, xn);
  for (int b = b_lo; b < b_hi; ++b) {
    uint4 xc[NT][2];
#pragma unroll
    for (int j = 0; j < NT; ++j) { xc[j][0] = xn[j][0]; xc[j][1] = xn[j][1]; }
    load_x(b + 1, xn);
    products(b, xc);
  }
}

// The warp's fragments into red[w][row][col] (row 0..15, col = the x row n).
template <int NT>
__device__ __forceinline__ void store_partial(float (*red)[16], const float (&acc)[NT][4], int lane) {
  const int g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int n = 8 * j + 2 * q;
    red[g][n] = acc[j][0];
    red[g][n + 1] = acc[j][1];
    red[g + 8][n] = acc[j][2];
    red[g + 8][n + 1] = acc[j][3];
  }
}

// Σ_i h[n, i]·B[m, i] (the LoRA B half; fp32 in order)
__device__ __forceinline__ float lora_b(const GemvJob& J, int n, int m) {
  float t = 0.f;
  for (int i = 0; i < J.r; ++i) t = fmaf(__ldcg(J.lora_h + (int64_t)n * J.r + i), __bfloat162float(J.lora_B[(int64_t)m * J.r + i]), t);
  return t;
}

// Σ over the warps of tile row r's column n (warp order: fixed), + the job's LoRA B at weight row m
template <int W>
__device__ __forceinline__ float row_total(const float (*red)[16], const GemvJob& J, int r, int n, int m) {
  float v = 0.f;
#pragma unroll
  for (int w = 0; w < W; ++w) v += red[w * kRows + r][n];
  if (J.lora_B) v = fmaf(J.scale, lora_b(J, n, m), v);
  return v;
}

// The q/k/v epilogue of gemv_tc_qkv_rope (one row of x): q and k blocks rotate their rope
// pairs (tile rows r, r + 8) as rope_append does, from the bf16-rounded products; k and v go to the
// cache rows at *pos, q to its out.
template <int W>
__device__ __forceinline__ void rope_epilogue(const Params& P, const GemvJob& J, int ji, TileRows rows,
                                              const float (*red)[16], int tid, float c, float sn) {
  const int p = *P.rope.pos;
  if (ji == 2) {  // v: plain rows into the cache
    if (tid >= kRows) return;
    const int m = rows(tid);
    P.rope.vcache[(int64_t)p * J.M + m] = __float2bfloat16(row_total<W>(red, J, tid, 0, m) * J.alpha);
    return;
  }
  if (tid >= kRows / 2) return;
  const int ma = rows(tid), mb = rows(tid + 8);
  const float x0 = __bfloat162float(__float2bfloat16(row_total<W>(red, J, tid, 0, ma) * J.alpha));
  const float x1 = __bfloat162float(__float2bfloat16(row_total<W>(red, J, tid + 8, 0, mb) * J.alpha));
  bf16* dst = ji == 0 ? static_cast<bf16*>(J.out) : P.rope.kcache + (int64_t)p * J.M;
  rope_rotate(x0, x1, c, sn, dst[ma], dst[mb]);
}

// F: a q/k/v launch with RoPE and the KV append in its epilogue (GemvRope in P.rope; N == 1).
// 3 blocks an SM (<= 80 registers) even where the shared memory only allows 2 (gate/up, down): round
// 15 gave those 128 registers (2 blocks) — 4 % slower: such a block fills the register file, and the
// next kernels' blocks (PDL) can no longer start beside it.
template <int NT, bool PDL, bool F, int W = 8>
__global__ void __launch_bounds__(W * 32, W == 8 ? 3 : 2) gemv_tc_kernel(const __grid_constant__ Params P) {
  extern __shared__ __align__(16) char smem[];
  int ji = 0;
#pragma unroll
  for (int i = 1; i < kGemvMaxJobs; ++i)
    if (i < P.nj && (int)blockIdx.x >= P.first_block[i]) ji = i;
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
    const int tile = (int)blockIdx.x - P.first_block[ji] + it * P.tile_stride;
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
      }
    }
    asm volatile("cp.async.commit_group;\n");
    if (tid < 256) {  // the pair table: thread e writes entry e's 32 copies, 16 bytes at a time, rotated by e so
                      // that the 8 lanes of a quarter-warp hit 8 different bank quads
      const int e = tid;
      const uint32_t v = bf2_bits(P.lut[e >> 4], P.lut[e & 15]);
      const uint4 v4 = make_uint4(v, v, v, v);
      uint32_t* pair = reinterpret_cast<uint32_t*>(smem);
#pragma unroll
      for (int i = 0; i < 8; ++i) *reinterpret_cast<uint4*>(&pair[e * 32 + 4 * ((i + e) & 7)]) = v4;
    }
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
    tile_dot<NT>(smem, Lo, Js, nj, Js[0].x, warp, tab_lane, b_lo, b_end, lane, N, acc, P.ablate & 4, P.x_warp);
    __syncthreads();  // the table is done with: its space takes the partial sums
    float(*red)[W * kRows][16] = reinterpret_cast<float(*)[W * kRows][16]>(smem);
    store_partial<NT>(red[0] + warp * kRows, acc[0], lane);
    if (P.glu) store_partial<NT>(red[1] + warp * kRows, acc[1], lane);
    __syncthreads();
    if (F && P.rope.head_dim) {
      rope_epilogue<W>(P, J, ji, rows, red[0], tid, rc, rs);
    } else if (tid < kRows * 8 * NT) {
      const int r = tid / (8 * NT), n = tid % (8 * NT), m = rows(r);
      if (n < N) {
        const float v = row_total<W>(red[0], J, r, n, m);
        if (P.glu) {  // out = silu(gate)·up (each with its LoRA B first, as gemv.cu)
          const float u = row_total<W>(red[1], P.j[1], r, n, m);
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

template <int NT, bool F, int W>
void launch_w(const Params& P, int blocks, int smem) {
  raise_smem<NT, F, W>();
  // one wave: when a single job (or gate/up) has more tiles than the SMs hold blocks of this size,
  // each block takes two (P.tiles); MIMIC_GEMV_TC_TILES=1 keeps one a block (the A/B leg)
  Params Q = P;
  Q.tiles = 1;
  Q.tile_stride = 0;
  if (can_take_two_tiles(P) && !env_is("MIMIC_GEMV_TC_TILES", "1")) {
    const int slots = blocks_per_sm<NT, F, W>(smem) * Context::get().sm_count;
    if (slots > 0 && blocks > slots && (blocks + 1) / 2 <= slots) {
      Q.tiles = 2;
      blocks = (blocks + 1) / 2;
      Q.tile_stride = blocks;
    }
  }
  launch_pdl(gemv_tc_kernel<NT, false, F, W>, gemv_tc_kernel<NT, true, F, W>, dim3(blocks), dim3(W * 32),
             (size_t)smem, Context::get().stream, Q);
  MIMIC_CUDA_LAUNCHED();
}

// 12 warps a block wherever the blocks still fit in one wave at 2 an SM, else 8 (round 16, the 3B
// step, same process: 1.4 % faster than 8 everywhere; o −1 µs, gate/up −0.6 µs a layer; q/k/v's 320
// tiles do not fit one wave of 12-warp blocks). Asked of the N <= 8 instantiation whatever N is: the
// warps split K, so the choice fixes the order of the sums and must depend on the shape alone.
// MIMIC_GEMV_TC_WARPS=8: 8 always (the A/B leg; read at every launch, i.e. at a graph's recording).
template <int NT, bool F>
void launch(const Params& P, int blocks, int smem) {
  const int slots12 = env_is("MIMIC_GEMV_TC_WARPS", "8") ? 0 : blocks_per_sm<1, F, 12>(smem) * Context::get().sm_count;
  const bool fits = blocks <= slots12 || (can_take_two_tiles(P) && (blocks + 1) / 2 <= slots12);
  if (fits) launch_w<NT, F, 12>(P, blocks, smem);
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

bool gemv_tc(const GemvJob* jobs, int n_jobs, int64_t N, bool glu) {
  Params P;
  int blocks, smem;
  if (!plan(jobs, n_jobs, N, glu, P, blocks, smem)) return false;
  if (N <= 8) launch<1, false>(P, blocks, smem);
  else launch<2, false>(P, blocks, smem);
  return true;
}

bool gemv_tc_qkv_rope(const GemvJob* jobs, const GemvRope& rope) {
  Params P;
  int blocks, smem;
  if (!plan(jobs, 3, 1, false, P, blocks, smem)) return false;
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
