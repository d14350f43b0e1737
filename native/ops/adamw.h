// adamw — torch.optim.AdamW (decoupled weight decay), one step over a flat fp32 buffer.
//
//   p ← p · (1 − lr · wd)
//   m ← β1 m + (1 − β1) g;    v ← β2 v + (1 − β2) g²
//   p ← p − lr · (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + eps)        t = step (1-based)
#pragma once
#include <cstdint>

namespace mimic {
struct AdamWParams {
  float lr = 2e-4f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
};
}  // namespace mimic

namespace mimic::cpu {
void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const mimic::AdamWParams& hp, int step);
}  // namespace mimic::cpu
