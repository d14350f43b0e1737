// embedding — the CUDA twin of ops/embedding.h: out[n, :] = table[ids[n], :].
// Table bf16 [V, C]; out fp32 [N, C] (the residual stream starts in fp32). No backward (frozen).
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {
__global__ void embedding_kernel(float* __restrict__ out, const int32_t* __restrict__ ids,
                                 const bf16* __restrict__ table, int C) {
  const int64_t n = blockIdx.x;
  const bf16* row = table + (int64_t)ids[n] * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) out[n * C + c] = __bfloat162float(row[c]);
}
}  // namespace

void embedding_forward(float* out, const int32_t* ids, const bf16* table, int64_t N, int C) {
  if (N == 0) return;
  embedding_kernel<<<(unsigned)N, 256, 0, Context::get().stream>>>(out, ids, table, C);
  MIMIC_CUDA_LAUNCHED();
}
}  // namespace mimic::cuda
