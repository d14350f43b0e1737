// gemv_tc_tile — the pieces of a gemv_tc product tile (16 weight rows × K, 4-bit codes staged in
// shared memory, one row of x or a few) that more than one kernel runs: gemv_tc.cu's launch per
// product and decode_persist.cu's one kernel for all layers of a decode step. The maths, the pair
// table and the work layout are in gemv_tc.cu's header; a sum's order depends only on the shape and
// on W (the warps splitting K), so both kernels give the same bits for the same W.
#pragma once
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/gemv_tc.h"
#include "cuda/row_maths.cuh"  // rope_rotate

namespace mimic::cuda::gemv_tile {

constexpr int kRows = 16;
// W, the warps a block (8 or 12: launch()), is a template parameter of the kernel and its helpers.


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

// The pair table at smem (kPairBytes), filled by threads e = 0..255 (every block that uses it): thread
// e writes entry e's 32 copies, 16 bytes at a time, rotated by e so that the 8 lanes of a quarter-warp
// hit 8 different bank quads.
__device__ __forceinline__ void fill_pair_table(char* smem, const float (&lut)[16], int e) {
  const uint32_t v = bf2_bits(lut[e >> 4], lut[e & 15]);
  const uint4 v4 = make_uint4(v, v, v, v);
  uint32_t* pair = reinterpret_cast<uint32_t*>(smem);
#pragma unroll
  for (int i = 0; i < 8; ++i) *reinterpret_cast<uint4*>(&pair[e * 32 + 4 * ((i + e) & 7)]) = v4;
}

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
// rows' absmax into acc. LUT = false (MIMIC_GEMV_TC_ABLATE & 16, timing only): the code words
// themselves as the A fragments — what the products cost without their pair lookups.
template <int NT, bool LUT = true>
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
    if constexpr (LUT) {
      a[0] = pair_of(tab_lane, la, bi);
      a[2] = pair_of(tab_lane, la, bi + 1);
      a[1] = pair_of(tab_lane, lb, bi);
      a[3] = pair_of(tab_lane, lb, bi + 1);
    } else {
      a[0] = la >> bi; a[2] = la << bi; a[1] = lb >> bi; a[3] = lb << bi;
    }
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

// The products of 64-block b of the tile's rows g, g+8 for nj jobs (2: gate and up, one x) with their
// B fragments xc, into acc[u]: the weight words from the tile staged in shared memory, the absmax
// decoded beside it. MIMIC_GEMV_TC_ABLATE (timing only, wrong results): & 16 the code words themselves
// as A (no lookups), & 32 no weight loads from shared memory either.
template <int NT>
__device__ __forceinline__ void block_products(const char* smem, const Layout& Lo, int nj, const char* tab_lane, int b,
                                               int lane, const uint4 (&xc)[NT][2], float (&acc)[2][NT][4], int ablate) {
  const bool no_lut = ablate & 16, no_wlds = ablate & 32;
  const int g = lane >> 2, q = lane & 3;
  const int pitch = Lo.w_pitch;
  const int w0 = g * pitch + 8 * q + 32 * b;  // + Lo.w_off[u]
  uint2 wa[2], wb[2];
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    if (u < nj) {
      if (no_wlds) {
        wa[u] = make_uint2(0x3f803f80u + b, lane);
        wb[u] = make_uint2(0x3f803f80u ^ b, u);
        continue;
      }
      const char* w = smem + Lo.w_off[u] + w0;
      wa[u] = *reinterpret_cast<const uint2*>(w);
      wb[u] = *reinterpret_cast<const uint2*>(w + 8 * pitch);
    }
  }
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    if (u < nj) {
      const float* am = reinterpret_cast<const float*>(smem + Lo.am_off[u]) + g * Lo.am_pitch + b;
      if (no_lut || no_wlds) block_mma<NT, false>(tab_lane, wa[u], wb[u], am[0], am[8 * Lo.am_pitch], xc, acc[u]);
      else block_mma<NT>(tab_lane, wa[u], wb[u], am[0], am[8 * Lo.am_pitch], xc, acc[u]);
    }
  }
}

