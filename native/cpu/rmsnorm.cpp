// rmsnorm — Llama's RMSNorm over rows x[N, C] (see ops/rmsnorm.h):
//   rstd[n] = 1/sqrt(mean_c x² + eps),  out = w ⊙ x · rstd
//   dx += rstd · (g − x̂ · mean(g ⊙ x̂)),  g = dout ⊙ w, x̂ = x · rstd;   dw += Σ_n dout ⊙ x̂
// The row sums are accumulated in double: C is up to 8192 and the result feeds every layer.
// rstd may be null in forward (inference).
#include "ops/rmsnorm.h"

#include <cmath>
#include <vector>

#include "core/threadpool.h"

namespace mimic::cpu {

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N, int C, float eps) {
  parallel_for(N, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const float* xr = x + n * C;
      double ss = 0;
      for (int c = 0; c < C; ++c) ss += (double)xr[c] * xr[c];
      float r = 1.0f / std::sqrt((float)(ss / C) + eps);
      if (rstd) rstd[n] = r;
      float* o = out + n * C;
      for (int c = 0; c < C; ++c) o[c] = w[c] * (xr[c] * r);
    }
  }, 16);
}

void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd,
                      int64_t N, int C) {
  if (dx) {
    parallel_for(N, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) {
        const float *xr = x + n * C, *gr = dout + n * C;
        const float r = rstd[n];
        double dot = 0;
        for (int c = 0; c < C; ++c) dot += (double)gr[c] * w[c] * xr[c] * r;
        const float mean = (float)(dot / C);
        float* d = dx + n * C;
        for (int c = 0; c < C; ++c) d[c] += r * (gr[c] * w[c] - xr[c] * r * mean);
      }
    }, 16);
  }
  if (dw) {
    // Columns are independent: split C so no two threads add to the same dw[c].
    parallel_for(C, [&](int64_t b, int64_t e) {
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = b; c < e; ++c) dw[c] += dout[n * C + c] * x[n * C + c] * rstd[n];
    }, 64);
  }
}

}  // namespace mimic::cpu
