// swiglu — Llama's gated MLP activation, out = silu(gate) · up.
//
//   silu(g) = g · σ(g)
//   forward : out[n, c] = silu(gate[n, c]) · up[n, c]
//   backward: dgate += dout · up · σ(g) · (1 + g · (1 − σ(g)));   dup += dout · silu(g)
#pragma once
#include <cstdint>

namespace mimic::cpu {
void swiglu_forward(float* out, const float* gate, const float* up, int64_t N, int C);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                     int64_t N, int C);
}  // namespace mimic::cpu
