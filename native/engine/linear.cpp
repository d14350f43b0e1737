// linear — one projection: frozen base (fp32 or NF4) + optional LoRA, as PEFT's lora.Linear:
//
//   y = x · Wᵀ + scale · (dropout(x) · Aᵀ) · Bᵀ        x[N, K], W[M, K], A[r, K], B[M, r]
//   backward (g = dout):
//     dx += g · W                                         (base; W frozen, no dW)
//     dh  = scale · g · B;   dB += scale · gᵀ · h         h = dropout(x) · Aᵀ  [N, r]
//     dA += dhᵀ · dropout(x);   dx += mask ⊙ (dh · A) / (1 − p)
// Dropout is inverted dropout (PEFT / torch.nn.Dropout): keep with probability 1 − p, scale the
// kept values by 1/(1 − p). The mask is drawn from mimic::Rng(dropout_seed), one uniform per
// element of x in row-major order, so the backward can regenerate it exactly.
#include "engine/linear.h"

#include <vector>

#include "core/error.h"
#include "ops/matmul.h"
#include "ops/sampling.h"

namespace mimic {
namespace {

// keep[i] = 1/(1-p) or 0; p >= 1 drops everything.
std::vector<float> dropout_mask(int64_t n, float p, uint64_t seed) {
  std::vector<float> m((size_t)n);
  Rng rng(seed);
  const float keep_scale = p < 1.f ? 1.f / (1.f - p) : 0.f;
  for (int64_t i = 0; i < n; ++i) m[i] = rng.uniform() >= p ? keep_scale : 0.f;
  return m;
}

void base_forward(float* out, const float* x, int64_t N, const Linear& L) {
  if (L.nf4) cpu::nf4_matmul_forward(out, x, *L.nf4, N);
  else cpu::matmul_forward(out, x, L.W, nullptr, N, L.K, L.M);
}

}  // namespace

void linear_forward(float* out, const float* x, int64_t N, const Linear& L, LinearCache* cache, float dropout,
                    uint64_t dropout_seed) {
  MIMIC_CHECK(L.nf4 || L.W, "EINVAL", "linear ", L.name, " has no weight (the model was disposed?)");
  base_forward(out, x, N, L);
  if (!L.lora || L.lora->r == 0) return;
  const LoraAdapter& a = *L.lora;
  const int r = a.r;
  const int64_t NK = N * (int64_t)L.K;

  std::vector<float> xd_local;
  const float* xin = x;
  if (dropout > 0.f) {
    std::vector<float> mask = dropout_mask(NK, dropout, dropout_seed);
    std::vector<float>& xd = cache ? cache->x_drop : xd_local;
    xd.resize((size_t)NK);
    for (int64_t i = 0; i < NK; ++i) xd[i] = x[i] * mask[i];
    xin = xd.data();
  } else if (cache) {
    cache->x_drop.clear();
  }
  std::vector<float> h_local;
  std::vector<float>& h = cache ? cache->h : h_local;
  h.resize((size_t)(N * r));
  cpu::matmul_forward(h.data(), xin, a.A.data(), nullptr, N, L.K, r);
  std::vector<float> y((size_t)(N * L.M));
  cpu::matmul_forward(y.data(), h.data(), a.B.data(), nullptr, N, r, L.M);
  const int64_t NM = N * (int64_t)L.M;
  for (int64_t i = 0; i < NM; ++i) out[i] += a.scale * y[i];
  if (cache) {
    cache->dropout = dropout;
    cache->dropout_seed = dropout_seed;
  }
}

void linear_backward(float* dx, const float* dout, const float* x, int64_t N, Linear& L, const LinearCache* cache) {
  if (dx) {
    if (L.nf4) cpu::nf4_matmul_backward_input(dx, dout, *L.nf4, N);
    else cpu::matmul_backward(dx, nullptr, dout, nullptr, L.W, N, L.K, L.M);
  }
  if (!L.lora || L.lora->r == 0) return;
  LoraAdapter& a = *L.lora;
  const int r = a.r;
  const int64_t NK = N * (int64_t)L.K, NM = N * (int64_t)L.M;
  const float p = cache ? cache->dropout : 0.f;

  // What the forward saw: dropout(x) and h. Without a cache (or with an empty one) recompute them.
  std::vector<float> xd_local, h_local;
  const float* xin = x;
  if (p > 0.f) {
    if (cache && (int64_t)cache->x_drop.size() == NK) {
      xin = cache->x_drop.data();
    } else {
      std::vector<float> mask = dropout_mask(NK, p, cache->dropout_seed);
      xd_local.resize((size_t)NK);
      for (int64_t i = 0; i < NK; ++i) xd_local[i] = x[i] * mask[i];
      xin = xd_local.data();
    }
  }
  const float* h = nullptr;
  if (cache && (int64_t)cache->h.size() == N * r) {
    h = cache->h.data();
  } else {
    h_local.resize((size_t)(N * r));
    cpu::matmul_forward(h_local.data(), xin, a.A.data(), nullptr, N, L.K, r);
    h = h_local.data();
  }
  if (a.dA.size() != a.A.size()) a.dA.assign(a.A.size(), 0.f);
  if (a.dB.size() != a.B.size()) a.dB.assign(a.B.size(), 0.f);

  std::vector<float> g((size_t)NM);
  for (int64_t i = 0; i < NM; ++i) g[i] = a.scale * dout[i];
  std::vector<float> dh((size_t)(N * r), 0.f);
  cpu::matmul_backward(dh.data(), a.dB.data(), g.data(), h, a.B.data(), N, r, L.M);
  if (!dx) {
    cpu::matmul_backward(nullptr, a.dA.data(), dh.data(), xin, a.A.data(), N, L.K, r);
    return;
  }
  if (p > 0.f) {
    std::vector<float> dxd((size_t)NK, 0.f);
    cpu::matmul_backward(dxd.data(), a.dA.data(), dh.data(), xin, a.A.data(), N, L.K, r);
    std::vector<float> mask = dropout_mask(NK, p, cache->dropout_seed);
    for (int64_t i = 0; i < NK; ++i) dx[i] += mask[i] * dxd[i];
  } else {
    cpu::matmul_backward(dx, a.dA.data(), dh.data(), xin, a.A.data(), N, L.K, r);
  }
}

}  // namespace mimic
