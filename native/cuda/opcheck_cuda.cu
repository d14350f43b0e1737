// opcheck_cuda — the "CUDA vs CPU" rows of the op harness (core/opcheck.h): every CUDA twin run
// on random odd-sized inputs (and decode's T = 1) against its fp32 CPU twin, forward and backward.
//
// Inputs are drawn in fp32, rounded to bf16, and that same rounded data feeds both twins, so the
// error measured is the CUDA twin's own: bf16 outputs and bf16 GEMM operands (tol 1e-2, about
// 3 bf16 ulps of the largest output), fp32 paths (residual-stream RMSNorm backward, fp32-logit
// cross-entropy, AdamW: tol 1e-4). NF4: both twins dequantize the same codes; only bf16 rounding differs.
// Errors are normwise (max_rel_err in core/opcheck.h). cuda_op_checks() is registered with
// add_op_checks("cuda", ...) by whoever starts the CUDA backend (the addon, the check binary).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/opcheck.h"
#include "cuda/attention_tc.h"
#include "cuda/cuda_ops.h"
#include "cuda/gemv_tc.h"
#include "cuda/nf4_dequant_fast.h"
#include "ops/adamw.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/nf4.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/sampling.h"
#include "ops/swiglu.h"

namespace mimic::cuda {
namespace {

constexpr double kBf16Tol = 1e-2, kF32Tol = 1e-4;

std::vector<float> rnd(int64_t n, uint64_t seed, float scale = 1.f, bool round_bf16 = true) {
  std::vector<float> v((size_t)n);
  fill_uniform(v.data(), n, seed, scale);
  if (round_bf16)
    for (auto& x : v) x = __bfloat162float(__float2bfloat16(x));
  return v;
}
DevBuf<bf16> dev_bf16(const std::vector<float>& v) {
  std::vector<bf16> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = __float2bfloat16(v[i]);
  return upload(h);
}
std::vector<float> host_f32(const bf16* d, size_t n) {
  Context::get().sync();
  std::vector<bf16> h = download(d, n);
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = __bfloat162float(h[i]);
  return f;
}
std::vector<float> host_f32(const float* d, size_t n) {
  Context::get().sync();
  return download(d, n);
}
OpCheckRow row(const std::string& op, const std::string& check, const std::vector<float>& got,
               const std::vector<float>& want, double tol) {
  OpCheckRow r;
  r.op = op;
  r.check = check;
  r.tol = tol;
  bool finite = true;
  for (float g : got) finite = finite && std::isfinite(g);
  r.max_rel_err = finite && got.size() == want.size() ? max_rel_err(got.data(), want.data(), (int64_t)got.size()) : 1e30;
  r.pass = r.max_rel_err <= tol;
  return r;
}

void check_matmul(std::vector<OpCheckRow>& out, int64_t N, int K, int M, const std::string& tag) {
  auto x = rnd(N * K, 11), W = rnd((int64_t)M * K, 12, 0.1f), dy = rnd(N * M, 13);
  auto dx0 = rnd(N * K, 14), dW0 = rnd((int64_t)M * K, 15, 1.f, false);
  std::vector<float> y((size_t)(N * M)), dx = dx0, dW = dW0;
  cpu::matmul_forward(y.data(), x.data(), W.data(), nullptr, N, K, M);
  cpu::matmul_backward(dx.data(), dW.data(), dy.data(), x.data(), W.data(), N, K, M);
  auto dxd = dev_bf16(x), dWd = dev_bf16(W), ddy = dev_bf16(dy);
  DevBuf<float> y32(N * M), gx = upload(dx0), gW = upload(dW0);
  DevBuf<bf16> y16(N * M);
  matmul_forward<float>(y32.p, dxd.p, dWd.p, N, K, M);
  matmul_forward<bf16>(y16.p, dxd.p, dWd.p, N, K, M);
  matmul_backward_input<float>(gx.p, ddy.p, dWd.p, N, K, M, 1.f, 1.f);
  matmul_backward_weight(gW.p, ddy.p, dxd.p, N, K, M, 1.f, 1.f);
  out.push_back(row("matmul", "fwd fp32-out " + tag, host_f32(y32.p, y.size()), y, kF32Tol * 10));
  out.push_back(row("matmul", "fwd bf16-out " + tag, host_f32(y16.p, y.size()), y, kBf16Tol));
  out.push_back(row("matmul", "bwd dx " + tag, host_f32(gx.p, dx.size()), dx, kF32Tol * 10));
  out.push_back(row("matmul", "bwd dW " + tag, host_f32(gW.p, dW.size()), dW, kF32Tol * 10));
}

void check_nf4(std::vector<OpCheckRow>& out, int M, int K, bool dq) {
  auto w = rnd((int64_t)M * K, 21, 0.05f, false);
  NF4Weight q = nf4_quantize(w.data(), M, K, dq);
  std::vector<float> deq((size_t)M * K);
  nf4_dequantize(deq.data(), q);
  NF4Device d = nf4_upload(q);
  DevBuf<bf16> scratch((size_t)M * K);
  nf4_dequantize(scratch.p, d);
  const std::string tag = std::string(dq ? "double-quant " : "plain ") + std::to_string(M) + "x" + std::to_string(K);
  out.push_back(row("nf4", "dequant " + tag, host_f32(scratch.p, deq.size()), deq, 4e-3));
  const int64_t N = 5;
  auto x = rnd(N * K, 22), dy = rnd(N * M, 23);
  std::vector<float> y((size_t)(N * M)), dx((size_t)(N * K), 0.f);
  cpu::nf4_matmul_forward(y.data(), x.data(), q, N);
  cpu::nf4_matmul_backward_input(dx.data(), dy.data(), q, N);
  auto xd = dev_bf16(x), dyd = dev_bf16(dy);
  DevBuf<float> yd(N * M), dxd(N * K);
  MIMIC_CUDA_CHECK(cudaMemsetAsync(dxd.p, 0, dxd.bytes(), Context::get().stream));
  nf4_matmul_forward<float>(yd.p, xd.p, d, N, scratch.p);
  nf4_matmul_backward_input<float>(dxd.p, dyd.p, d, N, scratch.p);
  out.push_back(row("nf4", "matmul fwd " + tag, host_f32(yd.p, y.size()), y, kBf16Tol));
  out.push_back(row("nf4", "matmul bwd dx " + tag, host_f32(dxd.p, dx.size()), dx, kBf16Tol));
}

// nf4_gemm_small (tensor cores, NF4 dequantized in registers) vs (a) dequantize + cuBLAS on the GPU —
// the same bf16 weights and inputs, fp32 sums in another order: fp32-out 1e-5, bf16-out one rounding
// (kBf16Tol) — and (b) the CPU twin at kBf16Tol. S spans 1..64 (every n-tile count, partial tiles),
// shapes span one and several K slices; α = 0.5, β = 1 accumulates into a random y.
void check_nf4_gemm_small(std::vector<OpCheckRow>& out, int S, int M, int K, bool dq) {
  auto w = rnd((int64_t)M * K, 41 + S, 0.05f, false);
  NF4Weight q = nf4_quantize(w.data(), M, K, dq);
  NF4Device d = nf4_upload(q);
  auto x = rnd((int64_t)S * K, 42 + S), y0 = rnd((int64_t)S * M, 43 + S);
  std::vector<float> ycpu((size_t)S * M);
  cpu::nf4_matmul_forward(ycpu.data(), x.data(), q, S);
  for (size_t i = 0; i < ycpu.size(); ++i) ycpu[i] = 0.5f * ycpu[i] + y0[i];
  auto xd = dev_bf16(x);
  DevBuf<bf16> wdq((size_t)M * K);
  DevBuf<float> yref = upload(y0), y32 = upload(y0);
  DevBuf<bf16> yref16 = dev_bf16(y0), y16 = dev_bf16(y0);
  nf4_dequantize(wdq.p, d);
  matmul_forward<float>(yref.p, xd.p, wdq.p, S, K, M, 0.5f, 1.f);
  matmul_forward<bf16>(yref16.p, xd.p, wdq.p, S, K, M, 0.5f, 1.f);
  const size_t ws = nf4_gemm_small_workspace(S, M, K);
  DevBuf<float> work(ws / sizeof(float) + 1);
  const bool a = nf4_gemm_small<float>(y32.p, xd.p, d, S, 0.5f, 1.f, work.p, work.bytes());
  const bool b = nf4_gemm_small<bf16>(y16.p, xd.p, d, S, 0.5f, 1.f, work.p, work.bytes());
  const std::string tag = std::string(dq ? "dq " : "plain ") + "S=" + std::to_string(S) + " " + std::to_string(M) + "x" +
                          std::to_string(K);
  std::vector<float> g32 = host_f32(y32.p, ycpu.size()), g16 = host_f32(y16.p, ycpu.size());
  if (!a) g32.assign(g32.size(), NAN);
  if (!b) g16.assign(g16.size(), NAN);
  out.push_back(row("nf4_gemm_small", "fp32-out vs dequant+cuBLAS " + tag, g32, host_f32(yref.p, ycpu.size()), 1e-5));
  out.push_back(row("nf4_gemm_small", "bf16-out vs dequant+cuBLAS " + tag, g16, host_f32(yref16.p, ycpu.size()), kBf16Tol));
  out.push_back(row("nf4_gemm_small", "fp32-out vs CPU " + tag, g32, ycpu, kBf16Tol));
}

// The fused decode GEMV (gemv.cu) through nf4_matmul_forward (N <= 16 routes there) vs the CPU
// twin: N = 1, 3, 16; odd M; K % 32 != 0 takes the kernel's scalar path. fp32 and bf16 outputs,
// and beta = 1 accumulation. Tolerance: bf16 inputs, fp32 accumulation — the fp32-out row only
// differs by summation order (1e-3); bf16-out by its rounding (kBf16Tol).
void check_gemv_nf4(std::vector<OpCheckRow>& out, int M, int K, int64_t N, bool dq) {
  auto w = rnd((int64_t)M * K, 31 + N, 0.05f, false);
  NF4Weight q = nf4_quantize(w.data(), M, K, dq);
  NF4Device d = nf4_upload(q);
  auto x = rnd(N * K, 32 + N), y0 = rnd(N * M, 33 + N);
  std::vector<float> y((size_t)(N * M));
  cpu::nf4_matmul_forward(y.data(), x.data(), q, N);
  std::vector<float> yacc(y);
  for (size_t i = 0; i < yacc.size(); ++i) yacc[i] = 0.5f * y[i] + y0[i];
  auto xd = dev_bf16(x);
  DevBuf<float> yd(N * M), yad(N * M);
  DevBuf<bf16> y16(N * M);
  DevBuf<bf16> none(1);
  MIMIC_CUDA_CHECK(cudaMemcpy(yad.p, y0.data(), sizeof(float) * y0.size(), cudaMemcpyHostToDevice));
  MIMIC_CUDA_CHECK(cudaMemset(yd.p, 0xff, yd.bytes()));  // poison: every element must be written
  nf4_matmul_forward<float>(yd.p, xd.p, d, N, none.p);
  nf4_matmul_forward<bf16>(y16.p, xd.p, d, N, none.p);
  nf4_matmul_forward<float>(yad.p, xd.p, d, N, none.p, 0.5f, 1.f);
  const std::string tag = "N=" + std::to_string(N) + " " + std::to_string(M) + "x" + std::to_string(K) +
                          (dq ? " double-quant" : " plain") + (K % 32 ? " (scalar path)" : "");
  out.push_back(row("nf4", "gemv fwd fp32-out " + tag, host_f32(yd.p, y.size()), y, 1e-3));
  out.push_back(row("nf4", "gemv fwd bf16-out " + tag, host_f32(y16.p, y.size()), y, kBf16Tol));
  out.push_back(row("nf4", "gemv 0.5·xWᵀ + out " + tag, host_f32(yad.p, y.size()), yacc, 1e-3));
}

// bf16 weights, several jobs in one launch, LoRA B epilogue and a residual: the decode step's
// lm_head / LoRA A products and its o/down projections. Reference in fp32 on the CPU.
void check_gemv_jobs(std::vector<OpCheckRow>& out, int64_t N) {
  const int M1 = 67, K1 = 136, M2 = 29, K2 = 60, r = 5;  // K2 % 8 != 0: scalar path
  auto W1 = rnd((int64_t)M1 * K1, 41, 0.1f), W2 = rnd((int64_t)M2 * K2, 42, 0.1f), x1 = rnd(N * K1, 43),
       x2 = rnd(N * K2, 44), B = rnd((int64_t)M1 * r, 45, 0.1f), h = rnd(N * r, 46, 1.f, false),
       res = rnd(N * M1, 47, 1.f, false);
  const float sc = 0.7f;
  std::vector<float> y1((size_t)(N * M1)), y2((size_t)(N * M2));
  for (int64_t n = 0; n < N; ++n) {
    for (int m = 0; m < M1; ++m) {
      double s = 0, t = 0;
      for (int k = 0; k < K1; ++k) s += (double)x1[n * K1 + k] * W1[(int64_t)m * K1 + k];
      for (int j = 0; j < r; ++j) t += (double)h[n * r + j] * B[(int64_t)m * r + j];
      y1[n * M1 + m] = (float)(res[n * M1 + m] + s + sc * t);
    }
    for (int m = 0; m < M2; ++m) {
      double s = 0;
      for (int k = 0; k < K2; ++k) s += (double)x2[n * K2 + k] * W2[(int64_t)m * K2 + k];
      y2[n * M2 + m] = (float)s;
    }
  }
  auto W1d = dev_bf16(W1), W2d = dev_bf16(W2), x1d = dev_bf16(x1), x2d = dev_bf16(x2), Bd = dev_bf16(B);
  DevBuf<float> hd = upload(h), resd = upload(res), y1d(N * M1);
  DevBuf<bf16> y2d(N * M2);
  GemvJob js[2];
  js[0].W = W1d.p; js[0].M = M1; js[0].K = K1; js[0].x = x1d.p; js[0].out = y1d.p; js[0].out_f32 = true;
  js[0].res = resd.p; js[0].lora_B = Bd.p; js[0].lora_h = hd.p; js[0].r = r; js[0].scale = sc;
  js[1].W = W2d.p; js[1].M = M2; js[1].K = K2; js[1].x = x2d.p; js[1].out = y2d.p;
  gemv(js, 2, N);
  const std::string tag = "N=" + std::to_string(N);
  out.push_back(row("gemv", "bf16 W + LoRA B epilogue + residual, 67x136 " + tag, host_f32(y1d.p, y1.size()), y1, 1e-3));
  out.push_back(row("gemv", "bf16 W, 2nd job in the launch, 29x60 (scalar path) " + tag, host_f32(y2d.p, y2.size()),
                    y2, kBf16Tol));
}

// The lm_head's path (gemv.cu's gemv_rows_kernel: one bf16 job, x staged in shared memory, one
// wave of blocks looping over rows): vs fp32 on the CPU, and bit for bit against gemv_kernel's one
// warp a row (MIMIC_GEMV_ROWS=0) — the same products in the same order. M % 8 != 0 and more row
// groups than resident blocks (the loop).
void check_gemv_rows(std::vector<OpCheckRow>& out, int M, int K) {
  auto W = rnd((int64_t)M * K, 61, 0.05f), x = rnd(K, 62);
  std::vector<float> y((size_t)M);
  for (int m = 0; m < M; ++m) {
    double s = 0;
    for (int k = 0; k < K; ++k) s += (double)x[k] * W[(int64_t)m * K + k];
    y[m] = (float)s;
  }
  auto Wd = dev_bf16(W), xd = dev_bf16(x);
  DevBuf<float> ya(M), yb(M);
  MIMIC_CUDA_CHECK(cudaMemset(ya.p, 0xff, ya.bytes()));  // poison: every element must be written
  GemvJob j;
  j.W = Wd.p; j.M = M; j.K = K; j.x = xd.p; j.out = ya.p; j.out_f32 = true;
  gemv(&j, 1, 1);
  setenv("MIMIC_GEMV_ROWS", "0", 1);
  j.out = yb.p;
  gemv(&j, 1, 1);
  unsetenv("MIMIC_GEMV_ROWS");
  const std::string tag = std::to_string(M) + "x" + std::to_string(K) + " N=1";
  auto a = host_f32(ya.p, y.size());
  out.push_back(row("gemv", "bf16 lm_head path (x in shared memory, rows loop) vs fp32 " + tag, a, y, 1e-3));
  out.push_back(row("gemv", "bf16 lm_head path == one warp a row, bit for bit " + tag, a, host_f32(yb.p, y.size()), 0.0));
}

// gate/up in one launch with silu(gate)·up in the epilogue (the decode MLP) vs the CPU twins.
void check_gemv_glu(std::vector<OpCheckRow>& out, int64_t N) {
  const int M = 45, K = 256;
  auto wg = rnd((int64_t)M * K, 51, 0.05f, false), wu = rnd((int64_t)M * K, 52, 0.05f, false), x = rnd(N * K, 53);
  NF4Weight qg = nf4_quantize(wg.data(), M, K, true), qu = nf4_quantize(wu.data(), M, K, true);
  NF4Device dg = nf4_upload(qg), du = nf4_upload(qu);
  std::vector<float> g((size_t)(N * M)), u((size_t)(N * M)), want((size_t)(N * M));
  cpu::nf4_matmul_forward(g.data(), x.data(), qg, N);
  cpu::nf4_matmul_forward(u.data(), x.data(), qu, N);
  for (size_t i = 0; i < want.size(); ++i) want[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  auto xd = dev_bf16(x);
  DevBuf<bf16> act(N * M), scratch(N * M);
  GemvJob jg = gemv_job_nf4(dg), ju = gemv_job_nf4(du);
  jg.x = ju.x = xd.p; jg.out = act.p; ju.out = scratch.p;
  gemv_glu(jg, ju, N);
  out.push_back(row("gemv", "NF4 gate/up + silu(gate)·up epilogue 45x256 N=" + std::to_string(N),
                    host_f32(act.p, want.size()), want, kBf16Tol));
}

// The tensor-core NF4 decode product (gemv_tc.cu), reached through gemv()/gemv_glu() as the decode
// step reaches it, against (a) its own maths on the CPU in double — codes rounded to bf16, each
// 64-block's sum × its absmax — where only the fp32 summation order differs (1e-5: a row that would
// fail if gemv.cu's fp32-code path ran instead), and (b) the CPU twin with exact codes at the bf16
// tolerance. Two jobs in one launch (fp32 out + residual + LoRA B epilogue; bf16 out, α = 0.5 and
// β = 1 accumulation), and the gate/up pair with silu(gate)·up.
std::vector<float> gemv_tc_ref(const NF4Weight& q, const std::vector<float>& x, int64_t N) {
  const int M = q.M, K = q.K, nb = K / 64;
  float code[16];
  for (int i = 0; i < 16; ++i) code[i] = __bfloat162float(__float2bfloat16(NF4_CODE[i]));
  std::vector<float> y((size_t)(N * M));
  for (int m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int b = 0; b < nb; ++b) {
        const int64_t i = (int64_t)m * nb + b;
        const float am = q.double_quant ? std::fmaf(q.code2[q.absmax_u8[i]], q.absmax2[i >> 8], q.offset) : q.absmax[i];
        double t = 0;
        for (int k = 64 * b; k < 64 * b + 64; ++k) {
          const int64_t e = (int64_t)m * K + k;
          const uint8_t byte = q.packed[e >> 1];
          t += (double)code[(e & 1) ? (byte & 15) : (byte >> 4)] * x[n * K + k];
        }
        s += (double)am * t;
      }
      y[n * M + m] = (float)s;
    }
  return y;
}

// r: the LoRA rank (r % 4 == 0: B and h staged in shared memory, gemv_tc.cu's lora_staged; else read
// from global in the epilogue)
void check_gemv_tc(std::vector<OpCheckRow>& out, int M, int M2, int K, int64_t N, bool dq, int r = 5) {
  const float sc = 0.7f;
  auto w = rnd((int64_t)M * K, 61 + N, 0.05f, false), w2 = rnd((int64_t)M2 * K, 62 + N, 0.05f, false);
  auto x = rnd(N * K, 63 + N), B = rnd((int64_t)M * r, 64, 0.1f), h = rnd(N * r, 65, 1.f, false),
       res = rnd(N * M, 66, 1.f, false), y20 = rnd(N * M2, 67);
  NF4Weight q = nf4_quantize(w.data(), M, K, dq), q2 = nf4_quantize(w2.data(), M2, K, !dq);
  NF4Device d = nf4_upload(q), d2 = nf4_upload(q2);
  std::vector<float> own = gemv_tc_ref(q, x, N), own2 = gemv_tc_ref(q2, x, N);
  std::vector<float> twin((size_t)(N * M)), twin2((size_t)(N * M2));
  cpu::nf4_matmul_forward(twin.data(), x.data(), q, N);
  cpu::nf4_matmul_forward(twin2.data(), x.data(), q2, N);
  for (int64_t n = 0; n < N; ++n)
    for (int m = 0; m < M; ++m) {
      double t = 0;
      for (int j = 0; j < r; ++j) t += (double)h[n * r + j] * B[(int64_t)m * r + j];
      const int64_t o = n * M + m;
      own[o] = (float)(res[o] + own[o] + sc * t);
      twin[o] = (float)(res[o] + twin[o] + sc * t);
    }
  for (size_t i = 0; i < own2.size(); ++i) {
    const float y0 = __bfloat162float(__float2bfloat16(y20[i]));
    own2[i] = 0.5f * own2[i] + y0;
    twin2[i] = 0.5f * twin2[i] + y0;
  }
  auto xd = dev_bf16(x), Bd = dev_bf16(B), y2d = dev_bf16(y20);
  DevBuf<float> hd = upload(h), resd = upload(res), yd(N * M);
  MIMIC_CUDA_CHECK(cudaMemset(yd.p, 0xff, yd.bytes()));  // poison: every element must be written
  GemvJob js[2] = {gemv_job_nf4(d), gemv_job_nf4(d2)};
  js[0].x = xd.p; js[0].out = yd.p; js[0].out_f32 = true; js[0].res = resd.p;
  js[0].lora_B = Bd.p; js[0].lora_h = hd.p; js[0].r = r; js[0].scale = sc;
  js[1].x = xd.p; js[1].out = y2d.p; js[1].alpha = 0.5f; js[1].beta = 1.f;
  const bool fits = gemv_tc_enabled() && gemv_tc_fits(js[0]) && gemv_tc_fits(js[1]);
  gemv(js, 2, N);
  const std::string tag = "N=" + std::to_string(N) + " " + std::to_string(M) + "x" + std::to_string(K) +
                          (dq ? " double-quant" : " plain") + " r=" + std::to_string(r) + (fits ? "" : " (NOT ROUTED)");
  std::vector<float> g1 = host_f32(yd.p, own.size()), g2 = host_f32(y2d.p, own2.size());
  if (!fits) g1.assign(g1.size(), NAN);
  out.push_back(row("gemv_tc", "fp32 + res + LoRA B vs own maths " + tag, g1, own, 1e-5));
  out.push_back(row("gemv_tc", "fp32 + res + LoRA B vs CPU twin " + tag, g1, twin, kBf16Tol));
  out.push_back(row("gemv_tc", "2nd job bf16, 0.5·xWᵀ + out, " + std::to_string(M2) + " rows, vs own maths " + tag, g2,
                    own2, kBf16Tol / 2));
  out.push_back(row("gemv_tc", "2nd job bf16 vs CPU twin " + tag, g2, twin2, kBf16Tol));
  // gate/up: job 0 = the first weight, job 1 = a second one of the same shape
  auto wu = rnd((int64_t)M * K, 68 + N, 0.05f, false);
  NF4Weight qu = nf4_quantize(wu.data(), M, K, dq);
  NF4Device du = nf4_upload(qu);
  std::vector<float> gu = gemv_tc_ref(q, x, N), uu = gemv_tc_ref(qu, x, N), gt(twin.size()), ut(twin.size());
  cpu::nf4_matmul_forward(gt.data(), x.data(), q, N);
  cpu::nf4_matmul_forward(ut.data(), x.data(), qu, N);
  std::vector<float> wown(gu.size()), wtwin(gu.size());
  for (size_t i = 0; i < gu.size(); ++i) {
    wown[i] = gu[i] / (1.f + std::exp(-gu[i])) * uu[i];
    wtwin[i] = gt[i] / (1.f + std::exp(-gt[i])) * ut[i];
  }
  DevBuf<bf16> act(N * M), scratch(N * M);
  GemvJob jg = gemv_job_nf4(d), ju = gemv_job_nf4(du);
  jg.x = ju.x = xd.p; jg.out = act.p; ju.out = scratch.p;
  gemv_glu(jg, ju, N);
  std::vector<float> ga = host_f32(act.p, wown.size());
  if (!fits) ga.assign(ga.size(), NAN);
  out.push_back(row("gemv_tc", "gate/up + silu(gate)·up vs own maths " + tag, ga, wown, kBf16Tol / 2));
  out.push_back(row("gemv_tc", "gate/up + silu(gate)·up vs CPU twin " + tag, ga, wtwin, kBf16Tol));
}

// GPU quantization vs the CPU oracle, byte for byte (tol 0: the loader must store exactly what
// nf4_quantize stores). Rows of different scales, an all-zero 64-block (bitsandbytes' NaN → code
// 0 path), values on the code midpoints, and a last 256-group of double quantization that is
// only partly filled. The error is the fraction of bytes/values that differ.
void check_nf4_quantize(std::vector<OpCheckRow>& out, int M, int K, bool dq, bool from_bf16) {
  const int64_t n = (int64_t)M * K;
  auto w = rnd(n, 24, 1.f, true);  // bf16-representable, so both input dtypes hold the same values
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < K; ++k) w[(size_t)m * K + k] *= 0.002f * (1 + m % 13);
  for (int i = 0; i < 64; ++i) w[64 + i] = 0.f;  // an all-zero block
  static const float mids[4] = {0.03979014977812767f, -0.33967943489551544f, 0.5016634166240692f, -0.8480964004993439f};
  for (int i = 0; i < 4; ++i) { w[128 + i] = mids[i]; }
  w[128 + 4] = 1.f;  // absmax 1: the midpoints land exactly on the thresholds
  for (auto& x : w) x = __bfloat162float(__float2bfloat16(x));
  NF4Weight q = nf4_quantize(w.data(), M, K, dq);
  NF4Device d;
  if (from_bf16) {
    auto src = dev_bf16(w);
    d = nf4_quantize_device(src.p, DType::BF16, M, K, dq);
  } else {
    auto src = upload(w);
    d = nf4_quantize_device(src.p, DType::F32, M, K, dq);
  }
  Context::get().sync();
  int64_t bad = 0, total = 0;
  auto cmp = [&](const auto& host, const auto& dev) {
    auto got = download(dev.p, dev.n);
    total += (int64_t)host.size();
    if (got.size() != host.size()) { bad += (int64_t)host.size(); return; }
    bad += bits_differ(got.data(), host.data(), host.size());
  };
  cmp(q.packed, d.packed);
  if (dq) {
    cmp(q.absmax_u8, d.absmax_u8);
    cmp(q.absmax2, d.absmax2);
    cmp(q.code2, d.code2);
    total += 1;
    bad += std::memcmp(&q.offset, &d.offset, sizeof(float)) != 0 || !d.double_quant;
  } else {
    cmp(q.absmax, d.absmax);
  }
  OpCheckRow r;
  r.op = "nf4";
  r.check = std::string("quantize on GPU == CPU oracle, bytes (") + (from_bf16 ? "bf16" : "f32") + " in, " +
            (dq ? "double-quant " : "plain ") + std::to_string(M) + "x" + std::to_string(K) + ")";
  r.max_rel_err = total ? (double)bad / (double)total : 1.0;
  r.tol = 0;
  r.pass = bad == 0 && total > 0;
  out.push_back(r);
}

void check_embedding(std::vector<OpCheckRow>& out) {
  const int V = 301, C = 67, N = 29;
  auto table = rnd((int64_t)V * C, 31);
  std::vector<int32_t> ids(N);
  for (int i = 0; i < N; ++i) ids[i] = (i * 97 + 5) % V;
  std::vector<float> want((size_t)N * C);
  cpu::embedding_forward(want.data(), ids.data(), table.data(), N, C);
  auto t = dev_bf16(table);
  auto di = upload(ids);
  DevBuf<float> o((size_t)N * C);
  embedding_forward(o.p, di.p, t.p, N, C);
  out.push_back(row("embedding", "fwd", host_f32(o.p, want.size()), want, 1e-6));
}

void check_rmsnorm(std::vector<OpCheckRow>& out, int64_t N, int C) {
  auto x = rnd(N * C, 41, 2.f, false), w = rnd(C, 42, 1.f, false), dy = rnd(N * C, 43, 1.f, false);
  auto dx0 = rnd(N * C, 44, 1.f, false);
  std::vector<float> y((size_t)(N * C)), rstd((size_t)N), dx = dx0;
  cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
  cpu::rmsnorm_backward(dx.data(), nullptr, dy.data(), x.data(), w.data(), rstd.data(), N, C);
  auto xd = upload(x), wd = upload(w), dyd = upload(dy), dxd = upload(dx0);
  DevBuf<bf16> yd(N * C);
  DevBuf<float> rd(N);
  rmsnorm_forward(yd.p, rd.p, xd.p, wd.p, N, C, 1e-5f);
  rmsnorm_backward(dxd.p, dyd.p, xd.p, wd.p, rd.p, N, C);
  const std::string tag = "N=" + std::to_string(N) + " C=" + std::to_string(C);
  out.push_back(row("rmsnorm", "fwd " + tag, host_f32(yd.p, y.size()), y, kBf16Tol));
  out.push_back(row("rmsnorm", "rstd " + tag, host_f32(rd.p, rstd.size()), rstd, kF32Tol));
  out.push_back(row("rmsnorm", "bwd dx (fp32) " + tag, host_f32(dxd.p, dx.size()), dx, kF32Tol));
}

void check_rope(std::vector<OpCheckRow>& out, int64_t N, int H, int D) {
  RopeParams rp;
  rp.theta = 500000.f; rp.type = "llama3"; rp.factor = 32.f; rp.low_freq_factor = 1.f; rp.high_freq_factor = 4.f;
  rp.original_max_position = 8192;
  auto inv = rope_inv_freq(rp, D);
  auto x = rnd(N * H * D, 51);
  std::vector<int32_t> pos((size_t)N);
  for (int64_t i = 0; i < N; ++i) pos[i] = (int32_t)((i * 7919) % 131072);
  std::vector<float> f = x, b = x;
  cpu::rope_forward(f.data(), pos.data(), inv.data(), N, H, D);
  cpu::rope_backward(b.data(), pos.data(), inv.data(), N, H, D);
  auto xf = dev_bf16(x), xb = dev_bf16(x);
  auto pd = upload(pos);
  auto id = upload(inv);
  rope_forward(xf.p, pd.p, id.p, N, H, D);
  rope_backward(xb.p, pd.p, id.p, N, H, D);
  const std::string tag = "D=" + std::to_string(D) + " pos<131072";
  out.push_back(row("rope", "fwd llama3 " + tag, host_f32(xf.p, f.size()), f, kBf16Tol));
  out.push_back(row("rope", "bwd llama3 " + tag, host_f32(xb.p, b.size()), b, kBf16Tol));
}

void check_attention(std::vector<OpCheckRow>& out, int B, int Tq, int q_offset, int Hq, int Hkv, int D, bool bwd) {
  const int Tk = q_offset + Tq;
  auto q = rnd((int64_t)B * Tq * Hq * D, 61), k = rnd((int64_t)B * Tk * Hkv * D, 62), v = rnd((int64_t)B * Tk * Hkv * D, 63);
  std::vector<float> o(q.size()), lse((size_t)B * Hq * Tq);
  cpu::attention_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), B, Tq, Tk, q_offset, Hq, Hkv, D);
  auto qd = dev_bf16(q), kd = dev_bf16(k), vd = dev_bf16(v);
  DevBuf<bf16> od(o.size());
  DevBuf<float> ld(lse.size());
  attention_forward(od.p, ld.p, qd.p, kd.p, vd.p, B, Tq, Tk, q_offset, Hq, Hkv, D);
  const std::string tag = "B=" + std::to_string(B) + " Tq=" + std::to_string(Tq) + " Tk=" + std::to_string(Tk) +
                          " H=" + std::to_string(Hq) + "/" + std::to_string(Hkv) + " D=" + std::to_string(D);
  auto og = host_f32(od.p, o.size());
  out.push_back(row("attention", "fwd out " + tag, og, o, kBf16Tol));
  out.push_back(row("attention", "fwd lse " + tag, host_f32(ld.p, lse.size()), lse, kF32Tol * 10));
  if (!bwd) return;
  // backward from the CPU's own forward output, rounded to bf16 as the GPU holds it
  std::vector<float> o16 = o;
  for (auto& x : o16) x = __bfloat162float(__float2bfloat16(x));
  auto dout = rnd((int64_t)o.size(), 64);
  std::vector<float> dq(q.size(), 0.f), dk(k.size(), 0.f), dv(v.size(), 0.f);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), o16.data(),
                          lse.data(), B, Tq, Hq, Hkv, D);
  auto o16d = dev_bf16(o16), doutd = dev_bf16(dout);
  auto lsed = upload(lse);
  DevBuf<bf16> dqd(q.size()), dkd(k.size()), dvd(v.size());
  cudaStream_t st = Context::get().stream;
  MIMIC_CUDA_CHECK(cudaMemsetAsync(dqd.p, 0, dqd.bytes(), st));
  MIMIC_CUDA_CHECK(cudaMemsetAsync(dkd.p, 0, dkd.bytes(), st));
  MIMIC_CUDA_CHECK(cudaMemsetAsync(dvd.p, 0, dvd.bytes(), st));
  attention_backward(dqd.p, dkd.p, dvd.p, doutd.p, qd.p, kd.p, vd.p, o16d.p, lsed.p, B, Tq, Hq, Hkv, D);
  out.push_back(row("attention", "bwd dq " + tag, host_f32(dqd.p, dq.size()), dq, kBf16Tol));
  out.push_back(row("attention", "bwd dk " + tag, host_f32(dkd.p, dk.size()), dk, kBf16Tol));
  out.push_back(row("attention", "bwd dv " + tag, host_f32(dvd.p, dv.size()), dv, kBf16Tol));
}