// The warp-slice path (one row of x, at most 16 blocks a warp: K <= 8192 at 8 warps): the warp loads
// its whole x slice at once — lane ℓ holds its 16-byte pieces ℓ, ℓ + 32, … of x[64·b_lo ..) — and each
// block's B fragment comes by shuffles: one L2 round trip a warp instead of one a block (round 15:
// with x not loaded at all the step was 10 % faster — each block waited for its x from L2). Lanes
// g > 0 feed columns n > 0, which nobody reads, so they take the same values as g = 0.
// XS: x lies in shared memory (decode_persist.cu), read plainly. nrm (not XS): the RMSNorm folded in
// (GemvNorm) — the pieces are bf16(w ⊙ x_fp32) of the residual row, and *ss gets the lane's Σ x_fp32²
// over the pieces it loaded (every piece of the warp's slice by exactly one lane).
constexpr int kSlicePieces = 4;  // 16-byte pieces a lane: 32·4 = 128 = 16 blocks of 64 values
// A folded norm's x piece pc (8 values): bf16(w ⊙ x) of the fp32 residual row (another kernel's
// output: through L2) and its norm weight, the squares of x added to s in order — the one text of
// gemv_tc's products (warp_x_slice) and its LoRA A blocks, so that both round the same way.
__device__ __forceinline__ uint4 fold_piece(const float4* xf, const float4* wf, int pc, float& s) {
  const float4 a = __ldcg(xf + 2 * pc), b = __ldcg(xf + 2 * pc + 1), wa = __ldg(wf + 2 * pc), wb = __ldg(wf + 2 * pc + 1);
  const uint4 v = make_uint4(bf2_bits(wa.x * a.x, wa.y * a.y), bf2_bits(wa.z * a.z, wa.w * a.w),
                             bf2_bits(wb.x * b.x, wb.y * b.y), bf2_bits(wb.z * b.z, wb.w * b.w));
  s = fmaf(a.x, a.x, s); s = fmaf(a.y, a.y, s); s = fmaf(a.z, a.z, s); s = fmaf(a.w, a.w, s);
  s = fmaf(b.x, b.x, s); s = fmaf(b.y, b.y, s); s = fmaf(b.z, b.z, s); s = fmaf(b.w, b.w, s);
  return v;
}
// A folded norm's scale r = rsqrt(Σ x² / K + eps) from the W warps' sums, added in warp order
template <int W>
__device__ __forceinline__ float fold_scale(const float* warp_sums, int K, float eps) {
  float t = 0.f;
#pragma unroll
  for (int w = 0; w < W; ++w) t += warp_sums[w];
  return rsqrtf(t / K + eps);
}
__device__ __forceinline__ bool warp_slice_fits(int NT, int N, int b_lo, int b_hi) { return NT == 1 && N == 1 && b_hi - b_lo <= 16; }
template <bool XS>
__device__ __forceinline__ void warp_x_slice(const bf16* x, const GemvNorm* nrm, int b_lo, int b_hi, int lane,
                                             uint4 (&xs)[kSlicePieces], float* ss) {
  const int pieces = 8 * (b_hi - b_lo);
  if (!XS && nrm && nrm->x) {
    const float4* xf = reinterpret_cast<const float4*>(nrm->x + 64 * b_lo);  // (L2: the residual is another kernel's output)
    const float4* wf = reinterpret_cast<const float4*>(nrm->w + 64 * b_lo);
    float s = 0.f;
#pragma unroll
    for (int t = 0; t < kSlicePieces; ++t) {
      const int pc = lane + 32 * t;
      if (pc < pieces) {
        xs[t] = fold_piece(xf, wf, pc, s);
      } else {
        xs[t] = make_uint4(0, 0, 0, 0);
      }
    }
    *ss = s;
    return;
  }
  const uint4* xp = reinterpret_cast<const uint4*>(x + 64 * b_lo);
#pragma unroll
  for (int t = 0; t < kSlicePieces; ++t)
    xs[t] = lane + 32 * t < pieces ? (XS ? xp[lane + 32 * t] : __ldcg(xp + lane + 32 * t)) : make_uint4(0, 0, 0, 0);
}
// The products of the warp's blocks [b_lo, b_hi) with the x slice xs (warp_x_slice). UB: blocks
// unrolled UB at a time — independent MMA chains in flight (the sums into acc keep their order: the
// same bits); gemv_tc_kernel keeps 1 (80 registers).
template <int UB = 1>
__device__ __forceinline__ void warp_slice_products(const char* smem, const Layout& Lo, int nj, const char* tab_lane, int b_lo,
                                                    int b_hi, int lane, const uint4 (&xs)[kSlicePieces],
                                                    float (&acc)[2][1][4], int ablate) {
  const int q = lane & 3;
#pragma unroll
  for (int t = 0; t < kSlicePieces; ++t) {
    const int nbb = min(4, b_hi - b_lo - 4 * t);
#pragma unroll UB
    for (int bb = 0; bb < nbb; ++bb) {  // block b_lo + 4t + bb: pieces 8bb + 2q, + 1 of xs[t]
      uint4 xc[1][2];
      xc[0][0] = shfl4(xs[t], 8 * bb + 2 * q);
      xc[0][1] = shfl4(xs[t], 8 * bb + 2 * q + 1);
      block_products<1>(smem, Lo, nj, tab_lane, b_lo + 4 * t + bb, lane, xc, acc, ablate);
    }
  }
}

