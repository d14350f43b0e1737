// opcheck_cpu — the CPU rows of the op-check harness (see opcheck.h).
//
// Tolerances and where they come from:
//   forward vs a double reference: 1e-5 normwise (fp32 rounding over sums of ≤ 64 terms ~ 1e-6);
//   backward vs central finite differences of the fp32 forward, L = Σ w ⊙ out in double:
//     the FD error is O(h²)·|f'''| (truncation) + ~1e-7·|L| / h (fp32 rounding of the forward).
//     Linear-in-the-input maps (matmul, rope, LoRA A/B) use h = 0.1 (no truncation error) and tol
//     1e-3; nonlinear ones (rmsnorm, swiglu, attention) h = 1e-2 and tol 1e-3 (measured ~2e-5) — both ≥ 10× the
//     error this estimate gives for these sizes, yet far below what a wrong term (a missing
//     factor, a sign, a skipped head) produces (≥ 1e-1).
// Shapes are small and odd (7, 13, 19 …) so that no tiling happens to line up, and every op
// that decodes also runs with T = 1.
#include <cmath>
#include <memory>
#include <vector>

#include "core/opcheck.h"
#include "engine/linear.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/nf4.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"

namespace mimic {
namespace {

using Vec = std::vector<float>;
constexpr double kFwdTol = 1e-5, kLinTol = 1e-3, kNonlinTol = 1e-3;

Vec rnd(int64_t n, uint64_t seed, float scale = 1.f) {
  Vec v((size_t)n);
  fill_uniform(v.data(), n, seed, scale);
  return v;
}

double weighted(const Vec& out, const Vec& w) {
  double s = 0;
  for (size_t i = 0; i < out.size(); ++i) s += (double)out[i] * w[i];
  return s;
}

void add(std::vector<OpCheckRow>& rows, const std::string& op, const std::string& check, double err, double tol) {
  rows.push_back({op, check, err, tol, err <= tol});
}

// Compares analytic gradient `g` of input x (n values) with FD of `loss` at probed indices.
void fd_row(std::vector<OpCheckRow>& rows, const std::string& op, const std::string& check, float* x, int64_t n,
            const float* g, float h, double tol, const std::function<double()>& loss, uint64_t seed) {
  std::vector<int64_t> idx = probe_indices(n, 48, seed);
  std::vector<double> fd = finite_diff(x, idx, h, loss);
  Vec an;
  for (int64_t i : idx) an.push_back(g[i]);
  add(rows, op, check, max_rel_err(an.data(), fd.data(), (int64_t)fd.size()), tol);
}

void check_matmul(std::vector<OpCheckRow>& rows) {
  struct S { int N, K, M; };
  for (S s : {S{7, 13, 11}, S{1, 37, 5}, S{67, 70, 131}}) {
    const std::string tag = "N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) + " M=" + std::to_string(s.M);
    Vec x = rnd((int64_t)s.N * s.K, 1), W = rnd((int64_t)s.M * s.K, 2), b = rnd(s.M, 3);
    Vec out((size_t)s.N * s.M);
    cpu::matmul_forward(out.data(), x.data(), W.data(), b.data(), s.N, s.K, s.M);
    std::vector<double> ref(out.size());
    for (int n = 0; n < s.N; ++n)
      for (int m = 0; m < s.M; ++m) {
        double a = b[m];
        for (int k = 0; k < s.K; ++k) a += (double)x[n * s.K + k] * W[m * s.K + k];
        ref[n * s.M + m] = a;
      }
    add(rows, "matmul", "forward vs double " + tag, max_rel_err(out.data(), ref.data(), (int64_t)ref.size()), kFwdTol);

    Vec w = rnd((int64_t)s.N * s.M, 4), dx(x.size(), 0.f), dW(W.size(), 0.f);
    cpu::matmul_backward(dx.data(), dW.data(), w.data(), x.data(), W.data(), s.N, s.K, s.M);
    auto loss = [&] {
      cpu::matmul_forward(out.data(), x.data(), W.data(), nullptr, s.N, s.K, s.M);
      return weighted(out, w);
    };
    fd_row(rows, "matmul", "backward dx vs FD " + tag, x.data(), (int64_t)x.size(), dx.data(), 0.1f, kLinTol, loss, 5);
    fd_row(rows, "matmul", "backward dW vs FD " + tag, W.data(), (int64_t)W.size(), dW.data(), 0.1f, kLinTol, loss, 6);
  }
}

void check_embedding(std::vector<OpCheckRow>& rows) {
  const int V = 11, C = 7, N = 5;
  Vec table = rnd(V * C, 7), out(N * C);
  int32_t ids[N] = {3, 0, 10, 3, 7};
  cpu::embedding_forward(out.data(), ids, table.data(), N, C);
  double err = 0;
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) err = std::max(err, (double)std::fabs(out[n * C + c] - table[ids[n] * C + c]));
  add(rows, "embedding", "forward gathers rows exactly", err, 0.0);
}

void check_rmsnorm(std::vector<OpCheckRow>& rows) {
  for (int N : {5, 1}) {
    const int C = 19;
    const float eps = 1e-5f;
    const std::string tag = "N=" + std::to_string(N) + " C=19";
    Vec x = rnd(N * C, 8, 2.f), wt = rnd(C, 9), out(N * C), rstd(N);
    for (auto& v : wt) v += 1.f;
    cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), wt.data(), N, C, eps);
    std::vector<double> ref(out.size());
    for (int n = 0; n < N; ++n) {
      double ss = 0;
      for (int c = 0; c < C; ++c) ss += (double)x[n * C + c] * x[n * C + c];
      double r = 1 / std::sqrt(ss / C + eps);
      for (int c = 0; c < C; ++c) ref[n * C + c] = wt[c] * x[n * C + c] * r;
    }
    add(rows, "rmsnorm", "forward vs double " + tag, max_rel_err(out.data(), ref.data(), (int64_t)ref.size()), kFwdTol);
    Vec w = rnd(N * C, 10), dx(x.size(), 0.f), dw(C, 0.f);
    cpu::rmsnorm_backward(dx.data(), dw.data(), w.data(), x.data(), wt.data(), rstd.data(), N, C);
    Vec tmp(N);
    auto loss = [&] {
      cpu::rmsnorm_forward(out.data(), tmp.data(), x.data(), wt.data(), N, C, eps);
      return weighted(out, w);
    };
    fd_row(rows, "rmsnorm", "backward dx vs FD " + tag, x.data(), (int64_t)x.size(), dx.data(), 1e-2f, kNonlinTol, loss, 11);
    fd_row(rows, "rmsnorm", "backward dw vs FD " + tag, wt.data(), C, dw.data(), 0.1f, kLinTol, loss, 12);
  }
}

