// cuda_ops.h — the CUDA twins of every op in native/ops/ (bf16 storage, fp32 accumulation).
//
// The maths, shapes and conventions of each op are in its native/ops/<op>.h header and at the
// top of native/cuda/<op>.cu; this file only declares the device-side signatures. (They live
// here rather than in native/ops/*.h because they use device types — bf16, NF4Device, DevBuf —
// that the CPU-only build must not need; native/ops/README.md.)
//
// Precision plan, shared by the engine:
//   - weights, activations between ops, logits for training: bf16;
//   - the residual stream and its gradient, RMSNorm statistics, the log-sum-exp, LoRA
//     parameters, their gradients and AdamW state: fp32;
//   - every reduction and GEMM accumulates in fp32.
// All calls are asynchronous on Context::get().stream unless they return a host value.
// Backward ops accumulate (+=) into their gradient outputs, as on the CPU.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/safetensors.h"
#include "cuda/buffer.h"
#include "ops/adamw.h"
#include "ops/nf4.h"
#include "ops/rope.h"
#include "ops/sampling.h"

namespace mimic::cuda {

// One stream and one cuBLAS handle for the process (device 0), created on first use.
struct Context {
  cudaStream_t stream = nullptr;
  void* blas = nullptr;       // cublasHandle_t
  void* blas_ws = nullptr;    // cuBLAS workspace
  int sm_count = 0;
  size_t total_mem = 0;
  char name[256] = {0};
  static Context& get();
  void sync();                // cudaStreamSynchronize, errors translated
};

// True when a CUDA device is present and usable (never throws).
bool available();
// Current/peak bytes of device memory this process allocated through DevBuf-backed pools,
// as seen by cudaMemGetInfo (total − free), for reports.
size_t device_memory_used();

// ---- matmul (native/cuda/matmul.cu): cuBLAS bf16 GEMMs with fp32 accumulation ---------------
// out[N, M] = alpha · x[N, K] · W[M, K]ᵀ + beta · out                 (TO: bf16 or float)
template <class TO>
void matmul_forward(TO* out, const bf16* x, const bf16* W, int64_t N, int K, int M, float alpha = 1.f,
                    float beta = 0.f);
// dx[N, K] = alpha · dout[N, M] · W[M, K] + beta · dx                 (beta = 1: accumulate)
template <class TO>
void matmul_backward_input(TO* dx, const bf16* dout, const bf16* W, int64_t N, int K, int M, float alpha = 1.f,
                           float beta = 1.f);
// dW[M, K] = alpha · dout[N, M]ᵀ · x[N, K] + beta · dW               (fp32 gradient)
void matmul_backward_weight(float* dW, const bf16* dout, const bf16* x, int64_t N, int K, int M, float alpha = 1.f,
                            float beta = 1.f);
// The same with row strides (elements) for operands that are column blocks of wider buffers:
// out[N, M] (ld_out) = alpha · x[N, K] (ld_x) · W[M, K] (ld_w)ᵀ + beta · out
template <class TO>
void matmul_forward_ld(TO* out, int64_t ld_out, const bf16* x, int64_t ld_x, const bf16* W, int64_t ld_w, int64_t N, int K,
                       int M, float alpha, float beta);
// dx[N, K] (ld_dx) = alpha · dout[N, M] (ld_dout) · W[M, K] (ld_w) + beta · dx
template <class TO>
void matmul_backward_input_ld(TO* dx, int64_t ld_dx, const bf16* dout, int64_t ld_dout, const bf16* W, int64_t ld_w,
                              int64_t N, int K, int M, float alpha, float beta);
// dW[M, K] (ld K) = alpha · dout[N, M] (ld_dout)ᵀ · x[N, K] (ld_x) + beta · dW
void matmul_backward_weight_ld(float* dW, const bf16* dout, int64_t ld_dout, const bf16* x, int64_t ld_x, int64_t N,
                               int K, int M, float alpha, float beta);

// ---- nf4 (native/cuda/nf4.cu) --------------------------------------------------------------
// A bitsandbytes NF4 weight resident on the GPU (4 bits a value + its block statistics).
struct NF4Device {
  int M = 0, K = 0;
  DevBuf<uint8_t> packed;      // M·K/2
  DevBuf<float> absmax;        // one per 64-block (plain) — empty when double-quantized
  bool double_quant = false;
  DevBuf<uint8_t> absmax_u8;   // one per 64-block
  DevBuf<float> absmax2;       // one per 256 blocks
  DevBuf<float> code2;         // 256
  float offset = 0.f;
  size_t bytes() const { return packed.bytes() + absmax.bytes() + absmax_u8.bytes() + absmax2.bytes() + code2.bytes(); }
};
NF4Device nf4_upload(const mimic::NF4Weight& w);
// Quantizes W[M, K] (device memory, `src` values of `dtype`: F32, BF16 or F16) on the GPU into
// exactly the bytes the CPU oracle nf4_quantize (native/core/nf4.cpp) writes: packed codes,
// absmax (fp32, plain) or absmax_u8 + absmax2 + code2 + offset (double quantization). Same fp32
// operations in the same order (IEEE reciprocal, a multiply, the midpoint tree, strict ">").
// M·K must be a multiple of 64. Synchronizes once (the double-quant offset comes back to the host).
NF4Device nf4_quantize_device(const void* src, mimic::DType dtype, int M, int K, bool double_quant);
// out[M, K] = dequant(W) in bf16 (one projection at a time, into the caller's scratch).
void nf4_dequantize(bf16* out, const NF4Device& W);
// out[N, M] = alpha · x · dequant(W)ᵀ + beta · out;  scratch holds ≥ M·K bf16.
template <class TO>
void nf4_matmul_forward(TO* out, const bf16* x, const NF4Device& W, int64_t N, bf16* scratch, float alpha = 1.f,
                        float beta = 0.f);
// dx[N, K] = alpha · dout · dequant(W) + beta · dx
template <class TO>
void nf4_matmul_backward_input(TO* dx, const bf16* dout, const NF4Device& W, int64_t N, bf16* scratch,
                               float alpha = 1.f, float beta = 1.f);

// ---- gemv (native/cuda/gemv.cu): fused small-N products for decode, weights read once -----
// out[n, m] = res[n, m] + alpha·(Σ_k x[n, k]·W[m, k] + scale·Σ_j h[n, j]·B[m, j]) + beta·out[n, m]
// W NF4 (packed != null; dequantized in registers) or bf16 (W != null). Up to kGemvMaxJobs
// independent products in one launch (q/k/v, gate/up, LoRA A's), N <= kGemvMaxN rows each.
struct GemvJob {
  const uint8_t* packed = nullptr;  // NF4 weight (cuda_ops.h NF4Device layout)
  const float* absmax = nullptr;    //   plain absmax, or null when double-quantized:
  const uint8_t* am_u8 = nullptr;   //   absmax_b = code2[am_u8[b]]·absmax2[b/256] + offset
  const float* absmax2 = nullptr;
  const float* code2 = nullptr;
  float offset = 0.f;
  const bf16* W = nullptr;          // bf16 weight [M, K] (when packed is null)
  int M = 0, K = 0;
  const bf16* x = nullptr;          // [N, K]
  void* out = nullptr;              // [N, M], bf16 or fp32 (out_f32)
  bool out_f32 = false;
  const float* res = nullptr;       // fp32 [N, M] added to the result (residual), or null
  float alpha = 1.f, beta = 0.f;    // beta == 0: out is not read
  const bf16* lora_B = nullptr;     // LoRA B [M, r] (bf16), h = x·Aᵀ fp32 [N, r]
  const float* lora_h = nullptr;
  const bf16* lora_A = nullptr;     // LoRA A [r, K] (bf16): gemv_tc_lora_in computes h itself (nothing else reads it)
  int r = 0;
  float scale = 0.f;
  bool fast = false;                // set by gemv(): 16-byte path usable
};
constexpr int kGemvMaxJobs = 4, kGemvMaxN = 16;
void gemv(const GemvJob* jobs, int n_jobs, int64_t N);
// out(gate.out, bf16) = silu(gate)·up with gate and up two products of one shape and input (the
// MLP of decode in one launch: each warp computes a row of both). up.out is not written.
void gemv_glu(const GemvJob& gate, const GemvJob& up, int64_t N);
GemvJob gemv_job_nf4(const NF4Device& W);   // the weight fields of a job
// Rows [m0, m0 + rows) of a job of ONE row of x (N = 1: out and res are [M] vectors): its weight's
// codes and scales, out, res and LoRA B from row m0 on. False (out untouched) where the rows do not
// start on a scale block (64 weights; 256 blocks where the absmax is double-quantized) or fall outside.
bool gemv_job_rows(GemvJob& out, const GemvJob& J, int m0, int rows);
// False when the environment sets MIMIC_NF4_GEMV=0 (then NF4 products dequantize + cuBLAS, as before).
bool gemv_enabled();

// ---- nf4_gemm_small (native/cuda/nf4_gemm_small.cu): y[S, M] = β·y + α · x[S, K] · dequant(W)ᵀ ------
// for S <= kNF4GemmSmallMaxS rows on the tensor cores, the 4-bit weight read once and dequantized in
// registers (bit for bit nf4_dequantize's bf16 values). Needs M % 16 == 0, K % 128 == 0, 16-byte
// aligned x and codes, and a workspace of nf4_gemm_small_workspace(S, M, K) bytes; returns false
// (nothing launched) otherwise, and the caller dequantizes + multiplies instead. Deterministic.
// Used by the batched decode step's GEMM route and nf4_matmul_forward for 17..64 rows, unless
// MIMIC_NF4_GEMM_SMALL=0 (read once: dequantize + cuBLAS instead, round 7's path).
constexpr int kNF4GemmSmallMaxS = 64;
bool nf4_gemm_small_enabled();
size_t nf4_gemm_small_workspace(int S, int M, int K);
template <class TO>
bool nf4_gemm_small(TO* y, const bf16* x, const NF4Device& W, int S, float alpha, float beta, float* workspace,
                    size_t workspace_bytes);

// ---- embedding (native/cuda/embedding.cu) ---------------------------------------------------
// out[n, :] = table[ids[n], :]  (fp32 residual stream from a bf16 table)
void embedding_forward(float* out, const int32_t* ids, const bf16* table, int64_t N, int C);

// ---- rmsnorm (native/cuda/rmsnorm.cu) -------------------------------------------------------
void rmsnorm_forward(bf16* out, float* rstd, const float* x, const float* w, int64_t N, int C, float eps,
                     int64_t ld_out = 0);  // ld_out: out's row stride (0: C)
// dx[N, C] += ∂/∂x given dout (fp32); the norm weight is frozen (no dw).
void rmsnorm_backward(float* dx, const float* dout, const float* x, const float* w, const float* rstd, int64_t N,
                      int C);

// ---- rope (native/cuda/rope.cu), in place on bf16 [N, H, D] -----------------------------------
void rope_forward(bf16* x, const int32_t* pos, const float* inv_freq, int64_t N, int H, int D);
void rope_backward(bf16* dx, const int32_t* pos, const float* inv_freq, int64_t N, int H, int D);

// ---- attention (native/cuda/attention.cu) ---------------------------------------------------
// Shapes as ops/attention.h; q/k/v/out bf16, lse fp32 (may be null). D in {16, 32, 64, 128}.
void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int Tq, int Tk,
                       int q_offset, int Hq, int Hkv, int D);