// Σ over the warp's 64-blocks [b_lo, b_hi) of the tile's rows g, g+8, for nj jobs (2: gate and up,
// one x) into acc[u] (the C fragments of the NT n-tiles; zero on entry). Codes and absmax from the
// tiles staged in shared memory; x [N, K] from global (L2, pdl.h): by warp slices where they fit
// (warp_x_slice; x_warp, not ablated), else loaded a block ahead. XS, UB, nrm, ss: warp_x_slice's
// and warp_slice_products'.
template <int NT, bool XS = false, int UB = 1>
__device__ __forceinline__ void tile_dot(char* smem, const Layout& Lo, const GemvJob* Js, int nj, const bf16* x,
                                         int warp, const char* tab_lane, int b_lo, int b_hi, int lane, int N,
                                         float (&acc)[2][NT][4], int ablate, bool x_warp,
                                         const GemvNorm* nrm = nullptr, float* ss = nullptr) {
  const bool x_ablate = ablate & 4;
  const int g = lane >> 2, q = lane & 3, K = Js[0].K;
  if constexpr (NT == 1) {
    if (warp_slice_fits(NT, N, b_lo, b_hi) && x_warp && !x_ablate) {
      uint4 xs[kSlicePieces];
      warp_x_slice<XS>(x, nrm, b_lo, b_hi, lane, xs, ss);
      warp_slice_products<UB>(smem, Lo, nj, tab_lane, b_lo, b_hi, lane, xs, acc, ablate);
      return;
    }
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
    block_products<NT>(smem, Lo, nj, tab_lane, b, lane, xc, acc, ablate);
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

// The LoRA B half of a tile staged in shared memory (gemv_tc.cu, lora_staged): h [kGemvMaxN][r] fp32
// (the x rows' h = x·Aᵀ) and the tile's 16 rows of B [16][r] bf16. Null h: read from global instead.
struct LoraStaged {
  const float* h = nullptr;
  const bf16* b = nullptr;
};

// Σ_i h[n, i]·B[m, i] (the LoRA B half; fp32 in order), from global memory or — the same terms in
// the same order, so the same bits — from the staged copy (tile row r of the tile whose row is m)
__device__ __forceinline__ float lora_b(const GemvJob& J, int n, int m, int r = 0, LoraStaged S = {}) {
  float t = 0.f;
  if (S.h) {
    for (int i = 0; i < J.r; ++i) t = fmaf(S.h[n * J.r + i], __bfloat162float(S.b[r * J.r + i]), t);
    return t;
  }
  for (int i = 0; i < J.r; ++i) t = fmaf(__ldcg(J.lora_h + (int64_t)n * J.r + i), __bfloat162float(J.lora_B[(int64_t)m * J.r + i]), t);
  return t;
}

// Σ over the warps of tile row r's column n (warp order: fixed), times xs (a folded RMSNorm's r, else
// 1: no bit changes), + the job's LoRA B at weight row m
template <int W>
__device__ __forceinline__ float row_total(const float (*red)[16], const GemvJob& J, int r, int n, int m, LoraStaged S = {},
                                           float xs = 1.f) {
  float v = 0.f;
#pragma unroll
  for (int w = 0; w < W; ++w) v += red[w * kRows + r][n];
  v *= xs;
  if (J.lora_B) v = fmaf(J.scale, lora_b(J, n, m, r, S), v);
  return v;
}

// The q/k/v epilogue of gemv_tc_qkv_rope (one row of x): q and k blocks rotate their rope
// pairs (tile rows r, r + 8) as rope_append does, from the bf16-rounded products; k and v go to the
// cache rows at *pos, q to its out.
template <int W>
__device__ __forceinline__ void rope_epilogue(const GemvRope& R, const GemvJob& J, int ji, TileRows rows,
                                              const float (*red)[16], int tid, float c, float sn, LoraStaged S = {},
                                              float xs = 1.f) {
  const int p = *R.pos;
  if (ji == 2) {  // v: plain rows into the cache
    if (tid >= kRows) return;
    const int m = rows(tid);
    R.vcache[(int64_t)p * J.M + m] = __float2bfloat16(row_total<W>(red, J, tid, 0, m, S, xs) * J.alpha);
    return;
  }
  if (tid >= kRows / 2) return;
  const int ma = rows(tid), mb = rows(tid + 8);
  const float x0 = __bfloat162float(__float2bfloat16(row_total<W>(red, J, tid, 0, ma, S, xs) * J.alpha));
  const float x1 = __bfloat162float(__float2bfloat16(row_total<W>(red, J, tid + 8, 0, mb, S, xs) * J.alpha));
  bf16* dst = ji == 0 ? static_cast<bf16*>(J.out) : R.kcache + (int64_t)p * J.M;
  rope_rotate(x0, x1, c, sn, dst[ma], dst[mb]);
}

}  // namespace mimic::cuda::gemv_tile
