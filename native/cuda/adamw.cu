// adamw — the CUDA twin of ops/adamw.h (torch.optim.AdamW), fp32, one launch over a flat buffer,
// plus the small fp32 vector helpers the trainer needs around it (grad norm, scaling, bf16 copies).
//
//   p ← p (1 − lr wd);  m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²
//   p ← p − lr (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + eps)
// Bias corrections are computed on the host in double, as torch does in Python floats.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {
int grid_for(int64_t n) {
  int64_t b = (n + 255) / 256;
  return (int)(b < 4096 ? (b > 0 ? b : 1) : 4096);
}
#define GRID_STRIDE(i, n) \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, float lr, float b1, float b2,
                             float eps, float decay, float step_size, float bc2_sqrt) {
  GRID_STRIDE(i, n) {
    float pi = p[i] * decay;
    const float gi = g[i];
    const float mi = b1 * m[i] + (1.f - b1) * gi;
    const float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    pi -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    p[i] = pi;
  }
}
__global__ void sumsq_kernel(const float* g, int64_t n, double* out) {
  double s = 0;
  GRID_STRIDE(i, n) s += (double)g[i] * g[i];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  __shared__ double sh[32];
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += sh[w];
    atomicAdd(out, t);
  }
}
__global__ void scale_kernel(float* x, int64_t n, float s) { GRID_STRIDE(i, n) x[i] *= s; }
__global__ void to_bf16_kernel(bf16* d, const float* s, int64_t n) { GRID_STRIDE(i, n) d[i] = __float2bfloat16(s[i]); }
__global__ void add_kernel(float* x, const bf16* y, int64_t n) { GRID_STRIDE(i, n) x[i] += __bfloat162float(y[i]); }
}  // namespace

void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const mimic::AdamWParams& hp, int step) {
  if (!n) return;
  const double bc1 = 1.0 - std::pow((double)hp.beta1, step), bc2 = 1.0 - std::pow((double)hp.beta2, step);
  adamw_kernel<<<grid_for(n), 256, 0, Context::get().stream>>>(p, g, m, v, n, hp.lr, hp.beta1, hp.beta2, hp.eps,
                                                               1.f - hp.lr * hp.weight_decay, (float)(hp.lr / bc1),
                                                               (float)std::sqrt(bc2));
  MIMIC_CUDA_LAUNCHED();
}
void sum_squares(const float* g, int64_t n, double* out) {
  if (!n) return;
  sumsq_kernel<<<grid_for(n), 256, 0, Context::get().stream>>>(g, n, out);
  MIMIC_CUDA_LAUNCHED();
}
void scale_inplace(float* x, int64_t n, float s) {
  if (!n) return;
  scale_kernel<<<grid_for(n), 256, 0, Context::get().stream>>>(x, n, s);
  MIMIC_CUDA_LAUNCHED();
}
void to_bf16(bf16* d, const float* s, int64_t n) {
  if (!n) return;
  to_bf16_kernel<<<grid_for(n), 256, 0, Context::get().stream>>>(d, s, n);
  MIMIC_CUDA_LAUNCHED();
}
void add_inplace(float* x, const bf16* y, int64_t n) {
  if (!n) return;
  add_kernel<<<grid_for(n), 256, 0, Context::get().stream>>>(x, y, n);
  MIMIC_CUDA_LAUNCHED();
}
}  // namespace mimic::cuda