// C = 171: one value a thread; C = 1024: the 16-byte path (8 values a thread), where the backward
// also runs with accumulate = false (the training layer's call) against accumulating onto zeros.
void check_swiglu(std::vector<OpCheckRow>& out, int64_t N, int C) {
  const std::string tag = " N=" + std::to_string(N) + " C=" + std::to_string(C);
  auto g = rnd(N * C, 71, 4.f), u = rnd(N * C, 72, 2.f), dy = rnd(N * C, 73);
  std::vector<float> y((size_t)(N * C)), dg((size_t)(N * C), 0.f), du((size_t)(N * C), 0.f);
  cpu::swiglu_forward(y.data(), g.data(), u.data(), N, C);
  cpu::swiglu_backward(dg.data(), du.data(), dy.data(), g.data(), u.data(), N, C);
  auto gd = dev_bf16(g), ud = dev_bf16(u), dyd = dev_bf16(dy);
  DevBuf<bf16> yd(N * C), dgd(N * C), dud(N * C), dgw(N * C), duw(N * C);
  MIMIC_CUDA_CHECK(cudaMemsetAsync(dgd.p, 0, dgd.bytes(), Context::get().stream));
  MIMIC_CUDA_CHECK(cudaMemsetAsync(dud.p, 0, dud.bytes(), Context::get().stream));
  swiglu_forward(yd.p, gd.p, ud.p, N, C);
  swiglu_backward(dgd.p, dud.p, dyd.p, gd.p, ud.p, N, C);
  out.push_back(row("swiglu", "fwd" + tag, host_f32(yd.p, y.size()), y, kBf16Tol));
  const auto dg_acc = host_f32(dgd.p, dg.size()), du_acc = host_f32(dud.p, du.size());
  out.push_back(row("swiglu", "bwd dgate" + tag, dg_acc, dg, kBf16Tol));
  out.push_back(row("swiglu", "bwd dup" + tag, du_acc, du, kBf16Tol));
  if (C % 8) return;
  swiglu_backward(dgw.p, duw.p, dyd.p, gd.p, ud.p, N, C, /*accumulate=*/false);  // dgw, duw: never zeroed
  out.push_back(row("swiglu", "bwd dgate, written == accumulated onto zeros" + tag, host_f32(dgw.p, dg.size()), dg_acc, 0.0));
  out.push_back(row("swiglu", "bwd dup, written == accumulated onto zeros" + tag, host_f32(duw.p, du.size()), du_acc, 0.0));
}

