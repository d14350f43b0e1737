// nf4_codes — the two per-value quantizers of bitsandbytes' NF4 storage (ops/nf4.h), written once for
// the CPU (core/nf4.cpp) and the GPU loader (cuda/nf4.cu): the GPU must store byte for byte what the
// CPU stores (cuda op rows "nf4_quantize ... vs CPU", tol 0), so both compile this one text.
// Neither expression can be contracted into an FMA ((a + b)·0.5 is not a·b + c), so host and device
// round alike without __fadd_rn/__fmul_rn.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define MIMIC_HOST_DEVICE __host__ __device__
#else
#define MIMIC_HOST_DEVICE
#endif

namespace mimic {

// bitsandbytes' dQuantizeNF4: the index of the nearest NF4 code value to x ∈ [-1, 1], by the
// midpoints of NF4_CODE as its float literals (NaN → code 0).
MIMIC_HOST_DEVICE inline uint8_t nf4_code_of(float x) {
  if (x > 0.03979014977812767f) {
    if (x > 0.3893125355243683f) {
      if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 15 : 14;
      return x > 0.5016634166240692f ? 13 : 12;
    }
    if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 11 : 10;
    return x > 0.1202552504837513f ? 9 : 8;
  }
  if (x > -0.33967943489551544f) {
    if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 7 : 6;
    return x > -0.23460740596055984f ? 5 : 4;
  }
  if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 3 : 2;
  return x > -0.8480964004993439f ? 1 : 0;
}

// bitsandbytes' dQuantize<STOCHASTIC=0>: the index of x in a sorted 256-entry code (binary search,
// then the nearer neighbour by the midpoint).
MIMIC_HOST_DEVICE inline uint8_t dynamic_code_of(const float* code, float x) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = code[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) { lower_pivot = pivot; lower = val; pivot += i; }
    else { upper_pivot = pivot; upper = val; pivot -= i; }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > val) {
    const float midpoint = (upper + val) * 0.5f;
    return static_cast<uint8_t>(x > midpoint ? upper_pivot : pivot);
  }
  const float midpoint = (lower + val) * 0.5f;
  return static_cast<uint8_t>(x < midpoint ? lower_pivot : pivot);
}

}  // namespace mimic
