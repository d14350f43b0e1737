// lora_init — PEFT's default LoRA init (A Kaiming-uniform with a = sqrt(5), B = 0); see lora_init.h.
//
//   A[r, K]: each value = (2u − 1) / sqrt(K), u ~ U[0, 1) from mimic::Rng(stream_seed), row-major
//   B[M, r]: 0;  scale = alpha / r
#include "engine/lora_init.h"

#include <cmath>

#include "core/error.h"
#include "ops/sampling.h"

namespace mimic {

uint64_t lora_stream_seed(uint64_t seed, int layer, int proj) {
  // splitmix64 of (seed, layer·8 + proj): well-mixed, independent streams per projection.
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (static_cast<uint64_t>(layer) * 8 + proj + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::unique_ptr<LoraAdapter> lora_init(int M, int K, int r, float alpha, uint64_t stream_seed) {
  MIMIC_CHECK(r > 0, "EINVAL", "LoRA rank must be a positive integer (got ", r, ")");
  MIMIC_CHECK(alpha > 0.f && std::isfinite(alpha), "EINVAL", "LoRA alpha must be a positive number (got ", alpha, ")");
  auto a = std::make_unique<LoraAdapter>();
  a->r = r;
  a->scale = alpha / static_cast<float>(r);
  a->A.resize(static_cast<size_t>(r) * K);
  a->B.assign(static_cast<size_t>(M) * r, 0.f);
  const double bound = 1.0 / std::sqrt(static_cast<double>(K));
  Rng rng(stream_seed);
  for (float& x : a->A) x = static_cast<float>((2.0 * rng.uniform() - 1.0) * bound);
  a->dA.assign(a->A.size(), 0.f);
  a->dB.assign(a->B.size(), 0.f);
  return a;
}

}  // namespace mimic