template <class TL>
void check_ce(std::vector<OpCheckRow>& out, int64_t N, int64_t V, const std::string& tag) {
  const bool b16 = sizeof(TL) == 2;
  auto logits = rnd(N * V, 81, 8.f, b16);
  std::vector<int32_t> tgt((size_t)N);
  for (int64_t i = 0; i < N; ++i) tgt[i] = (i % 5 == 3) ? -100 : (int32_t)((i * 7727) % V);
  const float scale = 1.f / 7.f;
  std::vector<float> dl((size_t)(N * V));
  const double want = cpu::cross_entropy_forward_backward(dl.data(), logits.data(), tgt.data(), N, V, scale);
  DevBuf<TL> ld;
  if constexpr (sizeof(TL) == 2) ld = dev_bf16(logits);
  else ld = upload(logits);
  auto td = upload(tgt);
  DevBuf<double> loss(2);
  MIMIC_CUDA_CHECK(cudaMemsetAsync(loss.p, 0, loss.bytes(), Context::get().stream));
  cross_entropy_forward<TL>(ld.p, td.p, N, V, loss.p + 1);
  cross_entropy_forward_backward<TL>(ld.p, td.p, N, V, scale, loss.p);
  Context::get().sync();
  auto l = download(loss.p, 2);
  const double tol = b16 ? kBf16Tol : kF32Tol;
  out.push_back(row("cross_entropy", "loss " + tag, {(float)l[0]}, {(float)want}, kF32Tol));
  out.push_back(row("cross_entropy", "loss (fwd only) " + tag, {(float)l[1]}, {(float)want}, kF32Tol));
  out.push_back(row("cross_entropy", "dlogits " + tag, host_f32(ld.p, dl.size()), dl, tol));
}

