// row_maths — the decode step's per-row RMSNorm and RoPE arithmetic, one text for the kernels that
// compute them: decode_kernels.cuh (rmsnorm_rows, rope_append: the batched step and the graph) and
// gemv_tc.cu's q/k/v epilogue (gemv_tc_qkv_rope: RoPE folded into the product, decode_step.cu). A
// sequence's tokens must not depend on which of them ran, so the order of every sum and every
// rounding is fixed here, with explicit _rn intrinsics (no FMA contraction left to the compiler's
// choice per call site). (Round 14 also folded the norm into gemv_tc's prologue with RmsRow<256, 4>
// — the same bits, 3 % slower — and removed it; RmsRow keeps the block-size generality.)
//
//   rms_rsqrt:  r = rsqrt(Σ_c x[c]² / C + eps), the sum in the order of 1024 "virtual threads": thread
//               v sums c = v, v + 1024, … (8 terms, C <= 8192) by FMA, warp v/32 adds its 32 by the
//               xor-shuffle tree (warp_sum), then the 32 warp sums in order 0..31. A block of T
//               threads (T | 1024) plays 1024/T virtual threads per thread (RmsRow), all loads
//               issued first.
//   norm_out:   bf16(w · (x · r))
//   rope:       angle a = fp32(pos · inv_freq[i]); (c, s) = sincos in double, rounded to fp32;
//               (x0, x1) → (x0·c − x1·s, x1·c + x0·s), each a product then one FMA.
#pragma once
#include "cuda/common.cuh"

namespace mimic::cuda {

constexpr int kRmsVirtual = 1024, kRmsPer = 8;  // C <= 8192

// A row of C <= 1024·PER floats as a block of T threads holds it for rms_rsqrt: thread t's value
// (k, i) is column rms_col(k, i) (virtual thread (t/32 + k·T/32)·32 + t%32, term i), 0 past C.
// PER < 8 skips terms that are 0 for every C it admits (adding +0 to a sum of squares changes no
// bit), so a kernel that knows C <= 4096 holds 16 registers, not 32, and sums the same bits.
template <int T, int PER = kRmsPer>
struct RmsRow {
  static_assert(kRmsVirtual % T == 0 && T % 32 == 0 && PER >= 1 && PER <= kRmsPer, "T | 1024 in whole warps");
  static constexpr int kWarpsT = T / 32, kNV = kRmsVirtual / T;
  float v[kNV][PER];
  __device__ static int col(int k, int i) { return ((int)(threadIdx.x >> 5) + k * kWarpsT) * 32 + (threadIdx.x & 31) + i * kRmsVirtual; }
  // every load issued before any is used; through L2 (__ldcg): under PDL x is the output of the kernel
  // ahead, which the read-only path of __ldg may not see
  __device__ void load(const float* __restrict__ x, int C) {
#pragma unroll
    for (int k = 0; k < kNV; ++k)
#pragma unroll
      for (int i = 0; i < PER; ++i) v[k][i] = col(k, i) < C ? __ldcg(x + col(k, i)) : 0.f;
  }
  // r = rsqrt(mean(x²) + eps) for every thread; sh: 32 floats, free again after the caller's next
  // __syncthreads.
  __device__ float rms_rsqrt(int C, float eps, float* sh) const { return rms_rsqrt(C, eps, sh, BlockBar{}); }
  // the same with the barrier of the T threads that hold the row (a subset of a bigger block)
  template <class Bar>
  __device__ float rms_rsqrt(int C, float eps, float* sh, Bar bar) const {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      float ss = 0.f;
#pragma unroll
      for (int i = 0; i < PER; ++i) ss = __fmaf_rn(v[k][i], v[k][i], ss);
      ss = warp_sum(ss);
      if (lane == 0) sh[w + k * kWarpsT] = ss;
    }
    bar();
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < 32; ++i) t = __fadd_rn(t, sh[i]);
    return rsqrtf(__fadd_rn(__fdiv_rn(t, (float)C), eps));
  }
};

__device__ __forceinline__ bf16 norm_out(float w, float x, float r) { return __float2bfloat16(__fmul_rn(w, __fmul_rn(x, r))); }

// cos and sin of position p at frequency f (rope.cu's angle: fp32 product, sincos in double)
__device__ __forceinline__ void rope_cs(int p, float f, float& c, float& s) {
  const float a = __fmul_rn((float)p, f);
  double sd, cd;
  sincos((double)a, &sd, &cd);
  c = (float)cd;
  s = (float)sd;
}
__device__ __forceinline__ void rope_rotate(float x0, float x1, float c, float s, bf16& y0, bf16& y1) {
  y0 = __float2bfloat16(__fmaf_rn(x0, c, -__fmul_rn(x1, s)));
  y1 = __float2bfloat16(__fmaf_rn(x1, c, __fmul_rn(x0, s)));
}

}  // namespace mimic::cuda
