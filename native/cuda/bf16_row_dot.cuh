// bf16_row_dot — one warp's dot products of a bf16 weight row with N rows of x (gemv.cu's bf16 path:
// the lm_head, the LoRA A products), shared with the kernels that run the same products inside a
// bigger launch (decode_kernels.cuh: the RMSNorm fused with the LoRA A's) so that both give the
// same bits: the lane's 16-byte chunks lane, lane + 32, … in groups of kRowDotGroup loads issued
// before any is used, each chunk's 8 products fmaf'd in order into the lane's sum; the caller
// reduces over the warp (warp_sum).
#pragma once
#include "cuda/common.cuh"

namespace mimic::cuda {
namespace {

constexpr int kRowDotGroup = 4;

__device__ __forceinline__ float bf_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

template <class T>
__device__ __forceinline__ T ldg_stream(const T* p) { return __ldcs(p); }  // weights: read once, don't keep in L1

// acc[n] += Σ_k x[n, k]·W[m, k] over a bf16 row (the lane's 16-byte chunks lane, lane + 32, …, kRowDotGroup of
// them in flight), x from global through L2 (gemv_kernel) or from the block's copy in shared memory
// (XS: gemv_rows_kernel), the row from global or (WS) from shared memory. One text for all, so that
// every path of the same product gives the same bits.
template <int NT, bool XS, bool WS = false>
__device__ __forceinline__ void bf16_row_dot(const uint4* wrow, int nch, int lane, int N, const bf16* x, int K,
                                             const uint4* xs, float (&acc)[NT]) {
  for (int c0 = lane; c0 < nch; c0 += 32 * kRowDotGroup) {
    uint4 w[kRowDotGroup];
#pragma unroll
    for (int g = 0; g < kRowDotGroup; ++g)
      if (c0 + 32 * g < nch) w[g] = WS ? wrow[c0 + 32 * g] : ldg_stream(wrow + c0 + 32 * g);
#pragma unroll
    for (int g = 0; g < kRowDotGroup; ++g) {
      const int c = c0 + 32 * g;
      if (c < nch) {
        const uint32_t ws[4] = {w[g].x, w[g].y, w[g].z, w[g].w};
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          if (n < N) {
            const uint4 xv = XS ? xs[n * nch + c] : __ldcg(reinterpret_cast<const uint4*>(x + (int64_t)n * K) + c);
            const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
            float s = acc[n];
#pragma unroll
            for (int t = 0; t < 4; ++t) {
              s = fmaf(bf_lo(ws[t]), bf_lo(xw[t]), s);
              s = fmaf(bf_hi(ws[t]), bf_hi(xw[t]), s);
            }
            acc[n] = s;
          }
        }
      }
    }
  }
}

// The LoRA A products of the decode step (decode_kernels.cuh's lora_a_kernel, gemv_tc.cu's A blocks
// inside a product launch), one row of x: an A row staged in shared memory by cp.async — the lane's
// own chunks lane, lane + 32, …, the ones bf16_row_dot reads back, so no barrier is needed for them
// (a weight: before the PDL wait) — and x staged by the whole block (another kernel's output: after
// it, through L2). The callers commit and wait.
__device__ __forceinline__ void stage_row_async(uint4* dst, const bf16* row, int nch, int lane) {
  const uint4* src = reinterpret_cast<const uint4*>(row);
  for (int c = lane; c < nch; c += 32) cp_async16(dst + c, src + c);
}
__device__ __forceinline__ void stage_x_async(uint4* dst, const bf16* x, int nch, int tid, int nthreads) {
  const uint4* src = reinterpret_cast<const uint4*>(x);
  for (int c = tid; c < nch; c += nthreads) cp_async16(dst + c, src + c);
}
// Σ_k A[k]·x[k] of a staged row and staged x (bf16_row_dot's order), summed over the warp
__device__ __forceinline__ float staged_row_dot(const uint4* arow, const uint4* xs, int nch, int lane) {
  float a[1] = {0.f};
  bf16_row_dot<1, true, true>(arow, nch, lane, 1, nullptr, nch * 8, xs, a);
  return warp_sum(a[0]);
}

}  // namespace
}  // namespace mimic::cuda
