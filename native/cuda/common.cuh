// common.cuh — device helpers every CUDA twin shares (bf16 conversions, warp reductions).
#pragma once
#include "cuda/buffer.h"

namespace mimic::cuda {

inline int blocks_for(int64_t n, int threads) { return (int)((n + threads - 1) / threads); }

__host__ __device__ inline float to_f(float x) { return x; }
__device__ inline float to_f(bf16 x) { return __bfloat162float(x); }
template <class T> __device__ inline T from_f(float x);
template <> __device__ inline float from_f<float>(float x) { return x; }
template <> __device__ inline bf16 from_f<bf16>(float x) { return __float2bfloat16(x); }

// Two floats → one bf16x2 word, each rounded to nearest even; lo in the low 16 bits (the lower address).
__device__ __forceinline__ uint32_t bf2_bits(float lo, float hi) {
  const __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);  // .x = lo
  uint32_t u;
  memcpy(&u, &p, sizeof u);
  return u;
}

// The 16 NF4 code values by value (a kernel parameter; stage them to shared memory with static indices).
struct NF4Lut {
  float v[16];
};

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace mimic::cuda
