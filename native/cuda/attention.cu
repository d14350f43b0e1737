// attention — the CUDA twin of ops/attention.h: causal grouped-query attention, flash-style.
// No T×T matrix exists anywhere: scores live in registers for one 32-key tile at a time.
//
// Shapes: q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D] (bf16), out [B, Tq, Hq, D] (bf16), lse [B, Hq, Tq] fp32.
// Query i (absolute position q_offset + i) sees keys j <= q_offset + i; head h reads KV head h / (Hq/Hkv).
//   forward (online softmax, per 32-key tile):  s_j = q·k_j / sqrt(D)
//     m' = max(m, max_j s_j);  l' = l e^{m − m'} + Σ_j e^{s_j − m'};  acc' = acc e^{m − m'} + Σ_j e^{s_j − m'} v_j
//     out = acc / l;  lse = m + log l
//   backward (q_offset = 0), Δ_i = dout_i · out_i, p_ij = exp(s_ij − lse_i), ds_ij = p_ij (dout_i·v_j − Δ_i):
//     dq_i += Σ_j ds_ij k_j / sqrt(D)                        (kernel 1: a block per 32 queries)
//     dk_j += Σ_i ds_ij q_i / sqrt(D);  dv_j += Σ_i p_ij dout_i   (kernel 2: a block per 32 keys,
//                                                   looping over the G query heads that share them)
//   Two kernels instead of atomics: deterministic, and each mirrors the forward's loop.
// Layout of the work: a block of 8 warps owns 32 rows (4 a warp); in the score phase lane j takes
// key (or query) j of the tile, in the accumulate phase lane d takes dimensions d, d+32, ...
// fp32 tiles in shared memory (padded rows where a lane walks a row) — CUDA cores, not tensor
// cores: correct and memory-light; the tensor-core version is the speed issue's.
#include <cmath>