// dq, dk, dv += (bf16); training shapes (q_offset = 0, Tq = Tk = T).
void attention_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                        const bf16* out, const float* lse, int B, int T, int Hq, int Hkv, int D);

// ---- swiglu (native/cuda/swiglu.cu) ---------------------------------------------------------
void swiglu_forward(bf16* out, const bf16* gate, const bf16* up, int64_t N, int C, int64_t ld_out = 0);  // (0: C)
// accumulate = false: the gradients are written, not added (swiglu.cu)
void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up, int64_t N, int C,
                     bool accumulate = true, int64_t ld_d = 0);  // ld_d: dgate/dup row stride (0: C)

// ---- cross_entropy (native/cuda/cross_entropy.cu) -------------------------------------------
// Adds Σ over unmasked rows of the loss to *loss_sum (device double). The _backward variant also
// overwrites logits with scale · (softmax − onehot) (0 for masked rows). TL: bf16 or float.
template <class TL>
void cross_entropy_forward(const TL* logits, const int32_t* target, int64_t N, int64_t V, double* loss_sum);
template <class TL>
void cross_entropy_forward_backward(TL* logits, const int32_t* target, int64_t N, int64_t V, float scale,
                                    double* loss_sum);

// ---- adamw (native/cuda/adamw.cu), fp32 flat buffers ----------------------------------------
void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const mimic::AdamWParams& hp, int step);
// *out (device double) += Σ g²
void sum_squares(const float* g, int64_t n, double* out);
void scale_inplace(float* x, int64_t n, float s);
// dst[i] = bf16(src[i])
void to_bf16(bf16* dst, const float* src, int64_t n);
void add_inplace(float* x, const bf16* y, int64_t n);   // x += y (residual adds)

// ---- sampling (native/cuda/sampling.cu) -----------------------------------------------------
// Same processors, order and tie rules as cpu::sample_token; logits[V] fp32 on the device, modified
// in place. Draws exactly one rng.uniform() when sampling (none when greedy), as the CPU twin.
int32_t sample_token(float* logits, int64_t V, const mimic::SamplingParams& p, const int32_t* history,
                     int64_t n_history, mimic::Rng& rng);
// S rows of one batch: logits [S, V] (row s = logits + s·V) with their own parameters, histories
// and rngs; out[s] is exactly what sample_token gives row s alone, in a fixed number of launches.
struct SampleRow {
  const mimic::SamplingParams* params;
  const int32_t* history;
  int64_t n_history;
  mimic::Rng* rng;
};
void sample_tokens(float* logits, int64_t V, int S, const SampleRow* rows, int32_t* out);

}  // namespace mimic::cuda
