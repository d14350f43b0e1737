// rmsnorm — Llama's RMSNorm, computed in fp32 as transformers' LlamaRMSNorm does.
//
//   rstd[n]   = 1 / sqrt(mean_c(x[n, c]²) + eps)
//   out[n, c] = w[c] · x[n, c] · rstd[n]
// backward (x̂ = x·rstd, g = dout·w):
//   dx[n, c] += rstd[n] · (g[n, c] − x̂[n, c] · mean_c(g[n, :] · x̂[n, :]))
//   dw[c]    += Σ_n dout[n, c] · x̂[n, c]      (norm weights are frozen: the engine passes null)
#pragma once
#include <cstdint>

namespace mimic::cpu {
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N, int C, float eps);
void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int64_t N, int C);
}  // namespace mimic::cpu
