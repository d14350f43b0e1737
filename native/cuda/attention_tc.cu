// attention_tc — causal GQA flash attention on the tensor cores (mma.sync.m16n8k16 bf16 → fp32; sm_80+,
// runs on Hopper; wgmma is a later step). Same maths, shapes and accumulate-into semantics as the
// CUDA-core kernels of attention.cu, which remain the fallback: attention.cu calls in here first
// (the default since round 7: every op/model row passes, 8×512 training 13.3k → 20.0k tok/s on an
// H200) unless MIMIC_ATTN_TC=0 (or attention_tc_override(0)), for D ∈ {64, 128} with 16-byte-aligned
// pointers.
//
// Shapes: q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D] (bf16, row stride H·D), out like q, lse [B, Hq, Tq] fp32
// (natural log). Query i sits at absolute position q_offset + i and sees keys j <= q_offset + i;
// head h reads KV head h / G, G = Hq / Hkv. sc = 1/sqrt(D).
//   forward (a block = 4 warps = 64 queries of one head; a warp owns 16 query rows):
//     Q tile [64, D] → shared (cp.async) → A fragments in registers (ldmatrix), kept for the block.
//     K/V tiles [64, D] stream through two cp.async shared-memory stages (tile t+1 loads while t computes).
//     S = Q Kᵀ (mma, fp32 accumulators 16×64 per warp); causal/bounds mask on tiles that need it;
//     online softmax in the log2 domain: m' = max(m, max_j S_ij·sc·log2e); P = 2^(S·sc·log2e − m');
//     l' = l·2^(m−m') + Σ_j P;  O' = O·2^(m−m') + P V  (P re-packed from the S accumulators straight
//     into bf16 A fragments; V as B fragments by ldmatrix.trans).  out = O / l;  lse = (m + log2 l)·ln2.
//   backward (training shapes: q_offset = 0, Tq = Tk = T), FA2-style, three launches:
//     0. Δ_i = dout_i · out_i  (fp32 scratch [B, Hq, T]);
//     1. dq: a block per 64 queries of a head; streams K/V tiles 0..diagonal (two stages):
//        S = Q Kᵀ, dP = dO Vᵀ, P = exp(S·sc − lse), dS = P ∘ (dP − Δ);  dq += sc · dS K;
//     2. dk/dv: a block per 64 keys of a KV head; streams (Q, dO, lse, Δ) tiles of the G query heads
//        from the diagonal on (two stages): Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, Pᵀ, dSᵀ as above;
//        dv += Pᵀ dO;  dk += sc · dSᵀ Q.
//     No atomics: deterministic, like the CUDA-core kernels. Results are ADDED to dq/dk/dv (bf16).
// Fragment layouts (PTX ISA, mma.m16n8k16, g = lane/4, t = lane%4): A regs a0..a3 = rows g, g+8 ×
// k 2t..2t+1, then k 8+2t..; B regs b0, b1 = k 2t..2t+1 / 8+2t.. × n g; C c0,c1 = row g, cols 2t, 2t+1;
// c2,c3 = row g+8. Shared tiles are row-major with rows padded to D + 8 bf16 (16 bytes), so the 8
// row addresses of one ldmatrix 8×8 hit 8 distinct 4-bank groups (no conflicts).
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "cuda/attention_tc.h"
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {

constexpr int kWarpsTc = 4, kThreadsTc = kWarpsTc * 32;
constexpr int kBM = 64, kBN = 64;  // query rows / key rows per tile (16 per warp)
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

// ---- PTX wrappers ---------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<uint32_t*>(&v);
}

// ---- tile helpers ---------------------------------------------------------------------------------
// Copy rows [r0, r0 + 64) of a [rows, H·D] tensor (one head's D columns: base already offset to the
// head, row stride `stride` elements) into sm[64][LD]; rows >= nrows are zero-filled.
template <int D>
__device__ __forceinline__ void load_tile(bf16* sm, const bf16* base, int r0, int nrows, int64_t stride) {
  constexpr int LD = D + 8, CPR = D / 8;  // 16-byte chunks per row
#pragma unroll
  for (int e = threadIdx.x; e < 64 * CPR; e += kThreadsTc) {
    const int r = e / CPR, c = e % CPR, row = r0 + r;
    const bool ok = row < nrows;
    const bf16* src = base + (ok ? (int64_t)row * stride + c * 8 : 0);
    cp_async16(sm + r * LD + c * 8, src, ok);
  }
}