void check_adamw(std::vector<OpCheckRow>& out) {
  const int64_t n = 1001;
  auto p = rnd(n, 91, 1.f, false), g = rnd(n, 92, 1.f, false), m = rnd(n, 93, 0.1f, false), v = rnd(n, 94, 0.1f, false);
  for (auto& x : v) x = std::fabs(x);
  AdamWParams hp;
  hp.lr = 1e-2f; hp.weight_decay = 0.01f;
  auto pd = upload(p), gd = upload(g), md = upload(m), vd = upload(v);
  for (int s = 1; s <= 3; ++s) {
    cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), n, hp, s);
    adamw_step(pd.p, gd.p, md.p, vd.p, n, hp, s);
  }
  out.push_back(row("adamw", "3 steps p", host_f32(pd.p, n), p, kF32Tol));
  out.push_back(row("adamw", "3 steps exp_avg_sq", host_f32(vd.p, n), v, kF32Tol));
}

// A row that passes only when every one of `total` draws agreed (error = the fraction that did not).
OpCheckRow agreement_row(const std::string& op, const std::string& check, int agree, int total) {
  OpCheckRow r;
  r.op = op;
  r.check = check;
  r.max_rel_err = 1.0 - (double)agree / total;
  r.tol = 0;
  r.pass = agree == total;
  return r;
}

