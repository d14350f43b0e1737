// opcheck — helpers shared by the op checks, and the list of backends that run. See opcheck.h.
#include "core/opcheck.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <utility>

#include "ops/sampling.h"

namespace mimic {

double max_rel_err(const float* got, const double* want, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num = std::max(num, std::fabs((double)got[i] - want[i]));
    den = std::max(den, std::fabs(want[i]));
    if (std::isnan(got[i])) return INFINITY;
  }
  return num / std::max(den, 1e-30);
}

double max_rel_err(const float* got, const float* want, int64_t n) {
  std::vector<double> w(want, want + n);
  return max_rel_err(got, w.data(), n);
}

void fill_uniform(float* x, int64_t n, uint64_t seed, float scale) {
  Rng rng(seed);
  for (int64_t i = 0; i < n; ++i) x[i] = (2.f * rng.uniform() - 1.f) * scale;
}

std::vector<double> finite_diff(float* x, const std::vector<int64_t>& probe, float h, const std::function<double()>& f) {
  std::vector<double> g;
  g.reserve(probe.size());
  for (int64_t i : probe) {
    const float x0 = x[i];
    x[i] = x0 + h;
    const double hp = (double)x[i] - x0;  // the step actually taken in fp32
    const double lp = f();
    x[i] = x0 - h;
    const double hm = (double)x0 - x[i];
    const double lm = f();
    x[i] = x0;
    g.push_back((lp - lm) / (hp + hm));
  }
  return g;
}

std::vector<int64_t> probe_indices(int64_t n, int count, uint64_t seed) {
  std::vector<int64_t> out;
  if (n <= count) {
    for (int64_t i = 0; i < n; ++i) out.push_back(i);
    return out;
  }
  Rng rng(seed);
  for (int c = 0; c < count; ++c) out.push_back((int64_t)(rng.next() % (uint64_t)n));
  return out;
}

namespace {
std::mutex g_mu;
std::vector<std::pair<std::string, std::function<std::vector<OpCheckRow>()>>>& registry() {
  static std::vector<std::pair<std::string, std::function<std::vector<OpCheckRow>()>>> r;
  return r;
}
}  // namespace

void add_op_checks(const std::string& backend, std::function<std::vector<OpCheckRow>()> fn) {
  std::lock_guard<std::mutex> g(g_mu);
  for (auto& e : registry())
    if (e.first == backend) { e.second = std::move(fn); return; }  // idempotent per backend
  registry().emplace_back(backend, std::move(fn));
}

std::vector<OpCheckRow> run_op_checks() {
  std::vector<OpCheckRow> rows = cpu_op_checks();
  std::vector<std::function<std::vector<OpCheckRow>()>> fns;
  {
    std::lock_guard<std::mutex> g(g_mu);
    for (auto& e : registry()) fns.push_back(e.second);
  }
  for (auto& f : fns) {
    std::vector<OpCheckRow> more = f();
    rows.insert(rows.end(), more.begin(), more.end());
  }
  return rows;
}

}  // namespace mimic