void check_rope(std::vector<OpCheckRow>& rows) {
  RopeParams p;
  p.theta = 500000.f;
  p.type = "llama3";
  p.factor = 32.f;
  p.original_max_position = 64;
  const int D = 16, H = 3;
  std::vector<float> inv = rope_inv_freq(p, D);
  // llama3 scaling recomputed in double straight from transformers' formula.
  std::vector<double> inv_ref(D / 2);
  for (int i = 0; i < D / 2; ++i) {
    double f = 1.0 / std::pow(500000.0, (2.0 * i) / D), wl = 2 * M_PI / f;
    double lo_wl = 64.0 / 1.0, hi_wl = 64.0 / 4.0, s = f;
    if (wl > lo_wl) s = f / 32.0;
    if (!(wl < hi_wl) && !(wl > lo_wl)) {
      double sm = (64.0 / wl - 1.0) / (4.0 - 1.0);
      s = (1 - sm) * f / 32.0 + sm * f;
    }
    inv_ref[i] = s;
  }
  add(rows, "rope", "inv_freq llama3 vs double", max_rel_err(inv.data(), inv_ref.data(), D / 2), kFwdTol);

  for (int N : {6, 1}) {
    const std::string tag = "N=" + std::to_string(N) + " H=3 D=16";
    std::vector<int32_t> pos(N);
    for (int n = 0; n < N; ++n) pos[n] = n * 37 + (N == 1 ? 1000 : 0);
    Vec x = rnd(N * H * D, 13), y = x;
    cpu::rope_forward(y.data(), pos.data(), inv.data(), N, H, D);
    std::vector<double> ref(x.size());
    for (int n = 0; n < N; ++n)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < D / 2; ++i) {
          double a = (double)(float)((float)pos[n] * inv[i]);
          const float* r = &x[(n * H + h) * D];
          ref[(n * H + h) * D + i] = r[i] * std::cos(a) - r[i + D / 2] * std::sin(a);
          ref[(n * H + h) * D + i + D / 2] = r[i + D / 2] * std::cos(a) + r[i] * std::sin(a);
        }
    add(rows, "rope", "forward vs double " + tag, max_rel_err(y.data(), ref.data(), (int64_t)ref.size()), kFwdTol);
    Vec w = rnd(x.size(), 14), dx = w;
    cpu::rope_backward(dx.data(), pos.data(), inv.data(), N, H, D);
    auto loss = [&] {
      y = x;
      cpu::rope_forward(y.data(), pos.data(), inv.data(), N, H, D);
      return weighted(y, w);
    };
    fd_row(rows, "rope", "backward vs FD " + tag, x.data(), (int64_t)x.size(), dx.data(), 0.1f, kLinTol, loss, 15);
  }
}

