// swiglu — the CUDA twin of ops/swiglu.h on bf16 [N, C], fp32 maths.
//
//   out = silu(g) · u,  silu(g) = g σ(g)
//   dgate += dout · u · σ(g) (1 + g (1 − σ(g)));   dup += dout · silu(g)
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {
__global__ void swiglu_fwd_kernel(bf16* __restrict__ out, const bf16* __restrict__ gate, const bf16* __restrict__ up,
                                  int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float g = __bfloat162float(gate[i]), u = __bfloat162float(up[i]);
    const float s = 1.f / (1.f + __expf(-g));
    out[i] = __float2bfloat16(g * s * u);
  }
}
__global__ void swiglu_bwd_kernel(bf16* __restrict__ dgate, bf16* __restrict__ dup, const bf16* __restrict__ dout,
                                  const bf16* __restrict__ gate, const bf16* __restrict__ up, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float g = __bfloat162float(gate[i]), u = __bfloat162float(up[i]), d = __bfloat162float(dout[i]);
    const float s = 1.f / (1.f + __expf(-g));
    dgate[i] = __float2bfloat16(__bfloat162float(dgate[i]) + d * u * s * (1.f + g * (1.f - s)));
    dup[i] = __float2bfloat16(__bfloat162float(dup[i]) + d * g * s);
  }
}
int grid_for(int64_t n) {
  int64_t b = (n + 255) / 256;
  return (int)(b < 65535 * 8 ? b : 65535 * 8);
}
}  // namespace

void swiglu_forward(bf16* out, const bf16* gate, const bf16* up, int64_t N, int C) {
  const int64_t n = N * C;
  if (!n) return;
  swiglu_fwd_kernel<<<grid_for(n), 256, 0, Context::get().stream>>>(out, gate, up, n);
  MIMIC_CUDA_LAUNCHED();
}
void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up, int64_t N, int C) {
  const int64_t n = N * C;
  if (!n) return;
  swiglu_bwd_kernel<<<grid_for(n), 256, 0, Context::get().stream>>>(dgate, dup, dout, gate, up, n);
  MIMIC_CUDA_LAUNCHED();
}
}  // namespace mimic::cuda