// K/V double buffering of a kernel walking key tiles t = 0..ntiles-1 (tile 0 already requested and
// committed): requests tile t+1 into buffer (t+1)&1, waits until tile t in buffer t&1 has landed,
// and makes it visible to the block. Returns tile t's K and V.
template <int D>
__device__ __forceinline__ void kv_tile(bf16* ks, bf16* vs, const bf16* kg, const bf16* vg, int t, int ntiles, int nrows,
                                        int64_t kstride, const bf16*& kb, const bf16*& vb) {
  constexpr int TILE = 64 * (D + 8);
  const int buf = t & 1;
  if (t + 1 < ntiles) {
    load_tile<D>(ks + (buf ^ 1) * TILE, kg, (t + 1) * kBN, nrows, kstride);
    load_tile<D>(vs + (buf ^ 1) * TILE, vg, (t + 1) * kBN, nrows, kstride);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
  kb = ks + buf * TILE;
  vb = vs + buf * TILE;
}

// A fragments (16 rows × 16 cols at (row0, col0)) of a row-major shared tile.
template <int LD>
__device__ __forceinline__ void lda(uint32_t (&a)[4], const bf16* sm, int row0, int col0, int lane) {
  ldsm_x4(a, sm + (row0 + (lane & 15)) * LD + col0 + (lane >> 4) * 8);
}
// B fragments for two n-tiles where B[k][n] = M[n][k] (M row-major, rows = n): n rows n0..n0+15,
// k cols k0..k0+15. Out: b[0], b[1] for n0..n0+7; b[2], b[3] for n0+8..n0+15.
template <int LD>
__device__ __forceinline__ void ldb_nk(uint32_t (&b)[4], const bf16* sm, int n0, int k0, int lane) {
  const int mi = lane >> 3, r = lane & 7;
  ldsm_x4(b, sm + (n0 + (mi >> 1) * 8 + r) * LD + k0 + (mi & 1) * 8);
}
// B fragments for two n-tiles where B[k][n] = M[k][n] (M row-major, rows = k): k rows k0..k0+15,
// n cols n0..n0+15 (ldmatrix.trans). Out: b[0], b[1] for n0..n0+7; b[2], b[3] for n0+8..
template <int LD>
__device__ __forceinline__ void ldb_kn(uint32_t (&b)[4], const bf16* sm, int k0, int n0, int lane) {
  const int mi = lane >> 3, r = lane & 7;
  ldsm_x4_t(b, sm + (k0 + (mi & 1) * 8 + r) * LD + n0 + (mi >> 1) * 8);
}

// acc[16 rows × 64 cols] (8 n-tiles) = A (16 × D, fragments from shared rows row0..) · Mᵀ, M = sm tile [64][D].
template <int D>
__device__ __forceinline__ void gemm_abt_smem(float (&acc)[8][4], const bf16* a_sm, int row0, const bf16* m_sm,
                                              int lane) {
  constexpr int LD = D + 8;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    lda<LD>(a, a_sm, row0, kk * 16, lane);
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      uint32_t b[4];
      ldb_nk<LD>(b, m_sm, np * 16, kk * 16, lane);
      mma16816(acc[2 * np], a, b[0], b[1]);
      mma16816(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}
// Same with A already in registers (D/16 fragments).
template <int D>
__device__ __forceinline__ void gemm_abt_reg(float (&acc)[8][4], const uint32_t (&af)[D / 16][4], const bf16* m_sm,
                                             int lane) {
  constexpr int LD = D + 8;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      uint32_t b[4];
      ldb_nk<LD>(b, m_sm, np * 16, kk * 16, lane);
      mma16816(acc[2 * np], af[kk], b[0], b[1]);
      mma16816(acc[2 * np + 1], af[kk], b[2], b[3]);
    }
  }
}
// acc[16 × D] += P (16 × 64, fp32 accumulators re-packed as bf16 A fragments) · M, M = sm tile [64][D].
template <int D>
__device__ __forceinline__ void gemm_pm(float (&acc)[D / 8][4], const float (&p)[8][4], const bf16* m_sm, int lane) {
  constexpr int LD = D + 8;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    uint32_t a[4];
    a[0] = pack_bf16(p[2 * kk][0], p[2 * kk][1]);
    a[1] = pack_bf16(p[2 * kk][2], p[2 * kk][3]);
    a[2] = pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[3] = pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      ldb_kn<LD>(b, m_sm, kk * 16, dp * 16, lane);
      mma16816(acc[2 * dp], a, b[0], b[1]);
      mma16816(acc[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// ---- forward ----------------------------------------------------------------------------------------
template <int D>
__global__ void __launch_bounds__(kThreadsTc) attn_fwd_tc_kernel(bf16* __restrict__ out, float* __restrict__ lse,
                                                                 const bf16* __restrict__ q, const bf16* __restrict__ k,
                                                                 const bf16* __restrict__ v, int Tq, int Tk,
                                                                 int q_offset, int Hq, int Hkv) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int LD = D + 8, TILE = 64 * LD;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* ks = qs + TILE;      // [2][64][LD]
  bf16* vs = ks + 2 * TILE;  // [2][64][LD]
  const int qt = gridDim.x - 1 - blockIdx.x;  // longest (most keys) blocks first
  const int h = blockIdx.y, b = blockIdx.z, hk = h / (Hq / Hkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int i0 = qt * kBM;
  const int64_t qstride = (int64_t)Hq * D, kstride = (int64_t)Hkv * D;
  const bf16* qg = q + ((int64_t)b * Tq * Hq + h) * D;
  const bf16* kg = k + ((int64_t)b * Tk * Hkv + hk) * D;
  const bf16* vg = v + ((int64_t)b * Tk * Hkv + hk) * D;
  const float sl2 = rsqrtf((float)D) * kLog2e;

  const int kend = min(Tk, q_offset + min(Tq, i0 + kBM));  // keys [0, kend) matter to this block
  const int ntiles = (kend + kBN - 1) / kBN;

  load_tile<D>(qs, qg, i0, Tq, qstride);
  cp_async_commit();
  load_tile<D>(ks, kg, 0, Tk, kstride);
  load_tile<D>(vs, vg, 0, Tk, kstride);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) lda<LD>(qf[kk], qs, warp * 16, kk * 16, lane);

  const int row_a = i0 + warp * 16 + g;  // this thread's two query rows: row_a, row_a + 8
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  for (int t = 0; t < ntiles; ++t) {
    const int j0 = t * kBN;
    const bf16 *kb, *vb;
    kv_tile<D>(ks, vs, kg, vg, t, ntiles, Tk, kstride, kb, vb);

    float s[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
    gemm_abt_reg<D>(s, qf, kb, lane);

    // mask only where a key can be past the block's first query or past Tk
    if (j0 + kBN - 1 > q_offset + i0 || j0 + kBN > Tk) {
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int j = j0 + n * 8 + 2 * t4 + (c & 1), i = row_a + (c >> 1) * 8;
          if (j > q_offset + i || j >= Tk) s[n][c] = -INFINITY;
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      mx = quad_max(mx) * sl2;
      const float mn = fmaxf(m[r], mx);
      const float base = mn == -INFINITY ? 0.f : mn;
      const float corr = exp2f(m[r] - base);  // m = −inf → 0
      m[r] = mn;
      float rs = 0.f;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        s[n][2 * r] = exp2f(s[n][2 * r] * sl2 - base);
        s[n][2 * r + 1] = exp2f(s[n][2 * r + 1] * sl2 - base);
        rs += s[n][2 * r] + s[n][2 * r + 1];
      }
      l[r] = l[r] * corr + rs;  // per-thread partial over its columns; the quad sums it at the end
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][2 * r] *= corr;
        o[n][2 * r + 1] *= corr;
      }
    }
    gemm_pm<D>(o, s, vb, lane);
    __syncthreads();  // everyone is done with buf before the next iteration refills it
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lt = quad_sum(l[r]);
    const int i = row_a + r * 8;
    if (i >= Tq) continue;
    const float inv = lt > 0.f ? 1.f / lt : 0.f;
    bf16* orow = out + (((int64_t)b * Tq + i) * Hq + h) * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const uint32_t pk = pack_bf16(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
      *reinterpret_cast<uint32_t*>(orow + n * 8 + 2 * t4) = pk;
    }
    if (lse && t4 == 0) lse[((int64_t)b * Hq + h) * Tq + i] = (m[r] + log2f(lt)) * kLn2;
  }
#endif
}