void check_swiglu(std::vector<OpCheckRow>& rows) {
  for (int N : {5, 1}) {
    const int C = 23;
    const std::string tag = "N=" + std::to_string(N) + " C=23";
    Vec g = rnd(N * C, 16, 4.f), u = rnd(N * C, 17, 2.f), out(N * C);
    cpu::swiglu_forward(out.data(), g.data(), u.data(), N, C);
    std::vector<double> ref(out.size());
    for (size_t i = 0; i < ref.size(); ++i) ref[i] = (double)g[i] / (1 + std::exp(-(double)g[i])) * u[i];
    add(rows, "swiglu", "forward vs double " + tag, max_rel_err(out.data(), ref.data(), (int64_t)ref.size()), kFwdTol);
    Vec w = rnd(N * C, 18), dg(g.size(), 0.f), du(u.size(), 0.f);
    cpu::swiglu_backward(dg.data(), du.data(), w.data(), g.data(), u.data(), N, C);
    auto loss = [&] {
      cpu::swiglu_forward(out.data(), g.data(), u.data(), N, C);
      return weighted(out, w);
    };
    fd_row(rows, "swiglu", "backward dgate vs FD " + tag, g.data(), (int64_t)g.size(), dg.data(), 1e-2f, kNonlinTol, loss, 19);
    fd_row(rows, "swiglu", "backward dup vs FD " + tag, u.data(), (int64_t)u.size(), du.data(), 0.1f, kLinTol, loss, 20);
  }
}

// Naive attention: materialized scores, softmax in double.
void naive_attention(std::vector<double>& out, std::vector<double>& lse, const Vec& q, const Vec& k, const Vec& v, int B,
                     int Tq, int Tk, int off, int Hq, int Hkv, int D) {
  out.assign((size_t)B * Tq * Hq * D, 0);
  lse.assign((size_t)B * Hq * Tq, 0);
  const int G = Hq / Hkv;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hq; ++h)
      for (int i = 0; i < Tq; ++i) {
        std::vector<double> s(Tk, -INFINITY);
        double mx = -INFINITY;
        for (int j = 0; j <= off + i && j < Tk; ++j) {
          double d = 0;
          for (int e = 0; e < D; ++e) d += (double)q[((b * Tq + i) * Hq + h) * D + e] * k[((b * Tk + j) * Hkv + h / G) * D + e];
          s[j] = d / std::sqrt((double)D);
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int j = 0; j < Tk; ++j) sum += std::isinf(s[j]) ? 0 : std::exp(s[j] - mx);
        lse[(b * Hq + h) * Tq + i] = mx + std::log(sum);
        for (int j = 0; j < Tk; ++j) {
          if (std::isinf(s[j])) continue;
          double p = std::exp(s[j] - mx) / sum;
          for (int e = 0; e < D; ++e) out[((b * Tq + i) * Hq + h) * D + e] += p * v[((b * Tk + j) * Hkv + h / G) * D + e];
        }
      }
}

