// swiglu — the CUDA twin of ops/swiglu.h on bf16 [N, C], fp32 maths.
//
//   out = silu(g) · u,  silu(g) = g σ(g)
//   dgate (+)= dout · u · σ(g) (1 + g (1 − σ(g)));   dup (+)= dout · silu(g)
//
// accumulate = false writes the gradients instead of adding to them (the training layer's backward:
// no zeroing pass, no read of the zeros); the sum is still formed as 0 + term, so the bits equal
// accumulating onto zeroed buffers. Where n % 8 == 0 and every pointer is 16-byte aligned (the layer's
// [N, I] buffers) a thread takes 8 values through 16-byte loads and stores: the 3B training step's
// swiglu ran at ~2 TB/s with one bf16 a thread (round 16 profile: 11 ms of a 176 ms step).
// ld_out / ld_d: the row stride of the forward's out / of dgate, dup (0: C) — the training's grouped
// passes write them as column blocks of wider rows (llama_cuda.cu: group_forward, group_backward).
#include <cstdint>
#include <initializer_list>

#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {

// the forward's g·σ(g), and σ(g) in s
__device__ __forceinline__ float silu_sig(float g, float& s) {
  s = 1.f / (1.f + __expf(-g));
  return g * s;
}
// One value's gradients, as the first version of the backward wrote them (the same operations in the
// same order), added to (acc) or written over dg, du: the one text of both backward kernels.
__device__ __forceinline__ void bwd_one(float g, float u, float d, bool acc, bf16& dg, bf16& du) {
  const float s = 1.f / (1.f + __expf(-g));
  dg = __float2bfloat16((acc ? __bfloat162float(dg) : 0.f) + d * u * s * (1.f + g * (1.f - s)));
  du = __float2bfloat16((acc ? __bfloat162float(du) : 0.f) + d * g * s);
}

__global__ void swiglu_fwd_kernel(bf16* __restrict__ out, const bf16* __restrict__ gate, const bf16* __restrict__ up,
                                  int64_t n, int64_t C, int64_t ld) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float g = __bfloat162float(gate[i]), u = __bfloat162float(up[i]);
    float s;
    out[row_strided(i, C, ld)] = __float2bfloat16(silu_sig(g, s) * u);
  }
}
__global__ void swiglu_bwd_kernel(bf16* __restrict__ dgate, bf16* __restrict__ dup, const bf16* __restrict__ dout,
                                  const bf16* __restrict__ gate, const bf16* __restrict__ up, int64_t n, bool acc, int64_t C,
                                  int64_t ld) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = row_strided(i, C, ld);
    bwd_one(__bfloat162float(gate[i]), __bfloat162float(up[i]), __bfloat162float(dout[i]), acc, dgate[o], dup[o]);
  }
}

// 8 values a thread (n8 = n / 8 pieces of 16 bytes); per value the scalar kernels' maths.
union Pack8 {
  uint4 v;
  bf16 h[8];
};
__global__ void swiglu_fwd8_kernel(uint4* __restrict__ out, const uint4* __restrict__ gate, const uint4* __restrict__ up,
                                   int64_t n8, int64_t c8, int64_t ld8) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
    Pack8 g, u, o;
    g.v = gate[i];
    u.v = up[i];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float s;
      o.h[j] = __float2bfloat16(silu_sig(__bfloat162float(g.h[j]), s) * __bfloat162float(u.h[j]));
    }
    out[row_strided(i, c8, ld8)] = o.v;
  }
}
// dgate/dup rows of ld8 pieces (c8 = C / 8 of them written a row; ld8 == c8: dense)
__global__ void swiglu_bwd8_kernel(uint4* __restrict__ dgate, uint4* __restrict__ dup, const uint4* __restrict__ dout,
                                   const uint4* __restrict__ gate, const uint4* __restrict__ up, int64_t n8, bool acc,
                                   int64_t c8, int64_t ld8) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
    Pack8 g, u, d, dg, du;
    g.v = gate[i];
    u.v = up[i];
    d.v = dout[i];
    const int64_t o = row_strided(i, c8, ld8);
    if (acc) {
      dg.v = dgate[o];
      du.v = dup[o];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      bwd_one(__bfloat162float(g.h[j]), __bfloat162float(u.h[j]), __bfloat162float(d.h[j]), acc, dg.h[j], du.h[j]);
    }
    dgate[o] = dg.v;
    dup[o] = du.v;
  }
}

int grid_for(int64_t n) {
  int64_t b = (n + 255) / 256;
  return (int)(b < 65535 * 8 ? b : 65535 * 8);
}
bool vec8(int64_t n, std::initializer_list<const void*> ps) {
  if (n % 8) return false;
  for (const void* p : ps)
    if (reinterpret_cast<uintptr_t>(p) % 16) return false;
  return true;
}

// A row stride asked of the kernels (0: C), and whether the 8-wide kernels can write rows that far apart
int64_t row_stride(int64_t ld, int C, const char* what) {
  if (ld == 0) ld = C;
  MIMIC_CHECK(ld >= C, "EINVAL", what, ": row stride ", ld, " < ", C);
  return ld;
}
bool vec8_rows(int C, int64_t ld) { return ld == C || (C % 8 == 0 && ld % 8 == 0); }

}  // namespace

void swiglu_forward(bf16* out, const bf16* gate, const bf16* up, int64_t N, int C, int64_t ld_out) {
  const int64_t n = N * C;
  if (!n) return;
  cudaStream_t st = Context::get().stream;
  ld_out = row_stride(ld_out, C, "swiglu_forward: output");
  if (vec8(n, {out, gate, up}) && vec8_rows(C, ld_out))
    swiglu_fwd8_kernel<<<grid_for(n / 8), 256, 0, st>>>(reinterpret_cast<uint4*>(out), reinterpret_cast<const uint4*>(gate),
                                                         reinterpret_cast<const uint4*>(up), n / 8, C / 8, ld_out / 8);
  else
    swiglu_fwd_kernel<<<grid_for(n), 256, 0, st>>>(out, gate, up, n, C, ld_out);
  MIMIC_CUDA_LAUNCHED();
}
void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up, int64_t N, int C,
                     bool accumulate, int64_t ld_d) {
  const int64_t n = N * C;
  if (!n) return;
  cudaStream_t st = Context::get().stream;
  ld_d = row_stride(ld_d, C, "swiglu_backward: gradient");
  if (vec8(n, {dgate, dup, dout, gate, up}) && vec8_rows(C, ld_d))
    swiglu_bwd8_kernel<<<grid_for(n / 8), 256, 0, st>>>(reinterpret_cast<uint4*>(dgate), reinterpret_cast<uint4*>(dup),
                                                         reinterpret_cast<const uint4*>(dout), reinterpret_cast<const uint4*>(gate),
                                                         reinterpret_cast<const uint4*>(up), n / 8, accumulate, C / 8, ld_d / 8);
  else
    swiglu_bwd_kernel<<<grid_for(n), 256, 0, st>>>(dgate, dup, dout, gate, up, n, accumulate, C, ld_d);
  MIMIC_CUDA_LAUNCHED();
}
}  // namespace mimic::cuda