// ---- backward ---------------------------------------------------------------------------------------
// Δ[b, h, i] = Σ_d dout · out; a warp per (b, i, h) row.
template <int D>
__global__ void attn_bwd_delta_kernel(float* __restrict__ delta, const bf16* __restrict__ dout,
                                      const bf16* __restrict__ o, int B, int T, int Hq) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);  // (b·T + i)·Hq + h
  const int lane = threadIdx.x & 31;
  if (row >= (int64_t)B * T * Hq) return;
  float acc = 0.f;
  for (int d = lane * 2; d < D; d += 64) {
    const __nv_bfloat162 x = *reinterpret_cast<const __nv_bfloat162*>(dout + row * D + d);
    const __nv_bfloat162 y = *reinterpret_cast<const __nv_bfloat162*>(o + row * D + d);
    acc += __bfloat162float(x.x) * __bfloat162float(y.x) + __bfloat162float(x.y) * __bfloat162float(y.y);
  }
  acc = warp_sum(acc);
  if (lane == 0) {
    const int h = (int)(row % Hq);
    const int64_t bi = row / Hq;
    const int i = (int)(bi % T), bb = (int)(bi / T);
    delta[((int64_t)bb * Hq + h) * T + i] = acc;
  }
}

// dq: a block per 64 queries of head h; K/V tiles 0..diagonal through two cp.async stages.
template <int D>
__global__ void __launch_bounds__(kThreadsTc) attn_bwd_dq_tc_kernel(bf16* __restrict__ dq, const bf16* __restrict__ dout,
                                                                    const bf16* __restrict__ q, const bf16* __restrict__ k,
                                                                    const bf16* __restrict__ v, const float* __restrict__ lse,
                                                                    const float* __restrict__ delta, int T, int Hq,
                                                                    int Hkv) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int LD = D + 8, TILE = 64 * LD;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* dos = qs + TILE;
  bf16* ks = dos + TILE;     // [2][64][LD]
  bf16* vs = ks + 2 * TILE;  // [2][64][LD]
  const int qt = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, hk = h / (Hq / Hkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int i0 = qt * kBM;
  const int64_t qstride = (int64_t)Hq * D, kstride = (int64_t)Hkv * D;
  const bf16* qg = q + ((int64_t)b * T * Hq + h) * D;
  const bf16* dog = dout + ((int64_t)b * T * Hq + h) * D;
  const bf16* kg = k + ((int64_t)b * T * Hkv + hk) * D;
  const bf16* vg = v + ((int64_t)b * T * Hkv + hk) * D;
  const float sc = rsqrtf((float)D), sl2 = sc * kLog2e;
  const int ntiles = (min(T, i0 + kBM) + kBN - 1) / kBN;

  load_tile<D>(qs, qg, i0, T, qstride);
  load_tile<D>(dos, dog, i0, T, qstride);
  load_tile<D>(ks, kg, 0, T, kstride);
  load_tile<D>(vs, vg, 0, T, kstride);
  cp_async_commit();

  const int row_a = i0 + warp * 16 + g;
  float lse2[2], del[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row_a + r * 8;
    const int64_t li = ((int64_t)b * Hq + h) * T + i;
    lse2[r] = i < T ? lse[li] * kLog2e : 0.f;
    del[r] = i < T ? delta[li] : 0.f;
  }
  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

  for (int t = 0; t < ntiles; ++t) {
    const int j0 = t * kBN;
    const bf16 *kb, *vb;
    kv_tile<D>(ks, vs, kg, vg, t, ntiles, T, kstride, kb, vb);
    float s[8][4], dp[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c) s[n][c] = dp[n][c] = 0.f;
    gemm_abt_smem<D>(s, qs, warp * 16, kb, lane);
    gemm_abt_smem<D>(dp, dos, warp * 16, vb, lane);
    const bool need_mask = j0 + kBN - 1 > i0 || j0 + kBN > T;
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int r = c >> 1, i = row_a + r * 8, j = j0 + n * 8 + 2 * t4 + (c & 1);
        float p = exp2f(s[n][c] * sl2 - lse2[r]);
        if (need_mask && (j > i || j >= T || i >= T)) p = 0.f;
        s[n][c] = p * (dp[n][c] - del[r]);  // dS
      }
    gemm_pm<D>(acc, s, kb, lane);
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row_a + r * 8;
    if (i >= T) continue;
    bf16* row = dq + (((int64_t)b * T + i) * Hq + h) * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      __nv_bfloat162* p = reinterpret_cast<__nv_bfloat162*>(row + n * 8 + 2 * t4);
      const __nv_bfloat162 x = *p;
      *p = __floats2bfloat162_rn(__bfloat162float(x.x) + acc[n][2 * r] * sc,
                                 __bfloat162float(x.y) + acc[n][2 * r + 1] * sc);
    }
  }
