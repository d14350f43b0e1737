// rope — the CUDA twin of ops/rope.h: rotary embedding, HF "rotate_half", in place on bf16 [N, H, D].
//
//   a = fp32(pos · inv_freq[i])                 (as transformers: the angle is an fp32 product)
//   x'[i] = x[i] cos a − x[i + D/2] sin a;   x'[i + D/2] = x[i + D/2] cos a + x[i] sin a
//   backward: the same rotation by −a on the gradient.
// cos/sin are taken in double of that fp32 angle: positions reach 10⁵ radians, where the
// fast-math intrinsics lose every digit.
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {
__global__ void rope_kernel(bf16* __restrict__ x, const int32_t* __restrict__ pos, const float* __restrict__ inv_freq,
                            int H, int D, float sign) {
  const int64_t n = blockIdx.x;
  const int half = D / 2;
  const float p = (float)pos[n];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float a = __fmul_rn(p, inv_freq[i]);
    double sd, cd;
    sincos((double)a, &sd, &cd);
    const float c = (float)cd, s = sign * (float)sd;
    for (int h = 0; h < H; ++h) {
      bf16* r = x + (n * H + h) * D;
      const float x0 = __bfloat162float(r[i]), x1 = __bfloat162float(r[i + half]);
      r[i] = __float2bfloat16(x0 * c - x1 * s);
      r[i + half] = __float2bfloat16(x1 * c + x0 * s);
    }
  }
}
void launch(bf16* x, const int32_t* pos, const float* inv_freq, int64_t N, int H, int D, float sign) {
  if (N == 0) return;
  rope_kernel<<<(unsigned)N, 64, 0, Context::get().stream>>>(x, pos, inv_freq, H, D, sign);
  MIMIC_CUDA_LAUNCHED();
}
}  // namespace

void rope_forward(bf16* x, const int32_t* pos, const float* inv_freq, int64_t N, int H, int D) {
  launch(x, pos, inv_freq, N, H, D, 1.f);
}
void rope_backward(bf16* dx, const int32_t* pos, const float* inv_freq, int64_t N, int H, int D) {
  launch(dx, pos, inv_freq, N, H, D, -1.f);
}
}  // namespace mimic::cuda