void check_attention(std::vector<OpCheckRow>& rows) {
  struct S { int B, Tq, Tk, off, Hq, Hkv, D; const char* what; };
  for (S s : {S{2, 7, 7, 0, 6, 2, 8, "prefill B=2 T=7 Hq=6 Hkv=2 D=8"}, S{1, 1, 9, 8, 4, 2, 16, "decode T=1 after 8 cached"},
              S{1, 3, 10, 7, 4, 1, 12, "chunk Tq=3 after 7 cached, MQA"}}) {
    Vec q = rnd((int64_t)s.B * s.Tq * s.Hq * s.D, 21, 2.f), k = rnd((int64_t)s.B * s.Tk * s.Hkv * s.D, 22, 2.f),
        v = rnd((int64_t)s.B * s.Tk * s.Hkv * s.D, 23);
    Vec out(q.size()), lse((size_t)s.B * s.Hq * s.Tq);
    cpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.Tq, s.Tk, s.off, s.Hq, s.Hkv, s.D);
    std::vector<double> ro, rl;
    naive_attention(ro, rl, q, k, v, s.B, s.Tq, s.Tk, s.off, s.Hq, s.Hkv, s.D);
    add(rows, "attention", std::string("forward vs materialized ") + s.what,
        max_rel_err(out.data(), ro.data(), (int64_t)ro.size()), kFwdTol);
    add(rows, "attention", std::string("lse vs materialized ") + s.what,
        max_rel_err(lse.data(), rl.data(), (int64_t)rl.size()), kFwdTol);
  }
  for (int T : {5, 1}) {
    const int B = 2, Hq = 4, Hkv = 2, D = 6;
    const std::string tag = "B=2 T=" + std::to_string(T) + " Hq=4 Hkv=2 D=6";
    Vec q = rnd(B * T * Hq * D, 24, 1.5f), k = rnd(B * T * Hkv * D, 25, 1.5f), v = rnd(B * T * Hkv * D, 26);
    Vec out(q.size()), lse(B * Hq * T), w = rnd(q.size(), 27);
    cpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, T, 0, Hq, Hkv, D);
    Vec dq(q.size(), 0.f), dk(k.size(), 0.f), dv(v.size(), 0.f);
    cpu::attention_backward(dq.data(), dk.data(), dv.data(), w.data(), q.data(), k.data(), v.data(), out.data(), lse.data(),
                            B, T, Hq, Hkv, D);
    Vec o2(out.size());
    auto loss = [&] {
      cpu::attention_forward(o2.data(), nullptr, q.data(), k.data(), v.data(), B, T, T, 0, Hq, Hkv, D);
      return weighted(o2, w);
    };
    if (T > 1) {  // with one token the output is v itself: dq = dk = 0 exactly, nothing to check
      fd_row(rows, "attention", "backward dq vs FD " + tag, q.data(), (int64_t)q.size(), dq.data(), 1e-2f, kNonlinTol, loss, 28);
      fd_row(rows, "attention", "backward dk vs FD " + tag, k.data(), (int64_t)k.size(), dk.data(), 1e-2f, kNonlinTol, loss, 29);
    }
    fd_row(rows, "attention", "backward dv vs FD " + tag, v.data(), (int64_t)v.size(), dv.data(), 0.1f, kLinTol, loss, 30);
  }
}