#include "cuda/attention_tc.h"
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {

constexpr int kWarps = 8, kRows = 4, kTile = 32;  // 8 warps × 4 rows = 32 rows a block
constexpr int kThreads = kWarps * 32;

template <int D>
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel(bf16* __restrict__ out, float* __restrict__ lse,
                                                             const bf16* __restrict__ q, const bf16* __restrict__ k,
                                                             const bf16* __restrict__ v, int Tq, int Tk, int q_offset,
                                                             int Hq, int Hkv) {
  constexpr int DP = D + 1, DPL = (D + 31) / 32;
  extern __shared__ float smem[];
  float* qs = smem;                 // [32][D]
  float* ks = qs + kTile * D;       // [32][D+1]
  float* vs = ks + kTile * DP;      // [32][D]
  const int qt = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hk = h / (Hq / Hkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const float sm_scale = rsqrtf((float)D);
  const int i0 = qt * kTile;

  for (int e = threadIdx.x; e < kTile * D; e += kThreads) {
    const int r = e / D, d = e % D, i = i0 + r;
    qs[e] = i < Tq ? __bfloat162float(q[(((int64_t)b * Tq + i) * Hq + h) * D + d]) * sm_scale : 0.f;
  }
  float m[kRows], l[kRows], acc[kRows][DPL];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    m[r] = -INFINITY; l[r] = 0.f;
#pragma unroll
    for (int c = 0; c < DPL; ++c) acc[r][c] = 0.f;
  }
  const int last_q = min(Tq, i0 + kTile) - 1;
  const int kend = min(Tk, q_offset + last_q + 1);  // keys [0, kend) matter to this block
  for (int j0 = 0; j0 < kend; j0 += kTile) {
    __syncthreads();
    for (int e = threadIdx.x; e < kTile * D; e += kThreads) {
      const int jj = e / D, d = e % D, j = j0 + jj;
      const int64_t g = (((int64_t)b * Tk + j) * Hkv + hk) * D + d;
      ks[jj * DP + d] = j < Tk ? __bfloat162float(k[g]) : 0.f;
      vs[jj * D + d] = j < Tk ? __bfloat162float(v[g]) : 0.f;
    }
    __syncthreads();
    float s[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) s[r] = 0.f;
#pragma unroll 8
    for (int d = 0; d < D; ++d) {
      const float kv = ks[lane * DP + d];
#pragma unroll
      for (int r = 0; r < kRows; ++r) s[r] += qs[(warp * kRows + r) * D + d] * kv;
    }
    const int j = j0 + lane;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = i0 + warp * kRows + r;
      if (!(i < Tq && j < Tk && j <= q_offset + i)) s[r] = -INFINITY;
      const float mn = fmaxf(m[r], warp_max(s[r]));
      const float corr = (m[r] == -INFINITY) ? 0.f : __expf(m[r] - mn);
      const float p = (s[r] == -INFINITY) ? 0.f : __expf(s[r] - mn);
      l[r] = l[r] * corr + warp_sum(p);
      m[r] = mn;
      s[r] = p;
#pragma unroll
      for (int c = 0; c < DPL; ++c) acc[r][c] *= corr;
    }
#pragma unroll 4
    for (int jj = 0; jj < kTile; ++jj) {
      float vv[DPL];
#pragma unroll
      for (int c = 0; c < DPL; ++c) {
        const int d = lane + 32 * c;
        vv[c] = d < D ? vs[jj * D + d] : 0.f;
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float p = __shfl_sync(0xffffffffu, s[r], jj);
#pragma unroll
        for (int c = 0; c < DPL; ++c) acc[r][c] += p * vv[c];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = i0 + warp * kRows + r;
    if (i >= Tq) continue;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
#pragma unroll
    for (int c = 0; c < DPL; ++c) {
      const int d = lane + 32 * c;
      if (d < D) out[(((int64_t)b * Tq + i) * Hq + h) * D + d] = __float2bfloat16(acc[r][c] * inv);
    }
    if (lse && lane == 0) lse[((int64_t)b * Hq + h) * Tq + i] = m[r] + logf(l[r]);
  }
}

// dq: a block per 32 queries of one head; loops over the key tiles it sees.
template <int D>
__global__ void __launch_bounds__(kThreads) attn_bwd_dq_kernel(bf16* __restrict__ dq, const bf16* __restrict__ dout,
                                                                const bf16* __restrict__ q, const bf16* __restrict__ k,
                                                                const bf16* __restrict__ v, const bf16* __restrict__ o,
                                                                const float* __restrict__ lse, int T, int Hq, int Hkv) {
  constexpr int DP = D + 1, DPL = (D + 31) / 32;
  extern __shared__ float smem[];
  float* qs = smem;                 // [32][D] scaled q
  float* dos = qs + kTile * D;      // [32][D]
  float* ks = dos + kTile * D;      // [32][D+1]
  float* vs = ks + kTile * DP;      // [32][D+1]
  const int qt = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hk = h / (Hq / Hkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const float sm_scale = rsqrtf((float)D);
  const int i0 = qt * kTile;
  float lse_r[kRows], delta[kRows], acc[kRows][DPL];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int rr = warp * kRows + r, i = i0 + rr;
    float dd = 0.f;
    for (int d = lane; d < D; d += 32) {
      float qv = 0.f, dv = 0.f, ov = 0.f;
      if (i < T) {
        const int64_t g = (((int64_t)b * T + i) * Hq + h) * D + d;
        qv = __bfloat162float(q[g]) * sm_scale;
        dv = __bfloat162float(dout[g]);
        ov = __bfloat162float(o[g]);
      }
      qs[rr * D + d] = qv;
      dos[rr * D + d] = dv;
      dd += dv * ov;
    }
    delta[r] = warp_sum(dd);
    lse_r[r] = i < T ? lse[((int64_t)b * Hq + h) * T + i] : 0.f;
#pragma unroll
    for (int c = 0; c < DPL; ++c) acc[r][c] = 0.f;
  }
  const int kend = min(T, i0 + kTile);
  for (int j0 = 0; j0 < kend; j0 += kTile) {
    __syncthreads();
    for (int e = threadIdx.x; e < kTile * D; e += kThreads) {
      const int jj = e / D, d = e % D, j = j0 + jj;
      const int64_t g = (((int64_t)b * T + j) * Hkv + hk) * D + d;
      ks[jj * DP + d] = j < T ? __bfloat162float(k[g]) : 0.f;
      vs[jj * DP + d] = j < T ? __bfloat162float(v[g]) : 0.f;
    }
    __syncthreads();
    float s[kRows], dp[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) s[r] = dp[r] = 0.f;
#pragma unroll 8
    for (int d = 0; d < D; ++d) {
      const float kv = ks[lane * DP + d], vv = vs[lane * DP + d];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        s[r] += qs[(warp * kRows + r) * D + d] * kv;
        dp[r] += dos[(warp * kRows + r) * D + d] * vv;
      }
    }
    const int j = j0 + lane;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = i0 + warp * kRows + r;
      const bool ok = i < T && j <= i;
      const float p = ok ? __expf(s[r] - lse_r[r]) : 0.f;
      s[r] = p * (dp[r] - delta[r]);  // ds
    }
#pragma unroll 4
    for (int jj = 0; jj < kTile; ++jj) {
      float kk[DPL];
#pragma unroll
      for (int c = 0; c < DPL; ++c) {
        const int d = lane + 32 * c;
        kk[c] = d < D ? ks[jj * DP + d] : 0.f;
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float ds = __shfl_sync(0xffffffffu, s[r], jj);
#pragma unroll
        for (int c = 0; c < DPL; ++c) acc[r][c] += ds * kk[c];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = i0 + warp * kRows + r;
    if (i >= T) continue;
#pragma unroll
    for (int c = 0; c < DPL; ++c) {
      const int d = lane + 32 * c;
      if (d < D) {
        bf16& x = dq[(((int64_t)b * T + i) * Hq + h) * D + d];
        x = __float2bfloat16(__bfloat162float(x) + acc[r][c] * sm_scale);
      }
    }
  }
}

// dk, dv: a block per 32 keys of one KV head; loops over the G query heads and the query tiles at or after them.
template <int D>
__global__ void __launch_bounds__(kThreads) attn_bwd_dkdv_kernel(bf16* __restrict__ dk, bf16* __restrict__ dv,
                                                                  const bf16* __restrict__ dout, const bf16* __restrict__ q,
                                                                  const bf16* __restrict__ k, const bf16* __restrict__ v,
                                                                  const bf16* __restrict__ o, const float* __restrict__ lse,
                                                                  int T, int Hq, int Hkv) {
  constexpr int DP = D + 1, DPL = (D + 31) / 32;
  extern __shared__ float smem[];
  float* ks = smem;                 // [32][D]
  float* vs = ks + kTile * D;       // [32][D]
  float* qs = vs + kTile * D;       // [32][D+1] scaled q
  float* dos = qs + kTile * DP;     // [32][D+1]
  float* lse_s = dos + kTile * DP;  // [32]
  float* del_s = lse_s + kTile;     // [32]
  const int kt = blockIdx.x, hk = blockIdx.y, b = blockIdx.z, G = Hq / Hkv;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const float sm_scale = rsqrtf((float)D);
  const int j0 = kt * kTile;
  for (int e = threadIdx.x; e < kTile * D; e += kThreads) {
    const int jj = e / D, d = e % D, j = j0 + jj;
    const int64_t g = (((int64_t)b * T + j) * Hkv + hk) * D + d;
    ks[e] = j < T ? __bfloat162float(k[g]) : 0.f;
    vs[e] = j < T ? __bfloat162float(v[g]) : 0.f;
  }
  float dka[kRows][DPL], dva[kRows][DPL];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int c = 0; c < DPL; ++c) dka[r][c] = dva[r][c] = 0.f;

  for (int gh = 0; gh < G; ++gh) {
    const int h = hk * G + gh;
    for (int i0 = (j0 / kTile) * kTile; i0 < T; i0 += kTile) {
      __syncthreads();
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int rr = warp * kRows + r, i = i0 + rr;
        float dd = 0.f;
        for (int d = lane; d < D; d += 32) {
          float qv = 0.f, dov = 0.f, ov = 0.f;
          if (i < T) {
            const int64_t g = (((int64_t)b * T + i) * Hq + h) * D + d;
            qv = __bfloat162float(q[g]) * sm_scale;
            dov = __bfloat162float(dout[g]);
            ov = __bfloat162float(o[g]);
          }
          qs[rr * DP + d] = qv;
          dos[rr * DP + d] = dov;
          dd += dov * ov;
        }
        dd = warp_sum(dd);
        if (lane == 0) {
          del_s[rr] = dd;
          lse_s[rr] = i < T ? lse[((int64_t)b * Hq + h) * T + i] : 0.f;
        }
      }
      __syncthreads();
      float s[kRows], dp[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) s[r] = dp[r] = 0.f;
#pragma unroll 8
      for (int d = 0; d < D; ++d) {
        const float qv = qs[lane * DP + d], dov = dos[lane * DP + d];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          s[r] += qv * ks[(warp * kRows + r) * D + d];
          dp[r] += dov * vs[(warp * kRows + r) * D + d];
        }
      }
      const int i = i0 + lane;
      float p[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int j = j0 + warp * kRows + r;
        const bool ok = i < T && j < T && j <= i;
        p[r] = ok ? __expf(s[r] - lse_s[lane]) : 0.f;
        s[r] = p[r] * (dp[r] - del_s[lane]);  // ds
      }
#pragma unroll 4
      for (int ii = 0; ii < kTile; ++ii) {
        float qq[DPL], dd[DPL];
#pragma unroll
        for (int c = 0; c < DPL; ++c) {
          const int d = lane + 32 * c;
          qq[c] = d < D ? qs[ii * DP + d] : 0.f;
          dd[c] = d < D ? dos[ii * DP + d] : 0.f;
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const float pi = __shfl_sync(0xffffffffu, p[r], ii), dsi = __shfl_sync(0xffffffffu, s[r], ii);
#pragma unroll
          for (int c = 0; c < DPL; ++c) {
            dva[r][c] += pi * dd[c];
            dka[r][c] += dsi * qq[c];
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int j = j0 + warp * kRows + r;
    if (j >= T) continue;
#pragma unroll
    for (int c = 0; c < DPL; ++c) {
      const int d = lane + 32 * c;
      if (d < D) {
        const int64_t g = (((int64_t)b * T + j) * Hkv + hk) * D + d;
        dk[g] = __float2bfloat16(__bfloat162float(dk[g]) + dka[r][c]);
        dv[g] = __float2bfloat16(__bfloat162float(dv[g]) + dva[r][c]);
      }
    }
  }
}

template <class F>
void set_smem(F* kernel, size_t bytes) {
  // Raise the dynamic shared-memory limit once per instantiation (over 48 KB needs an opt-in).
  MIMIC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <int D>
void fwd(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int Tq, int Tk, int q_offset,
         int Hq, int Hkv) {
  const size_t smem = sizeof(float) * (kTile * D * 2 + kTile * (D + 1));
  static bool init = false;
  if (!init) { set_smem(attn_fwd_kernel<D>, smem); init = true; }
  dim3 grid((Tq + kTile - 1) / kTile, Hq, B);
  attn_fwd_kernel<D><<<grid, kThreads, smem, Context::get().stream>>>(out, lse, q, k, v, Tq, Tk, q_offset, Hq, Hkv);
  MIMIC_CUDA_LAUNCHED();
}
template <int D>
void bwd(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const bf16* o,
         const float* lse, int B, int T, int Hq, int Hkv) {
  const size_t smem = sizeof(float) * (kTile * D * 2 + kTile * (D + 1) * 2 + 2 * kTile);
  static bool init = false;
  if (!init) { set_smem(attn_bwd_dq_kernel<D>, smem); set_smem(attn_bwd_dkdv_kernel<D>, smem); init = true; }
  cudaStream_t st = Context::get().stream;
  const int tiles = (T + kTile - 1) / kTile;
  if (dq) {
    attn_bwd_dq_kernel<D><<<dim3(tiles, Hq, B), kThreads, smem, st>>>(dq, dout, q, k, v, o, lse, T, Hq, Hkv);
    MIMIC_CUDA_LAUNCHED();
  }
  if (dk && dv) {
    attn_bwd_dkdv_kernel<D><<<dim3(tiles, Hkv, B), kThreads, smem, st>>>(dk, dv, dout, q, k, v, o, lse, T, Hq, Hkv);
    MIMIC_CUDA_LAUNCHED();
  }
}

}  // namespace

void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int Tq, int Tk,
                       int q_offset, int Hq, int Hkv, int D) {
  if (B == 0 || Tq == 0) return;
  MIMIC_CHECK(Hkv > 0 && Hq % Hkv == 0, "ESHAPE", "attention: Hq=", Hq, " is not a multiple of Hkv=", Hkv);
  // tensor-core path (attention_tc.cu) unless MIMIC_ATTN_TC=0, when the shape is supported (the default)
  if (attention_forward_tc(out, lse, q, k, v, B, Tq, Tk, q_offset, Hq, Hkv, D)) return;
  switch (D) {
    case 16: return fwd<16>(out, lse, q, k, v, B, Tq, Tk, q_offset, Hq, Hkv);
    case 32: return fwd<32>(out, lse, q, k, v, B, Tq, Tk, q_offset, Hq, Hkv);
    case 64: return fwd<64>(out, lse, q, k, v, B, Tq, Tk, q_offset, Hq, Hkv);
    case 128: return fwd<128>(out, lse, q, k, v, B, Tq, Tk, q_offset, Hq, Hkv);
    default: ::mimic::fail("ESHAPE", "attention on CUDA supports head_dim 16, 32, 64 or 128, not ", D);
  }
}

void attention_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                        const bf16* out, const float* lse, int B, int T, int Hq, int Hkv, int D) {
  if (B == 0 || T == 0) return;
  MIMIC_CHECK(Hkv > 0 && Hq % Hkv == 0, "ESHAPE", "attention: Hq=", Hq, " is not a multiple of Hkv=", Hkv);
  if (attention_backward_tc(dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv, D)) return;
  switch (D) {
    case 16: return bwd<16>(dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv);
    case 32: return bwd<32>(dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv);
    case 64: return bwd<64>(dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv);
    case 128: return bwd<128>(dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv);
    default: ::mimic::fail("ESHAPE", "attention on CUDA supports head_dim 16, 32, 64 or 128, not ", D);
  }
}

}  // namespace mimic::cuda
