// cross_entropy — the CUDA twin of ops/cross_entropy.h: masked token cross-entropy over one chunk
// of rows, fused with its backward so a 128k vocabulary never needs more than a chunk of logits.
//
//   lse_n = log Σ_v exp(l[n, v]),   loss_n = lse_n − l[n, target_n]      (target_n = -100: skipped)
//   *loss_sum += Σ_n loss_n                                  (device double, fp32 maths per row)
//   backward, in place: l[n, v] ← scale · (exp(l[n, v] − lse_n) − [v == target_n]); 0 for masked rows
// One block per row: an online (max, sum) pass per thread, merged across the block, then the
// gradient pass. Logits bf16 (training, as HF's bf16 model) or fp32 (checks).
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {

template <class TL, bool BACKWARD>
__global__ void ce_kernel(TL* __restrict__ logits, const int32_t* __restrict__ target, int64_t V, float scale,
                          double* loss_sum) {
  const int64_t n = blockIdx.x;
  TL* row = logits + n * V;
  const int32_t t = target[n];
  if (t < 0) {
    if (BACKWARD)
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) row[v] = from_f<TL>(0.f);
    return;
  }
  float m = -INFINITY, s = 0.f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float x = to_f(row[v]);
    if (x > m) { s = s * __expf(m - x) + 1.f; m = x; }
    else s += __expf(x - m);
  }
  // merge (m, s) across the warp, then across warps
  for (int o = 16; o > 0; o >>= 1) {
    const float mo = __shfl_xor_sync(0xffffffffu, m, o), so = __shfl_xor_sync(0xffffffffu, s, o);
    const float mn = fmaxf(m, mo);
    s = (mn == -INFINITY) ? 0.f : s * __expf(m - mn) + so * __expf(mo - mn);
    m = mn;
  }
  __shared__ float sm[32], ss[32];
  __shared__ float s_lse;
  if ((threadIdx.x & 31) == 0) { sm[threadIdx.x >> 5] = m; ss[threadIdx.x >> 5] = s; }
  __syncthreads();
  if (threadIdx.x == 0) {
    float M = -INFINITY, S = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
      const float mn = fmaxf(M, sm[w]);
      S = (mn == -INFINITY) ? 0.f : S * __expf(M - mn) + ss[w] * __expf(sm[w] - mn);
      M = mn;
    }
    const float lse = M + logf(S);
    s_lse = lse;
    atomicAdd(loss_sum, (double)(lse - to_f(row[t])));
  }
  __syncthreads();
  if (BACKWARD) {
    const float lse = s_lse;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float p = __expf(to_f(row[v]) - lse);
      row[v] = from_f<TL>(scale * (p - (v == t ? 1.f : 0.f)));
    }
  }
}

}  // namespace

template <class TL>
void cross_entropy_forward(const TL* logits, const int32_t* target, int64_t N, int64_t V, double* loss_sum) {
  if (!N) return;
  ce_kernel<TL, false><<<(unsigned)N, 512, 0, Context::get().stream>>>(const_cast<TL*>(logits), target, V, 0.f,
                                                                        loss_sum);
  MIMIC_CUDA_LAUNCHED();
}
template <class TL>
void cross_entropy_forward_backward(TL* logits, const int32_t* target, int64_t N, int64_t V, float scale,
                                    double* loss_sum) {
  if (!N) return;
  ce_kernel<TL, true><<<(unsigned)N, 512, 0, Context::get().stream>>>(logits, target, V, scale, loss_sum);
  MIMIC_CUDA_LAUNCHED();
}

template void cross_entropy_forward<bf16>(const bf16*, const int32_t*, int64_t, int64_t, double*);
template void cross_entropy_forward<float>(const float*, const int32_t*, int64_t, int64_t, double*);
template void cross_entropy_forward_backward<bf16>(bf16*, const int32_t*, int64_t, int64_t, float, double*);
template void cross_entropy_forward_backward<float>(float*, const int32_t*, int64_t, int64_t, float, double*);

}  // namespace mimic::cuda