void check_sampling(std::vector<OpCheckRow>& out) {
  const int64_t V = 50021;
  int agree = 0, total = 0;
  for (int trial = 0; trial < 24; ++trial) {
    auto logits = rnd(V, 100 + trial, 6.f, false);
    SamplingParams p;
    p.temperature = trial < 8 ? 0.f : 0.8f;
    p.top_k = trial < 16 ? 40 : 0;
    p.top_p = trial % 2 ? 0.9f : 1.f;
    p.repetition_penalty = trial % 3 == 0 ? 1.3f : 1.f;
    std::vector<int32_t> hist = {5, 17, 5, 999, 50000, (int32_t)(trial * 31)};
    Rng r1(trial), r2(trial);
    std::vector<float> c = logits;
    const int32_t want = cpu::sample_token(c.data(), V, p, hist.data(), (int64_t)hist.size(), r1);
    auto d = upload(logits);
    const int32_t got = sample_token(d.p, V, p, hist.data(), (int64_t)hist.size(), r2);
    agree += got == want;
    ++total;
  }
  out.push_back(agreement_row("sampling", "same token as CPU (greedy, top-k 40, top-p .9, penalty 1.3), 24 draws", agree,
                               total));

  // sample_tokens: 37 rows of one batch, every kind mixed (greedy, top-k 40 and 7 side by side,
  // top-k off, penalties with repeated ids, one empty history), 3 rounds — each row's token and
  // rng state must be the CPU twin's for that row alone.
  const int S = 37;
  int same = 0, n = 0;
  for (int round = 0; round < 3; ++round) {
    std::vector<float> all((size_t)S * V);
    std::vector<SamplingParams> ps(S);
    std::vector<std::vector<int32_t>> hs(S);
    std::vector<Rng> rg, rc;
    for (int s = 0; s < S; ++s) {
      auto row = rnd(V, 7000 + 97 * round + s, 6.f, false);
      std::copy(row.begin(), row.end(), all.begin() + (size_t)s * V);
      SamplingParams& p = ps[(size_t)s];
      p.temperature = s % 5 == 0 ? 0.f : 0.7f + 0.05f * (s % 4);
      p.top_k = s % 7 == 3 ? 0 : s % 2 ? 40 : 7;
      p.top_p = s % 3 ? 0.9f : 1.f;
      p.repetition_penalty = s % 4 == 1 ? 1.25f : 1.f;
      if (s != 9) hs[(size_t)s] = {s, 17, s, 999, 50000, (int32_t)(round * 131 + s)};
      rg.emplace_back(round * 100 + s);
      rc.emplace_back(round * 100 + s);
    }
    auto d = upload(all);
    std::vector<SampleRow> rows(S);
    for (int s = 0; s < S; ++s)
      rows[(size_t)s] = SampleRow{&ps[(size_t)s], hs[(size_t)s].data(), (int64_t)hs[(size_t)s].size(), &rg[(size_t)s]};
    std::vector<int32_t> got((size_t)S);
    sample_tokens(d.p, V, S, rows.data(), got.data());
    for (int s = 0; s < S; ++s) {
      std::vector<float> c(all.begin() + (size_t)s * V, all.begin() + (size_t)(s + 1) * V);
      const int32_t want = cpu::sample_token(c.data(), V, ps[(size_t)s], hs[(size_t)s].data(),
                                             (int64_t)hs[(size_t)s].size(), rc[(size_t)s]);
      same += want == got[(size_t)s] && rg[(size_t)s].uniform() == rc[(size_t)s].uniform();
      ++n;
    }
  }
  out.push_back(agreement_row("sampling", "sample_tokens, 37 mixed rows in one call == CPU per row (token + rng), 3 rounds",
                               same, n));
}

