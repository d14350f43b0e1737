// lora_init — a fresh LoRA adapter for one projection, initialized as PEFT does
// (init_lora_weights=True):
//
//   A[r, K] ~ kaiming_uniform_(a = sqrt(5))  =  U(−1/sqrt(K), 1/sqrt(K))      K = in_features
//   B[M, r] = 0                                (so the adapted model starts equal to the base)
//   scale   = alpha / r
// kaiming_uniform_ with a = sqrt(5): gain = sqrt(2 / (1 + a²)) = sqrt(1/3), std = gain / sqrt(K),
// bound = sqrt(3) · std = 1 / sqrt(K). The values come from mimic::Rng, not torch's generator:
// same distribution, different stream. Each projection draws from its own stream, derived from
// (seed, layer, projection), so adding or removing a target never changes another layer's init.
#pragma once
#include <cstdint>
#include <memory>

#include "engine/linear.h"

namespace mimic {

// The stream seed of projection `proj` (0..6: q k v o gate up down) of layer `layer`.
uint64_t lora_stream_seed(uint64_t seed, int layer, int proj);

// A new adapter for a projection with in_features K and out_features M. Gradients dA, dB are
// allocated (zero) so that training can accumulate into them.
std::unique_ptr<LoraAdapter> lora_init(int M, int K, int r, float alpha, uint64_t stream_seed);

}  // namespace mimic