#endif
}

// dk, dv: a block per 64 keys of KV head hk; (Q, dO, lse, Δ) tiles of the G heads from the diagonal on.
template <int D>
__global__ void __launch_bounds__(kThreadsTc) attn_bwd_dkdv_tc_kernel(
    bf16* __restrict__ dk, bf16* __restrict__ dv, const bf16* __restrict__ dout, const bf16* __restrict__ q,
    const bf16* __restrict__ k, const bf16* __restrict__ v, const float* __restrict__ lse,
    const float* __restrict__ delta, int T, int Hq, int Hkv) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int LD = D + 8, TILE = 64 * LD;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* vs = ks + TILE;
  bf16* qs = vs + TILE;       // [2][64][LD]
  bf16* dos = qs + 2 * TILE;  // [2][64][LD]
  float* lse_s = reinterpret_cast<float*>(dos + 2 * TILE);  // [2][64], log2 domain
  float* del_s = lse_s + 2 * kBM;                           // [2][64]
  const int kt = blockIdx.x;  // low key tiles see the most query tiles: they launch first
  const int hk = blockIdx.y, b = blockIdx.z, G = Hq / Hkv;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int j0 = kt * kBN;
  const int64_t qstride = (int64_t)Hq * D, kstride = (int64_t)Hkv * D;
  const float sc = rsqrtf((float)D), sl2 = sc * kLog2e;
  const int nq = (T - j0 + kBM - 1) / kBM;  // query tiles at or after the diagonal, per head
  const int items = G * nq;

  load_tile<D>(ks, k + ((int64_t)b * T * Hkv + hk) * D, j0, T, kstride);
  load_tile<D>(vs, v + ((int64_t)b * T * Hkv + hk) * D, j0, T, kstride);
  auto issue = [&](int it, int bf) {
    const int h = hk * G + it / nq, i0 = j0 + (it % nq) * kBM;
    load_tile<D>(qs + bf * TILE, q + ((int64_t)b * T * Hq + h) * D, i0, T, qstride);
    load_tile<D>(dos + bf * TILE, dout + ((int64_t)b * T * Hq + h) * D, i0, T, qstride);
    const int tid = threadIdx.x, rr = tid & 63, i = i0 + rr;
    const int64_t li = ((int64_t)b * Hq + h) * T + i;
    if (tid < 64) lse_s[bf * kBM + rr] = i < T ? lse[li] * kLog2e : INFINITY;
    else del_s[bf * kBM + rr] = i < T ? delta[li] : 0.f;
  };
  issue(0, 0);
  cp_async_commit();

  const int key_a = j0 + warp * 16 + g;  // this thread's two key rows: key_a, key_a + 8
  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int c = 0; c < 4; ++c) dka[n][c] = dva[n][c] = 0.f;

  for (int it = 0; it < items; ++it) {
    const int buf = it & 1, i0 = j0 + (it % nq) * kBM;
    if (it + 1 < items) {
      issue(it + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* qb = qs + buf * TILE;
    const bf16* db = dos + buf * TILE;
    const float* lb = lse_s + buf * kBM;
    const float* deb = del_s + buf * kBM;
    float s[8][4], dp[8][4];  // Sᵀ, dPᵀ: rows = this warp's 16 keys, cols = the tile's 64 queries
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c) s[n][c] = dp[n][c] = 0.f;
    gemm_abt_smem<D>(s, ks, warp * 16, qb, lane);
    gemm_abt_smem<D>(dp, vs, warp * 16, db, lane);
    const bool need_mask = i0 < j0 + kBN - 1 || i0 + kBM > T;
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int col = n * 8 + 2 * t4 + (c & 1), i = i0 + col, j = key_a + (c >> 1) * 8;
        float p = exp2f(s[n][c] * sl2 - lb[col]);
        if (need_mask && (j > i || i >= T || j >= T)) p = 0.f;
        s[n][c] = p;
        dp[n][c] = p * (dp[n][c] - deb[col]);  // dSᵀ
      }
    gemm_pm<D>(dva, s, db, lane);   // dv += Pᵀ dO
    gemm_pm<D>(dka, dp, qb, lane);  // dk += dSᵀ Q (scaled at the end)
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = key_a + r * 8;
    if (j >= T) continue;
    const int64_t off = (((int64_t)b * T + j) * Hkv + hk) * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      __nv_bfloat162* pk = reinterpret_cast<__nv_bfloat162*>(dk + off + n * 8 + 2 * t4);
      __nv_bfloat162* pv = reinterpret_cast<__nv_bfloat162*>(dv + off + n * 8 + 2 * t4);
      const __nv_bfloat162 xk = *pk, xv = *pv;
      *pk = __floats2bfloat162_rn(__bfloat162float(xk.x) + dka[n][2 * r] * sc,
                                  __bfloat162float(xk.y) + dka[n][2 * r + 1] * sc);
      *pv = __floats2bfloat162_rn(__bfloat162float(xv.x) + dva[n][2 * r], __bfloat162float(xv.y) + dva[n][2 * r + 1]);
    }
  }
