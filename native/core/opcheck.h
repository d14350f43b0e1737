// opcheck — one harness that checks every op against an independent truth and reports rows
// {op, check, max_rel_err, tol, pass}; the addon exposes it as `_opCheck()` for the tests.
//
// CPU rows (opcheck_cpu.cpp): forwards against naive double-precision references (attention
// against a materialized softmax), backwards against central finite differences of the fp32
// forward with the loss L = Σ w ⊙ out accumulated in double. Inputs are random and odd-sized,
// plus T = 1 decode shapes. Another backend adds its rows ("CUDA vs CPU") by registering a
// function with add_op_checks() once at start-up (e.g. from the addon's init under MIMIC_CUDA);
// run_op_checks() runs the CPU rows, then every registered function in order.
//
// max_rel_err is normwise: max_i |got_i − want_i| / max(max_i |want_i|, tiny), so one tiny
// reference value cannot blow it up, and a wrong sign or factor anywhere shows at once.
#pragma once
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace mimic {

struct OpCheckRow {
  std::string op, check;
  double max_rel_err = 0, tol = 0;
  bool pass = false;
};

// Normwise relative error of got vs want (see above).
double max_rel_err(const float* got, const double* want, int64_t n);
double max_rel_err(const float* got, const float* want, int64_t n);

// Elements among the first n of a and b whose bytes differ: the count of a bit-for-bit comparison
// (a NaN counts like any other value, unlike a difference of floats).
template <class T>
int64_t bits_differ(const T* a, const T* b, size_t n) {
  int64_t d = 0;
  for (size_t i = 0; i < n; ++i) d += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
  return d;
}

// Uniform(-scale, scale) fill from a seeded stream.
void fill_uniform(float* x, int64_t n, uint64_t seed, float scale = 1.f);

// Central finite differences of f (which returns L in double) w.r.t. x[idx] for each idx in
// `probe`; x is perturbed in place and restored. Returns dL/dx at the probed indices.
std::vector<double> finite_diff(float* x, const std::vector<int64_t>& probe, float h, const std::function<double()>& f);

// Up to `count` indices spread over [0, n) (all of them when n <= count).
std::vector<int64_t> probe_indices(int64_t n, int count, uint64_t seed);

std::vector<OpCheckRow> cpu_op_checks();
void add_op_checks(const std::string& backend, std::function<std::vector<OpCheckRow>()> fn);
std::vector<OpCheckRow> run_op_checks();

}  // namespace mimic
