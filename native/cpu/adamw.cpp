// adamw (cpu) — one torch.optim.AdamW step (foreach=False, amsgrad=False) over a flat buffer.
//
//   p[n], g[n], m[n] (exp_avg), v[n] (exp_avg_sq), t = step (1-based)
//   p ← p · (1 − lr·wd)
//   m ← lerp(m, g, 1 − β1)                    = m + (1 − β1)(g − m)
//   v ← v · β2 + (1 − β2) · g · g
//   p ← p − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
// Same operation order as torch's _single_tensor_adamw: the scalar factors (bias corrections,
// step size, 1 − β) are computed in double as Python does and rounded to float when they meet
// the fp32 tensors; everything elementwise is fp32.
#include "ops/adamw.h"

#include <cmath>

#include "core/threadpool.h"

namespace mimic::cpu {

void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const mimic::AdamWParams& hp, int step) {
  const double lr = hp.lr, b1 = hp.beta1, b2 = hp.beta2;
  const float decay = static_cast<float>(1.0 - lr * static_cast<double>(hp.weight_decay));
  const float w1 = static_cast<float>(1.0 - b1);
  const float beta2 = hp.beta2;
  const float w2 = static_cast<float>(1.0 - b2);
  const double bias_correction1 = 1.0 - std::pow(b1, step);
  const double bias_correction2 = 1.0 - std::pow(b2, step);
  const float neg_step_size = static_cast<float>(-(lr / bias_correction1));
  const float bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float eps = hp.eps;
  const bool lerp_low = w1 < 0.5f;  // torch's lerp picks its formula by the weight
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (decay != 1.f) p[i] *= decay;
      m[i] = lerp_low ? m[i] + w1 * (g[i] - m[i]) : g[i] - (g[i] - m[i]) * (1.f - w1);
      v[i] = v[i] * beta2 + w2 * g[i] * g[i];
      const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
      p[i] = p[i] + neg_step_size * m[i] / denom;
    }
  }, 4096);
}

}  // namespace mimic::cpu