#endif
}

// ---- host side --------------------------------------------------------------------------------------
int g_override = -1;

bool env_on() {
  static const bool on = [] {
    const char* e = std::getenv("MIMIC_ATTN_TC");  // on unless "0"
    return !(e && e[0] == '0');
  }();
  return on;
}

// sm_80+ and enough opt-in shared memory for the largest kernel (dk/dv at D = 128: ~104 KB).
bool device_ok(size_t smem_needed) {
  static int cc_major = -1, smem_optin = 0;
  if (cc_major < 0) {
    int dev = 0;
    MIMIC_CUDA_CHECK(cudaGetDevice(&dev));
    MIMIC_CUDA_CHECK(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, dev));
    MIMIC_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  }
  return cc_major >= 8 && (size_t)smem_optin >= smem_needed;
}

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <int D>
constexpr size_t fwd_smem() { return sizeof(bf16) * 5 * 64 * (D + 8); }
template <int D>
constexpr size_t dq_smem() { return sizeof(bf16) * 6 * 64 * (D + 8); }
template <int D>
constexpr size_t dkdv_smem() { return sizeof(bf16) * 6 * 64 * (D + 8) + sizeof(float) * 4 * kBM; }

template <class F>
void set_smem_tc(F* kernel, size_t bytes) {
  MIMIC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <int D>
void fwd_tc(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int Tq, int Tk, int q_offset,
            int Hq, int Hkv) {
  static bool init = false;
  if (!init) { set_smem_tc(attn_fwd_tc_kernel<D>, fwd_smem<D>()); init = true; }
  dim3 grid((Tq + kBM - 1) / kBM, Hq, B);
  attn_fwd_tc_kernel<D><<<grid, kThreadsTc, fwd_smem<D>(), Context::get().stream>>>(out, lse, q, k, v, Tq, Tk,
                                                                                    q_offset, Hq, Hkv);
  MIMIC_CUDA_LAUNCHED();
}

// Grow-only Δ scratch (fp32 [B, Hq, T]); reallocated only when a larger shape arrives.
float* delta_scratch(size_t n) {
  static float* p = nullptr;
  static size_t cap = 0;
  if (n > cap) {
    if (p) {
      MIMIC_CUDA_CHECK(cudaStreamSynchronize(Context::get().stream));
      MIMIC_CUDA_CHECK(cudaFree(p));
      p = nullptr;
      cap = 0;
    }
    MIMIC_CUDA_CHECK(cudaMalloc(&p, n * sizeof(float)));
    cap = n;
  }
  return p;
}

template <int D>
void bwd_tc(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
            const bf16* o, const float* lse, int B, int T, int Hq, int Hkv) {
  static bool init = false;
  if (!init) {
    set_smem_tc(attn_bwd_dq_tc_kernel<D>, dq_smem<D>());
    set_smem_tc(attn_bwd_dkdv_tc_kernel<D>, dkdv_smem<D>());
    init = true;
  }
  cudaStream_t st = Context::get().stream;
  float* delta = delta_scratch((size_t)B * Hq * T);
  const int64_t rows = (int64_t)B * T * Hq;
  attn_bwd_delta_kernel<D><<<(unsigned)((rows + 7) / 8), 256, 0, st>>>(delta, dout, o, B, T, Hq);
  MIMIC_CUDA_LAUNCHED();
  const int tiles = (T + 63) / 64;
  if (dq) {
    attn_bwd_dq_tc_kernel<D><<<dim3(tiles, Hq, B), kThreadsTc, dq_smem<D>(), st>>>(dq, dout, q, k, v, lse, delta, T,
                                                                                  Hq, Hkv);
    MIMIC_CUDA_LAUNCHED();
  }
  if (dk && dv) {
    attn_bwd_dkdv_tc_kernel<D><<<dim3(tiles, Hkv, B), kThreadsTc, dkdv_smem<D>(), st>>>(dk, dv, dout, q, k, v, lse,
                                                                                        delta, T, Hq, Hkv);
    MIMIC_CUDA_LAUNCHED();
  }
}

}  // namespace

