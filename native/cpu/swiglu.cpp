// swiglu — out = silu(gate) ⊙ up, silu(g) = g·σ(g), elementwise over [N, C] (see ops/swiglu.h):
//   dgate += dout · up · σ(g) · (1 + g · (1 − σ(g)));   dup += dout · silu(g)
#include "ops/swiglu.h"

#include <cmath>

#include "core/threadpool.h"

namespace mimic::cpu {

static inline float sigmoid(float g) { return 1.0f / (1.0f + std::exp(-g)); }

void swiglu_forward(float* out, const float* gate, const float* up, int64_t N, int C) {
  const int64_t n = N * (int64_t)C;
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
  }, 4096);
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t N, int C) {
  const int64_t n = N * (int64_t)C;
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float g = gate[i], s = sigmoid(g);
      if (dgate) dgate[i] += dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
      if (dup) dup[i] += dout[i] * g * s;
    }
  }, 4096);
}

}  // namespace mimic::cpu
