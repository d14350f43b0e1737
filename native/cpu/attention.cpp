// attention — causal grouped-query attention, flash-style (see ops/attention.h for shapes/maths).
//
// Forward: one pass over the visible keys per (sequence, head, query) with an online softmax
// (running max m, running sum l, rescaled accumulator), so no Tq×Tk matrix exists:
//   s_j = q·k_j / sqrt(D);  m' = max(m, s_j);  l = l·e^{m−m'} + e^{s_j−m'};  acc = acc·e^{m−m'} + e^{s_j−m'} v_j
//   out = acc / l;  lse = m + log l
// Backward (q_offset = 0, Tq = Tk = T) recomputes p_ij = e^{s_ij − lse_i} and uses
// Σ_j p_ij dp_ij = dout_i · out_i (the flash-attention identity), so it too keeps no matrix.
// Work is split over (sequence, KV head) in backward so the G query heads that share a KV head
// accumulate into dk/dv on one thread: no atomics, deterministic sums.
#include "ops/attention.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/threadpool.h"

namespace mimic::cpu {

static inline float dot(const float* a, const float* b, int D) {
  float s = 0;
  for (int d = 0; d < D; ++d) s += a[d] * b[d];
  return s;
}

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, int B, int Tq, int Tk,
                       int q_offset, int Hq, int Hkv, int D) {
  const int G = Hq / Hkv;
  const float scale = 1.0f / std::sqrt((float)D);
  const int64_t rows = (int64_t)B * Hq * Tq;
  parallel_for(rows, [&](int64_t b0, int64_t e0) {
    std::vector<float> acc((size_t)D);
    for (int64_t r = b0; r < e0; ++r) {
      const int b = (int)(r / ((int64_t)Hq * Tq)), h = (int)((r / Tq) % Hq), i = (int)(r % Tq);
      const int hk = h / G;
      const float* qi = q + (((int64_t)b * Tq + i) * Hq + h) * D;
      const int last = q_offset + i < Tk - 1 ? q_offset + i : Tk - 1;
      float m = -std::numeric_limits<float>::infinity(), l = 0;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int j = 0; j <= last; ++j) {
        const int64_t kv = (((int64_t)b * Tk + j) * Hkv + hk) * D;
        const float s = dot(qi, k + kv, D) * scale;
        if (s > m) {
          const float c = std::exp(m - s);  // 0 on the first key (m = −inf)
          l *= c;
          for (int d = 0; d < D; ++d) acc[d] *= c;
          m = s;
        }
        const float p = std::exp(s - m);
        l += p;
        const float* vj = v + kv;
        for (int d = 0; d < D; ++d) acc[d] += p * vj[d];
      }
      float* o = out + (((int64_t)b * Tq + i) * Hq + h) * D;
      const float inv = l > 0 ? 1.0f / l : 0.f;
      for (int d = 0; d < D; ++d) o[d] = acc[d] * inv;
      if (lse) lse[((int64_t)b * Hq + h) * Tq + i] = m + std::log(l);
    }
  });
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, int B, int T, int Hq, int Hkv, int D) {
  const int G = Hq / Hkv;
  const float scale = 1.0f / std::sqrt((float)D);
  parallel_for((int64_t)B * Hkv, [&](int64_t b0, int64_t e0) {
    std::vector<float> dqi((size_t)D);
    for (int64_t r = b0; r < e0; ++r) {
      const int b = (int)(r / Hkv), hk = (int)(r % Hkv);
      for (int g = 0; g < G; ++g) {
        const int h = hk * G + g;
        for (int i = 0; i < T; ++i) {
          const int64_t qo = (((int64_t)b * T + i) * Hq + h) * D;
          const float *qi = q + qo, *doi = dout + qo;
          const float Di = dot(doi, out + qo, D);
          const float L = lse[((int64_t)b * Hq + h) * T + i];
          std::fill(dqi.begin(), dqi.end(), 0.f);
          for (int j = 0; j <= i; ++j) {
            const int64_t kv = (((int64_t)b * T + j) * Hkv + hk) * D;
            const float p = std::exp(dot(qi, k + kv, D) * scale - L);
            const float dp = dot(doi, v + kv, D);
            const float ds = p * (dp - Di) * scale;
            if (dv) for (int d = 0; d < D; ++d) dv[kv + d] += p * doi[d];
            if (dk) for (int d = 0; d < D; ++d) dk[kv + d] += ds * qi[d];
            for (int d = 0; d < D; ++d) dqi[d] += ds * k[kv + d];
          }
          if (dq) for (int d = 0; d < D; ++d) dq[qo + d] += dqi[d];
        }
      }
    }
  });
}

}  // namespace mimic::cpu