bool attention_tc_enabled() { return g_override >= 0 ? g_override == 1 : env_on(); }
void attention_tc_override(int mode) { g_override = mode; }

bool attention_forward_tc(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int Tq, int Tk,
                          int q_offset, int Hq, int Hkv, int D) {
  if (!attention_tc_enabled() || (D != 64 && D != 128) || Hkv <= 0 || Hq % Hkv != 0) return false;
  if (!aligned16(out) || !aligned16(q) || !aligned16(k) || !aligned16(v)) return false;
  if (!device_ok(D == 128 ? fwd_smem<128>() : fwd_smem<64>())) return false;
  if (D == 128) fwd_tc<128>(out, lse, q, k, v, B, Tq, Tk, q_offset, Hq, Hkv);
  else fwd_tc<64>(out, lse, q, k, v, B, Tq, Tk, q_offset, Hq, Hkv);
  return true;
}

bool attention_backward_tc(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                           const bf16* v, const bf16* out, const float* lse, int B, int T, int Hq, int Hkv, int D) {
  if (!attention_tc_enabled() || (D != 64 && D != 128) || Hkv <= 0 || Hq % Hkv != 0) return false;
  if (!aligned16(dq) || !aligned16(dk) || !aligned16(dv) || !aligned16(dout) || !aligned16(q) || !aligned16(k) ||
      !aligned16(v) || !aligned16(out))
    return false;
  if (!device_ok(D == 128 ? dkdv_smem<128>() : dkdv_smem<64>())) return false;
  if (D == 128) bwd_tc<128>(dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv);
  else bwd_tc<64>(dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv);
  return true;
}

}  // namespace mimic::cuda
