// cross_entropy (cpu) — masked token cross-entropy over rows of logits (see ops/cross_entropy.h).
//
//   logits[N, V], target[N] (int32, -100 = masked)
//   loss_n = lse_n − logits[n, target_n],   lse_n = m_n + log Σ_v exp(logits[n, v] − m_n),  m_n = max_v
//   forward returns Σ_n loss_n over unmasked rows (double);
//   forward_backward also writes dlogits[n, v] = scale · (exp(logits[n, v] − lse_n) − [v == target_n])
//   (0 on masked rows), in place when dlogits == logits.
// Rows run in parallel; each row's exp-sum is accumulated in double so a 128k vocabulary loses
// nothing to fp32 summation, and the per-row losses are summed serially afterwards so the result
// does not depend on the thread count.
#include "ops/cross_entropy.h"

#include <cmath>
#include <vector>

#include "core/threadpool.h"

namespace mimic::cpu {
namespace {

constexpr int32_t kIgnore = -100;

// Natural log-sum-exp of one row.
double row_lse(const float* row, int64_t V) {
  float m = row[0];
  for (int64_t v = 1; v < V; ++v) m = row[v] > m ? row[v] : m;
  double s = 0.0;
  for (int64_t v = 0; v < V; ++v) s += std::exp(static_cast<double>(row[v]) - m);
  return m + std::log(s);
}

double run(float* dlogits, const float* logits, const int32_t* target, int64_t N, int64_t V, float scale) {
  std::vector<double> loss(static_cast<size_t>(N), 0.0);
  parallel_for(N, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const float* row = logits + n * V;
      const int32_t t = target[n];
      if (t == kIgnore) {
        if (dlogits)
          for (int64_t v = 0; v < V; ++v) dlogits[n * V + v] = 0.f;
        continue;
      }
      const double lse = row_lse(row, V);
      loss[n] = lse - row[t];
      if (dlogits) {
        float* d = dlogits + n * V;  // may be row itself: each element is read before it is written
        for (int64_t v = 0; v < V; ++v)
          d[v] = scale * static_cast<float>(std::exp(static_cast<double>(row[v]) - lse));
        d[t] -= scale;
      }
    }
  });
  double sum = 0.0;
  for (double l : loss) sum += l;
  return sum;
}

}  // namespace

double cross_entropy_forward(const float* logits, const int32_t* target, int64_t N, int64_t V) {
  return run(nullptr, logits, target, N, V, 0.f);
}

double cross_entropy_forward_backward(float* dlogits, const float* logits, const int32_t* target,
                                      int64_t N, int64_t V, float scale) {
  return run(dlogits, logits, target, N, V, scale);
}

}  // namespace mimic::cpu
