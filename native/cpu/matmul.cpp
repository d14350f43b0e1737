// matmul — y = x · Wᵀ (+ bias) and its backward, fp32 (see ops/matmul.h for shapes and maths).
//
// Both x[N, K] and W[M, K] are row-major with K contiguous, so each output is a dot product of
// two contiguous rows. The forward cuts [N, M] into 64×64 tiles run in parallel; inside a tile a
// 2×4 micro-kernel keeps 8 dot products in flight with 8 independent lanes each, which the
// compiler turns into SIMD without -ffast-math (no reassociation of one scalar sum is needed).
// Each output is still an fp32 sum over K (lane-split), accurate to ~K·eps relative.
#include "ops/matmul.h"

#include <algorithm>
#include <cstring>

#include "core/threadpool.h"

namespace mimic::cpu {
namespace {

constexpr int L = 8;     // lanes per dot product
constexpr int TILE = 64; // rows of x / rows of W per tile

// out[r][c] = x_r · w_c for RN rows of x and RM rows of W.
template <int RN, int RM>
inline void micro(float* out, int64_t ldo, const float* x, const float* W, int K) {
  float acc[RN][RM][L] = {};
  int k = 0;
  for (; k + L <= K; k += L)
    for (int r = 0; r < RN; ++r)
      for (int c = 0; c < RM; ++c)
        for (int l = 0; l < L; ++l) acc[r][c][l] += x[(int64_t)r * K + k + l] * W[(int64_t)c * K + k + l];
  for (int r = 0; r < RN; ++r)
    for (int c = 0; c < RM; ++c) {
      float s = 0;
      for (int l = 0; l < L; ++l) s += acc[r][c][l];
      for (int kk = k; kk < K; ++kk) s += x[(int64_t)r * K + kk] * W[(int64_t)c * K + kk];
      out[(int64_t)r * ldo + c] = s;
    }
}

void tile_forward(float* out, const float* x, const float* W, const float* bias, int64_t n0, int64_t n1,
                  int m0, int m1, int K, int M) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) {
    int m = m0;
    for (; m + 4 <= m1; m += 4) micro<2, 4>(out + n * M + m, M, x + n * K, W + (int64_t)m * K, K);
    for (; m < m1; ++m) micro<2, 1>(out + n * M + m, M, x + n * K, W + (int64_t)m * K, K);
  }
  for (; n < n1; ++n) {
    int m = m0;
    for (; m + 4 <= m1; m += 4) micro<1, 4>(out + n * M + m, M, x + n * K, W + (int64_t)m * K, K);
    for (; m < m1; ++m) micro<1, 1>(out + n * M + m, M, x + n * K, W + (int64_t)m * K, K);
  }
  if (bias)
    for (int64_t r = n0; r < n1; ++r)
      for (int m = m0; m < m1; ++m) out[r * M + m] += bias[m];
}

inline void axpy(float* y, float a, const float* x, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace

void matmul_forward(float* out, const float* x, const float* W, const float* bias, int64_t N, int K, int M) {
  const int64_t tn = (N + TILE - 1) / TILE, tm = (M + TILE - 1) / TILE;
  parallel_for(tn * tm, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      int64_t i = t / tm, j = t % tm;
      tile_forward(out, x, W, bias, i * TILE, std::min<int64_t>(N, (i + 1) * TILE), (int)(j * TILE),
                   (int)std::min<int64_t>(M, (j + 1) * TILE), K, M);
    }
  });
}

void matmul_backward(float* dx, float* dW, const float* dout, const float* x, const float* W, int64_t N, int K, int M) {
  constexpr int KB = 256, MB = 64;
  if (dx) {
    // dx[n, k-block] += Σ_m dout[n, m] W[m, k-block]: tiles over (n-block, k-block) never share
    // an output element, so no two threads write the same dx row segment.
    const int64_t tn = (N + TILE - 1) / TILE, tk = (K + KB - 1) / KB;
    parallel_for(tn * tk, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        int64_t n0 = (t / tk) * TILE, n1 = std::min<int64_t>(N, n0 + TILE);
        int k0 = (int)((t % tk) * KB), k1 = std::min(K, k0 + KB);
        for (int m0 = 0; m0 < M; m0 += MB) {  // a W block stays in cache across the n rows
          int m1 = std::min(M, m0 + MB);
          for (int64_t n = n0; n < n1; ++n)
            for (int m = m0; m < m1; ++m) {
              float d = dout[n * M + m];
              if (d != 0.f) axpy(dx + n * K + k0, d, W + (int64_t)m * K + k0, k1 - k0);
            }
        }
      }
    });
  }
  if (dW) {
    // dW[m, :] += Σ_n dout[n, m] x[n, :]: each thread owns a range of W rows.
    parallel_for(M, [&](int64_t b, int64_t e) {
      for (int64_t n0 = 0; n0 < N; n0 += TILE) {
        int64_t n1 = std::min<int64_t>(N, n0 + TILE);
        for (int64_t m = b; m < e; ++m)
          for (int64_t n = n0; n < n1; ++n) {
            float d = dout[n * M + m];
            if (d != 0.f) axpy(dW + m * K, d, x + n * K, K);
          }
      }
    }, 4);
  }
}

}  // namespace mimic::cpu
