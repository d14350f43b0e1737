// rope — the CUDA twin of ops/rope.h: rotary embedding, HF "rotate_half", in place on bf16 [N, H, D].
//
//   a = fp32(pos · inv_freq[i])                 (as transformers: the angle is an fp32 product)
//   x'[i] = x[i] cos a − x[i + D/2] sin a;   x'[i + D/2] = x[i + D/2] cos a + x[i] sin a
//   backward: the same rotation by −a on the gradient.
// cos/sin are taken in double of that fp32 angle: positions reach 10⁵ radians, where the
// fast-math intrinsics lose every digit.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {
// One block a row: thread (i, g) — threadIdx.x = i over the pairs, threadIdx.y = g over groups of
// heads — takes the heads g, g + G, …, four at a time, all four pairs loaded before any is written
// (round 20's profile, prefill 512 on an H100: one thread a pair walking all 24 heads one after
// another ran at 5 % of DRAM, 11 µs a launch). Each thread computes its own cos/sin: the same
// values, the same bits.
constexpr int kRopeHeads = 4;
__global__ void rope_kernel(bf16* __restrict__ x, const int32_t* __restrict__ pos, const float* __restrict__ inv_freq,
                            int H, int D, float sign) {
  const int64_t n = blockIdx.x;
  const int half = D / 2, G = blockDim.y;
  const float p = (float)pos[n];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float a = __fmul_rn(p, inv_freq[i]);
    double sd, cd;
    sincos((double)a, &sd, &cd);
    const float c = (float)cd, s = sign * (float)sd;
    for (int h0 = threadIdx.y; h0 < H; h0 += kRopeHeads * G) {
      float x0[kRopeHeads], x1[kRopeHeads];
#pragma unroll
      for (int k = 0; k < kRopeHeads; ++k) {
        const int h = h0 + k * G;
        if (h < H) {
          const bf16* r = x + (n * H + h) * D;
          x0[k] = __bfloat162float(r[i]);
          x1[k] = __bfloat162float(r[i + half]);
        }
      }
#pragma unroll
      for (int k = 0; k < kRopeHeads; ++k) {
        const int h = h0 + k * G;
        if (h < H) {
          bf16* r = x + (n * H + h) * D;
          r[i] = __float2bfloat16(x0[k] * c - x1[k] * s);
          r[i + half] = __float2bfloat16(x1[k] * c + x0[k] * s);
        }
      }
    }
  }
}
void launch(bf16* x, const int32_t* pos, const float* inv_freq, int64_t N, int H, int D, float sign) {
  if (N == 0) return;
  const int tx = std::min(D / 2, 256), ty = std::max(1, std::min(H, 256 / std::max(tx, 1)));
  rope_kernel<<<(unsigned)N, dim3(tx, ty), 0, Context::get().stream>>>(x, pos, inv_freq, H, D, sign);
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
