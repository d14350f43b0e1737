// linear — one projection of a decoder layer: a frozen base weight (fp32 or NF4) plus an
// optional LoRA adapter, as PEFT's lora.Linear computes it:
//
//   y = x · Wᵀ + scale · dropout(x) · Aᵀ · Bᵀ          W[M, K], A[r, K], B[M, r], scale = alpha / r
//
// The base weight is never written. Training saves what the backward needs in LinearCache.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ops/nf4.h"

namespace mimic {

struct LoraAdapter {
  int r = 0;
  float scale = 1.f;                 // alpha / r
  std::vector<float> A, B;           // A[r, K], B[M, r]  (PEFT: lora_A.weight, lora_B.weight)
  std::vector<float> dA, dB;         // gradients, same shapes (allocated when training)
};

struct Linear {
  std::string name;                  // e.g. "model.layers.3.self_attn.q_proj"
  int M = 0, K = 0;                  // out_features, in_features
  const float* W = nullptr;          // fp32 base weight [M, K] (points into `owned` or a mapping)
  std::vector<float> owned;          // storage when the base weight is converted (bf16 -> fp32)
  std::unique_ptr<NF4Weight> nf4;    // set when quantized; W is then null
  std::unique_ptr<LoraAdapter> lora; // null when this projection has no adapter
};

// What the backward needs from one forward call (training only).
struct LinearCache {
  std::vector<float> x_drop;         // dropout(x) [N, K] when dropout > 0 (else x is reused)
  std::vector<float> h;              // x_drop · Aᵀ  [N, r]
  float dropout = 0.f;               // the forward's dropout and seed: backward regenerates the
  uint64_t dropout_seed = 0;         // mask from them (x_drop alone is ambiguous where x == 0)
};

// out[N, M] = linear(x[N, K]). cache/dropout only when training (cache may be null).
void linear_forward(float* out, const float* x, int64_t N, const Linear& L,
                    LinearCache* cache = nullptr, float dropout = 0.f, uint64_t dropout_seed = 0);
// dx[N, K] += ∂/∂x; L.lora->dA/dB += their gradients. x is the forward input.
void linear_backward(float* dx, const float* dout, const float* x, int64_t N, Linear& L,
                     const LinearCache* cache);

}  // namespace mimic