// ---- nf4_dequant_fast (nf4_dequant_fast.cu), forced by a direct call whatever MIMIC_NF4_DEQUANT_FAST says:
// bit for bit the legacy kernel (tol 0: mismatching bf16 values counted), vs the CPU dequant at the
// legacy row's tolerance, nothing written past M·K (sentinel), and the shapes it must decline
// declined (an unaligned `out`, a half 64-block) so that nf4_dequantize runs legacy there.
void check_nf4_dequant_fast(std::vector<OpCheckRow>& out, int M, int K, bool dq, int max_blocks) {
  const int64_t n = (int64_t)M * K;
  auto w = rnd(n, 31, 0.05f, false);
  for (int64_t i = 0; i < n; i += 97) w[(size_t)i] *= 40.f;  // a spread of absmax scales
  NF4Weight q = nf4_quantize(w.data(), M, K, dq);
  std::vector<float> deq((size_t)n);
  nf4_dequantize(deq.data(), q);
  NF4Device d = nf4_upload(q);
  DevBuf<bf16> ref((size_t)n), fast((size_t)n + 16);
  MIMIC_CUDA_CHECK(cudaMemsetAsync(fast.p, 0xff, fast.bytes(), Context::get().stream));  // NaN sentinel
  nf4_dequantize_legacy(ref.p, d);
  const bool took = nf4_dequantize_fast(fast.p, d, max_blocks);
  Context::get().sync();
  std::vector<bf16> a = download(ref.p, (size_t)n), b = download(fast.p, (size_t)n + 16);
  const int64_t diff = bits_differ(a.data(), b.data(), (size_t)n);
  int64_t tail = 0;
  for (int64_t i = n; i < n + 16; ++i) {
    uint16_t u;
    std::memcpy(&u, &b[(size_t)i], sizeof u);
    tail += u != 0xffffu;
  }
  const std::string tag = std::string(dq ? "double-quant " : "plain ") + std::to_string(M) + "x" + std::to_string(K) +
                          (max_blocks > 0 ? " grid " + std::to_string(max_blocks) : max_blocks < 0 ? " one tile a block" : "");
  OpCheckRow r;
  r.op = "nf4";
  r.check = "dequant fast == legacy bit for bit (mismatches + bytes past the end) " + tag;
  r.max_rel_err = took ? (double)(diff + tail) : 1e30;
  r.tol = 0;
  r.pass = took && diff == 0 && tail == 0;
  out.push_back(r);
  std::vector<float> bf((size_t)n);
  for (int64_t i = 0; i < n; ++i) bf[(size_t)i] = __bfloat162float(b[(size_t)i]);
  out.push_back(row("nf4", "dequant fast vs CPU " + tag, bf, deq, 4e-3));
  // what the fast kernel must decline (no launch; nf4_dequantize then runs legacy): an output
  // 2 bytes off 16-byte alignment, and M·K/2 not a whole number of 32-byte blocks
  NF4Device half;
  half.M = 1;
  half.K = 32;
  half.double_quant = false;
  half.packed.alloc(16);
  half.absmax.alloc(1);
  const bool declined = !nf4_dequantize_fast(fast.p + 1, d) && !nf4_dequantize_fast(fast.p, half);
  OpCheckRow u;
  u.op = "nf4";
  u.check = "dequant fast declines unaligned out / a half 64-block " + tag;
  u.max_rel_err = declined ? 0 : 1;
  u.tol = 0;
  u.pass = declined;
  out.push_back(u);
}

