// nf4 (cpu) — matmuls against an NF4 weight without ever dequantizing the whole matrix.
//
//   forward       : out[N, M]  = x[N, K] · Wᵀ          W = dequant(q) [M, K]
//   backward_input: dx[N, K]  += dout[N, M] · W
// W[m, k] = NF4_CODE[nibble(m·K + k)] · absmax[(m·K + k) / 64]   (high nibble = even index).
//
// Work is cut into independent output tiles run by parallel_for; each tile dequantizes only the
// slice of W it reads (a few rows, or a few rows × a column block) into a small thread-local
// buffer, then does plain fp32 arithmetic on it. The repeated dequantization (once per tile of
// the other dimension) costs ~1/(2·tile) of the multiply-adds. Dot products keep 8 independent
// lanes so the compiler can use SIMD without reassociating one scalar sum (no -ffast-math), and
// run 2 rows of x × 4 rows of W at a time so that loads are shared.
#include <algorithm>
#include <vector>

#include "core/threadpool.h"
#include "ops/nf4.h"

namespace mimic::cpu {
namespace {

constexpr int kLanes = 8;
constexpr int kRows = 16;    // rows of W dequantized together
constexpr int kTileN = 64;   // rows of x / dout per task
constexpr int kTileK = 256;  // columns of dx per backward task

// dst[0 .. k1-k0) = W[m, k0 .. k1)
void dequant_row(float* dst, const mimic::NF4Weight& q, int m, int k0, int k1) {
  const int64_t base = static_cast<int64_t>(m) * q.K;
  for (int k = k0; k < k1; ++k) {
    const int64_t i = base + k;
    const uint8_t byte = q.packed[i >> 1];
    const uint8_t c = (i & 1) ? (byte & 15) : (byte >> 4);
    dst[k - k0] = mimic::NF4_CODE[c] * q.absmax[i >> 6];
  }
}

// out[r·ldo + c] = x_r · w_c for RN rows of x and RM rows of w: RN·RM dot products share their
// loads, each with kLanes independent partial sums.
template <int RN, int RM>
inline void dots(float* out, int64_t ldo, const float* x, const float* w, int K) {
  float acc[RN][RM][kLanes] = {};
  int k = 0;
  for (; k + kLanes <= K; k += kLanes)
    for (int r = 0; r < RN; ++r)
      for (int c = 0; c < RM; ++c)
        for (int l = 0; l < kLanes; ++l) acc[r][c][l] += x[(int64_t)r * K + k + l] * w[(int64_t)c * K + k + l];
  for (int r = 0; r < RN; ++r)
    for (int c = 0; c < RM; ++c) {
      float s = 0.f;
      for (int l = 0; l < kLanes; ++l) s += acc[r][c][l];
      for (int kk = k; kk < K; ++kk) s += x[(int64_t)r * K + kk] * w[(int64_t)c * K + kk];
      out[(int64_t)r * ldo + c] = s;
    }
}

// out[n, m0..m1) for rows n0..n1 of x against the dequantized rows w (row m0 first).
void tile_forward(float* out, const float* x, const float* w, int64_t n0, int64_t n1, int m0, int m1, int K, int M) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) {
    int m = m0;
    for (; m + 4 <= m1; m += 4) dots<2, 4>(out + n * M + m, M, x + n * K, w + (int64_t)(m - m0) * K, K);
    for (; m < m1; ++m) dots<2, 1>(out + n * M + m, M, x + n * K, w + (int64_t)(m - m0) * K, K);
  }
  for (; n < n1; ++n) {
    int m = m0;
    for (; m + 4 <= m1; m += 4) dots<1, 4>(out + n * M + m, M, x + n * K, w + (int64_t)(m - m0) * K, K);
    for (; m < m1; ++m) dots<1, 1>(out + n * M + m, M, x + n * K, w + (int64_t)(m - m0) * K, K);
  }
}

}  // namespace

void nf4_matmul_forward(float* out, const float* x, const mimic::NF4Weight& W, int64_t N) {
  const int M = W.M, K = W.K;
  const int64_t tm = (M + kRows - 1) / kRows, tn = (N + kTileN - 1) / kTileN;
  parallel_for(tm * tn, [&](int64_t b, int64_t e) {
    std::vector<float> w(static_cast<size_t>(kRows) * K);
    int64_t loaded = -1;  // which row tile w holds: consecutive tasks often share it
    for (int64_t t = b; t < e; ++t) {
      const int64_t im = t / tn, in = t % tn;
      const int m0 = static_cast<int>(im * kRows), m1 = std::min(M, m0 + kRows);
      if (loaded != im) {
        for (int m = m0; m < m1; ++m) dequant_row(w.data() + static_cast<int64_t>(m - m0) * K, W, m, 0, K);
        loaded = im;
      }
      const int64_t n1 = std::min<int64_t>(N, (in + 1) * kTileN);
      tile_forward(out, x, w.data(), in * kTileN, n1, m0, m1, K, M);
    }
  });
}

void nf4_matmul_backward_input(float* dx, const float* dout, const mimic::NF4Weight& W, int64_t N) {
  const int M = W.M, K = W.K;
  const int64_t tk = (K + kTileK - 1) / kTileK, tn = (N + kTileN - 1) / kTileN;
  // Tasks own disjoint (row block, column block) tiles of dx, so no two threads write one element.
  parallel_for(tk * tn, [&](int64_t b, int64_t e) {
    std::vector<float> w(static_cast<size_t>(kRows) * kTileK);
    for (int64_t t = b; t < e; ++t) {
      const int64_t ik = t / tn, in = t % tn;
      const int k0 = static_cast<int>(ik * kTileK), k1 = std::min(K, k0 + kTileK), kw = k1 - k0;
      const int64_t n0 = in * kTileN, n1 = std::min<int64_t>(N, n0 + kTileN);
      for (int m0 = 0; m0 < M; m0 += kRows) {
        const int m1 = std::min(M, m0 + kRows);
        for (int m = m0; m < m1; ++m) dequant_row(w.data() + static_cast<int64_t>(m - m0) * kw, W, m, k0, k1);
        for (int64_t n = n0; n < n1; ++n) {
          float* d = dx + n * K + k0;
          const float* g = dout + n * M;
          int m = m0;
          for (; m + 4 <= m1; m += 4) {  // four rows per pass: a quarter of the loads/stores of d
            const float* w0 = w.data() + static_cast<int64_t>(m - m0) * kw;
            const float *w1 = w0 + kw, *w2 = w1 + kw, *w3 = w2 + kw;
            const float g0 = g[m], g1 = g[m + 1], g2 = g[m + 2], g3 = g[m + 3];
            for (int k = 0; k < kw; ++k) d[k] += g0 * w0[k] + g1 * w1[k] + g2 * w2[k] + g3 * w3[k];
          }
          for (; m < m1; ++m) {
            const float* wr = w.data() + static_cast<int64_t>(m - m0) * kw;
            for (int k = 0; k < kw; ++k) d[k] += g[m] * wr[k];
          }
        }
      }
    }
  });
}

}  // namespace mimic::cpu
