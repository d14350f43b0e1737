// rmsnorm — the CUDA twin of ops/rmsnorm.h, fp32 maths as transformers' LlamaRMSNorm.
//
//   rstd[n]   = 1 / sqrt(mean_c x[n, c]² + eps)
//   out[n, c] = bf16(w[c] · x[n, c] · rstd[n])             x, w fp32 (residual stream, norm weight)
//   dx[n, c] += rstd · (g − x̂ · mean_c(g · x̂)),  g = dout · w,  x̂ = x · rstd      (dout, dx fp32)
// One block per row; the weight is frozen so there is no dw. The forward's rows of `out` may be wider
// than C (ld_out: the training forward's [xn | h] rows, llama_cuda.cu's grouped forward).
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {

__device__ float block_sum(float v, float* sh) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float t = 0.f;
  const int nw = (blockDim.x + 31) >> 5;
  for (int i = 0; i < nw; ++i) t += sh[i];
  return t;
}

__global__ void rmsnorm_fwd_kernel(bf16* __restrict__ out, float* __restrict__ rstd, const float* __restrict__ x,
                                   const float* __restrict__ w, int C, float eps, int64_t ldo) {
  __shared__ float sh[32];
  const int64_t n = blockIdx.x;
  const float* xr = x + n * C;
  float ss = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) ss += xr[c] * xr[c];
  ss = block_sum(ss, sh);
  const float r = rsqrtf(ss / C + eps);
  if (rstd && threadIdx.x == 0) rstd[n] = r;
  for (int c = threadIdx.x; c < C; c += blockDim.x) out[n * ldo + c] = __float2bfloat16(w[c] * (xr[c] * r));
}

// The same sums and products for rows of C <= 256·kPer (the 3B: 3,072): the thread's values
// x[t], x[t + 256], … are loaded at once and kept in registers — one read of the row instead of
// two dependent passes (round 20's profile, prefill 512 on an H100: the kernel above at 17 % of
// DRAM, 11 µs a launch). The same order of every sum and product: the same bits.
constexpr int kNormThreads = 256, kNormPer = 16;
__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_fwd_reg_kernel(bf16* __restrict__ out, float* __restrict__ rstd, const float* __restrict__ x,
                           const float* __restrict__ w, int C, float eps, int64_t ldo) {
  __shared__ float sh[32];
  const int64_t n = blockIdx.x;
  const float* xr = x + n * C;
  float v[kNormPer];
#pragma unroll
  for (int k = 0; k < kNormPer; ++k) {
    const int c = threadIdx.x + k * kNormThreads;
    v[k] = c < C ? xr[c] : 0.f;
  }
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < kNormPer; ++k)
    if (threadIdx.x + k * kNormThreads < C) ss += v[k] * v[k];
  ss = block_sum(ss, sh);
  const float r = rsqrtf(ss / C + eps);
  if (rstd && threadIdx.x == 0) rstd[n] = r;
#pragma unroll
  for (int k = 0; k < kNormPer; ++k) {
    const int c = threadIdx.x + k * kNormThreads;
    if (c < C) out[n * ldo + c] = __float2bfloat16(w[c] * (v[k] * r));
  }
}

__global__ void rmsnorm_bwd_kernel(float* __restrict__ dx, const float* __restrict__ dout, const float* __restrict__ x,
                                   const float* __restrict__ w, const float* __restrict__ rstd, int C) {
  __shared__ float sh[32];
  const int64_t n = blockIdx.x;
  const float r = rstd[n];
  const float *xr = x + n * C, *gr = dout + n * C;
  float dot = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dot += gr[c] * w[c] * xr[c] * r;
  dot = block_sum(dot, sh) / C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dx[n * C + c] += r * (gr[c] * w[c] - xr[c] * r * dot);
}

}  // namespace

void rmsnorm_forward(bf16* out, float* rstd, const float* x, const float* w, int64_t N, int C, float eps, int64_t ld_out) {
  if (N == 0) return;
  if (ld_out == 0) ld_out = C;
  MIMIC_CHECK(ld_out >= C, "EINVAL", "rmsnorm_forward: output row stride ", ld_out, " < ", C);
  if (C <= kNormThreads * kNormPer)
    rmsnorm_fwd_reg_kernel<<<(unsigned)N, kNormThreads, 0, Context::get().stream>>>(out, rstd, x, w, C, eps, ld_out);
  else rmsnorm_fwd_kernel<<<(unsigned)N, 256, 0, Context::get().stream>>>(out, rstd, x, w, C, eps, ld_out);
  MIMIC_CUDA_LAUNCHED();
}
void rmsnorm_backward(float* dx, const float* dout, const float* x, const float* w, const float* rstd, int64_t N,
                      int C) {
  if (N == 0) return;
  // (the row in registers, as the forward, measured no faster here — round 22, H100: −0.2 % a step)
  rmsnorm_bwd_kernel<<<(unsigned)N, 256, 0, Context::get().stream>>>(dx, dout, x, w, rstd, C);
  MIMIC_CUDA_LAUNCHED();
}
}  // namespace mimic::cuda