// Rows written ld apart (the training forward's [x | h'] rows and [W | B] blocks, the backward's
// [dy | dh] rows: llama_cuda.cu's grouped passes) == the dense kernel's rows, bit for bit, and the
// columns past each row untouched (a sentinel): the NF4 dequantize, rmsnorm's forward, swiglu's
// forward and backward. Counts differing values + touched sentinels.
void check_strided_rows(std::vector<OpCheckRow>& out, int64_t N, int C, int pad) {
  const int64_t ld = C + pad;
  const cudaStream_t st = Context::get().stream;
  auto compare = [&](const std::string& what, const bf16* dense, const bf16* strided) {
    Context::get().sync();
    std::vector<bf16> a = download(dense, (size_t)(N * C)), b = download(strided, (size_t)(N * ld));
    int64_t bad = 0;
    for (int64_t n = 0; n < N; ++n) {
      bad += bits_differ(a.data() + n * C, b.data() + n * ld, (size_t)C);
      for (int64_t c = C; c < ld; ++c) {
        uint16_t u;
        std::memcpy(&u, &b[(size_t)(n * ld + c)], sizeof u);
        bad += u != 0xffffu;
      }
    }
    OpCheckRow r;
    r.op = "strided rows";
    r.check = what + " rows " + std::to_string(ld) + " apart == dense, bit for bit (differing + sentinels touched) N=" +
              std::to_string(N) + " C=" + std::to_string(C);
    r.max_rel_err = (double)bad;
    r.tol = 0;
    r.pass = bad == 0;
    out.push_back(r);
  };
  auto sentinel = [&](DevBuf<bf16>& b) { MIMIC_CUDA_CHECK(cudaMemsetAsync(b.p, 0xff, b.bytes(), st)); };
  if (C % 64 == 0) {  // NF4 → bf16, N rows of C (double-quant)
    auto w = rnd(N * C, 61, 0.05f, false);
    NF4Device d = nf4_upload(nf4_quantize(w.data(), (int)N, C, true));
    DevBuf<bf16> dense((size_t)(N * C)), strided((size_t)(N * ld));
    sentinel(strided);
    nf4_dequantize_fast(dense.p, d);
    const bool took = nf4_dequantize_fast(strided.p, d, 0, nullptr, ld);
    if (took) compare("nf4 dequant fast", dense.p, strided.p);
    else out.push_back(OpCheckRow{"strided rows", "nf4 dequant fast took the row stride", 1.0, 0.0, false});
  }
  {  // rmsnorm forward
    auto x = rnd(N * C, 62, 2.f, false), w = rnd(C, 63, 1.f, false);
    auto xd = upload(x), wd = upload(w);
    DevBuf<float> rd(N);
    DevBuf<bf16> dense((size_t)(N * C)), strided((size_t)(N * ld));
    sentinel(strided);
    rmsnorm_forward(dense.p, rd.p, xd.p, wd.p, N, C, 1e-5f);
    rmsnorm_forward(strided.p, rd.p, xd.p, wd.p, N, C, 1e-5f, ld);
    compare("rmsnorm fwd", dense.p, strided.p);
  }
  {  // swiglu forward (out) and backward (dgate, dup)
    auto g = dev_bf16(rnd(N * C, 64, 3.f)), u = dev_bf16(rnd(N * C, 65)), dy = dev_bf16(rnd(N * C, 66));
    DevBuf<bf16> dense((size_t)(N * C)), strided((size_t)(N * ld)), dg((size_t)(N * C)), du((size_t)(N * C)),
        dgs((size_t)(N * ld)), dus((size_t)(N * ld));
    sentinel(strided); sentinel(dgs); sentinel(dus);
    swiglu_forward(dense.p, g.p, u.p, N, C);
    swiglu_forward(strided.p, g.p, u.p, N, C, ld);
    compare("swiglu fwd", dense.p, strided.p);
    swiglu_backward(dg.p, du.p, dy.p, g.p, u.p, N, C, false);
    swiglu_backward(dgs.p, dus.p, dy.p, g.p, u.p, N, C, false, ld);
    compare("swiglu bwd dgate", dg.p, dgs.p);
    compare("swiglu bwd dup", du.p, dus.p);
  }
}

}  // namespace