// Engine Linear: base (fp32 or NF4) + LoRA with dropout, forward vs dense reference and backward vs FD.
void check_linear(std::vector<OpCheckRow>& rows) {
  for (bool nf4 : {false, true}) {
    const int N = 5, K = 64, M = 9, r = 3;
    const float p = 0.25f, alpha = 6.f;
    const std::string tag = std::string(nf4 ? "NF4" : "fp32") + " base, r=3, dropout 0.25";
    Linear L;
    L.name = "opcheck";
    L.M = M;
    L.K = K;
    L.owned = rnd(M * K, 31, 0.2f);
    Vec Wd = L.owned;  // the weight the forward really uses (dequantized for NF4)
    if (nf4) {
      L.nf4 = std::make_unique<NF4Weight>(nf4_quantize(L.owned.data(), M, K, false));
      nf4_dequantize(Wd.data(), *L.nf4);
    } else {
      L.W = L.owned.data();
    }
    L.lora = std::make_unique<LoraAdapter>();
    L.lora->r = r;
    L.lora->scale = alpha / r;
    L.lora->A = rnd(r * K, 32, 0.3f);
    L.lora->B = rnd(M * r, 33, 0.3f);
    Vec x = rnd(N * K, 34), out(N * M);

    // forward without dropout vs y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ in double
    linear_forward(out.data(), x.data(), N, L);
    std::vector<double> ref((size_t)N * M);
    for (int n = 0; n < N; ++n) {
      std::vector<double> h(r, 0);
      for (int j = 0; j < r; ++j)
        for (int k = 0; k < K; ++k) h[j] += (double)x[n * K + k] * L.lora->A[j * K + k];
      for (int m = 0; m < M; ++m) {
        double a = 0;
        for (int k = 0; k < K; ++k) a += (double)x[n * K + k] * Wd[m * K + k];
        for (int j = 0; j < r; ++j) a += L.lora->scale * h[j] * L.lora->B[m * r + j];
        ref[n * M + m] = a;
      }
    }
    add(rows, "linear", "forward vs double, " + tag.substr(0, tag.find(',')) + " + LoRA",
        max_rel_err(out.data(), ref.data(), (int64_t)ref.size()), kFwdTol);

    Vec w = rnd(N * M, 35), dx(N * K, 0.f);
    LinearCache cache;
    linear_forward(out.data(), x.data(), N, L, &cache, p, 77);
    L.lora->dA.assign(L.lora->A.size(), 0.f);
    L.lora->dB.assign(L.lora->B.size(), 0.f);
    linear_backward(dx.data(), w.data(), x.data(), N, L, &cache);
    auto loss = [&] {
      linear_forward(out.data(), x.data(), N, L, nullptr, p, 77);
      return weighted(out, w);
    };
    Vec dA = L.lora->dA, dB = L.lora->dB;
    fd_row(rows, "linear", "backward dx vs FD, " + tag, x.data(), (int64_t)x.size(), dx.data(), 0.1f, kLinTol, loss, 36);
    fd_row(rows, "linear", "backward dA vs FD, " + tag, L.lora->A.data(), (int64_t)dA.size(), dA.data(), 0.1f, kLinTol, loss, 37);
    fd_row(rows, "linear", "backward dB vs FD, " + tag, L.lora->B.data(), (int64_t)dB.size(), dB.data(), 0.1f, kLinTol, loss, 38);
  }
}

}  // namespace

std::vector<OpCheckRow> cpu_op_checks() {
  std::vector<OpCheckRow> rows;
  check_matmul(rows);
  check_embedding(rows);
  check_rmsnorm(rows);
  check_rope(rows);
  check_swiglu(rows);
  check_attention(rows);
  check_linear(rows);
  for (auto& r : rows) r.op = "cpu." + r.op;
  return rows;
}

}  // namespace mimic