std::vector<OpCheckRow> cuda_op_checks() {
  std::vector<OpCheckRow> out;
  check_matmul(out, 37, 129, 67, "37x129x67");
  check_matmul(out, 1, 3072, 1031, "decode 1x3072x1031");
  check_nf4(out, 96, 192, false);
  check_nf4(out, 160, 320, true);
  check_nf4_gemm_small(out, 1, 64, 128, true);
  check_nf4_gemm_small(out, 5, 48, 256, false);
  check_nf4_gemm_small(out, 8, 1024, 3072, true);
  check_nf4_gemm_small(out, 13, 3072, 3072, true);
  check_nf4_gemm_small(out, 32, 8192, 3072, true);
  check_nf4_gemm_small(out, 32, 3072, 8192, true);
  check_nf4_gemm_small(out, 40, 1024, 3072, false);
  check_nf4_gemm_small(out, 64, 3072, 3072, true);
  check_gemv_nf4(out, 37, 192, 1, true);
  check_gemv_nf4(out, 37, 192, 3, true);
  check_gemv_nf4(out, 37, 192, 16, true);
  check_gemv_nf4(out, 1031, 3072, 1, true);
  check_gemv_nf4(out, 64, 101, 3, false);
  check_gemv_nf4(out, 64, 101, 16, true);
  check_gemv_jobs(out, 1);
  check_gemv_rows(out, 20003, 3072);  // ~2,500 row groups: more than one wave's blocks
  check_gemv_rows(out, 61, 200);
  check_gemv_jobs(out, 7);
  check_gemv_glu(out, 1);
  check_gemv_glu(out, 5);
  check_gemv_tc(out, 48, 32, 192, 1, true);      // 3 blocks a row: warps with no block at all
  check_gemv_tc(out, 48, 32, 192, 3, false);
  check_gemv_tc(out, 3072, 1024, 3072, 1, true, 16); // the 3B's q/k shapes
  check_gemv_tc(out, 1024, 3072, 3072, 8, true, 8);
  check_gemv_tc(out, 3072, 16, 8192, 1, true, 16);   // down: K = 8192
  check_gemv_tc(out, 8192, 16, 3072, 1, true, 16);   // the 3B's gate/up: more tiles than blocks fit, two a block
  check_gemv_tc(out, 256, 64, 512, 13, true, 8);     // two n-tiles
  check_gemv_tc(out, 64, 48, 256, 16, false);
  check_nf4_quantize(out, 96, 200, true, true);      // 300 blocks: the second 256-group is partial
  check_nf4_quantize(out, 1031, 64, true, false);
  check_nf4_quantize(out, 37, 128, false, true);
  check_nf4_dequant_fast(out, 1, 64, true, 0);        // one 64-block: 8 words, a partial tile
  check_nf4_dequant_fast(out, 64, 101, true, 0);      // K = 101: 101 blocks, partial absmax2 group
  check_nf4_dequant_fast(out, 96, 200, true, 0);      // 300 blocks: the second tile/group is partial
  check_nf4_dequant_fast(out, 37, 128, false, 0);     // plain absmax
  check_nf4_dequant_fast(out, 1031, 3072, true, 3);   // 194 tiles over 3 blocks: the grid-stride loop
  check_nf4_dequant_fast(out, 1031, 3072, true, 0);   // the default grid
  check_nf4_dequant_fast(out, 1031, 3072, true, -1);  // one tile a block (dequant_ahead.cu's side stream)
  check_embedding(out);
  check_rmsnorm(out, 33, 3072);
  check_rmsnorm(out, 1, 67);
  check_rmsnorm(out, 3, 5000);     // past 256 × 16 values a row: the two-pass kernel
  check_strided_rows(out, 40, 3072, 48);   // the 3B's q/k/v group: 3 × r = 16 columns of h'
  check_strided_rows(out, 9, 5000, 8);     // rmsnorm's two-pass kernel (no NF4 row: C % 64 != 0)
  check_strided_rows(out, 7, 44, 4);       // C, ld not multiples of 8: the scalar swiglu kernels (no NF4 row)
  check_rope(out, 29, 3, 128);
  check_rope(out, 5, 2, 16);
  check_rope(out, 7, 24, 128);     // the 3B's q: 24 heads over 4 groups, four at a time
  check_attention(out, 2, 77, 0, 6, 2, 128, true);
  check_attention(out, 3, 45, 0, 4, 2, 16, true);
  check_attention(out, 1, 1, 40, 6, 2, 128, false);   // decode: one query against a 41-token cache
  check_attention(out, 1, 3, 17, 4, 2, 16, false);    // a short chunk appended to a cache
  {  // the tensor-core kernels (attention_tc.cu), forced on whatever MIMIC_ATTN_TC says
    const size_t first = out.size();
    attention_tc_override(1);
    check_attention(out, 2, 77, 0, 6, 2, 128, true);   // GQA 3:1, T not a multiple of 64
    check_attention(out, 1, 512, 0, 8, 2, 128, true);  // GQA 4:1, the training length
    check_attention(out, 2, 77, 0, 8, 2, 64, true);    // D = 64
    check_attention(out, 1, 100, 60, 6, 2, 128, false);  // prefill chunk after a 60-token cache
    check_attention(out, 1, 1, 40, 6, 2, 128, false);    // decode: one query against a 41-token cache
    attention_tc_override(-1);
    for (size_t i = first; i < out.size(); ++i) out[i].op = "attention_tc";
  }
  check_swiglu(out, 37, 171);
  check_swiglu(out, 16, 1024);
  check_ce<float>(out, 23, 1531, "fp32 V=1531");
  check_ce<bf16>(out, 23, 1531, "bf16 V=1531");
  check_ce<bf16>(out, 3, 128256, "bf16 V=128256");
  check_adamw(out);
  check_sampling(out);
  for (auto& r : out) r.op = "cuda." + r.op;
  return out;
}

}  // namespace mimic::cuda
