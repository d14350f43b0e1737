// matmul — the CUDA twin of ops/matmul.h: y = x · Wᵀ through cuBLAS, bf16 operands, fp32 accumulation.
//
//   forward        : out[N, M] = α · x[N, K] · W[M, K]ᵀ + β · out
//   backward_input : dx[N, K]  = α · dout[N, M] · W[M, K] + β · dx
//   backward_weight: dW[M, K]  = α · dout[N, M]ᵀ · x[N, K] + β · dW        (dW fp32)
// Row-major X[r, c] is column-major Xᵀ, so each product is issued as its transpose:
//   outᵀ[M, N] = W · xᵀ  → gemm(T, N, M, N, K, W, ld K, x, ld K, out, ld M)
//   dxᵀ[K, N]  = Wᵀ · doutᵀ → gemm(N, N, K, N, M, W, ld K, dout, ld M, dx, ld K)
//   dWᵀ[K, M]  = xᵀ · dout → gemm(N, T, K, M, N, x, ld K, dout, ld M, dW, ld K)
// The _ld forms take the row strides of strided operands (column blocks of a wider buffer: the
// training backward's grouped products, llama_cuda.cu).
// Output type bf16 or fp32 (cublasGemmEx with CUBLAS_COMPUTE_32F); no bias (Llama has none).
#include <cublas_v2.h>

#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {

const char* blas_err(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "arch mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "internal error";
  }
}

template <class T> constexpr cudaDataType_t dtype();
template <> constexpr cudaDataType_t dtype<bf16>() { return CUDA_R_16BF; }
template <> constexpr cudaDataType_t dtype<float>() { return CUDA_R_32F; }

template <class TO>
void gemm(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, float alpha, const bf16* A,
          int64_t lda, const bf16* B, int64_t ldb, float beta, TO* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  MIMIC_CHECK(m < (1ll << 31) && n < (1ll << 31) && k < (1ll << 31), "ESHAPE", "matmul dimension too large");
  auto h = (cublasHandle_t)Context::get().blas;
  cublasStatus_t s = cublasGemmEx(h, ta, tb, (int)m, (int)n, (int)k, &alpha, A, CUDA_R_16BF, (int)lda, B, CUDA_R_16BF,
                                  (int)ldb, &beta, C, dtype<TO>(), (int)ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (s == CUBLAS_STATUS_ALLOC_FAILED) ::mimic::fail("EOOM", kOomAdvice, " (cuBLAS)");
  MIMIC_CHECK(s == CUBLAS_STATUS_SUCCESS, "ECUDA", "cuBLAS GEMM failed (", blas_err(s), ") for m=", m, " n=", n,
              " k=", k);
}

}  // namespace

template <class TO>
void matmul_forward(TO* out, const bf16* x, const bf16* W, int64_t N, int K, int M, float alpha, float beta) {
  gemm<TO>(CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, alpha, W, K, x, K, beta, out, M);
}
template <class TO>
void matmul_backward_input(TO* dx, const bf16* dout, const bf16* W, int64_t N, int K, int M, float alpha, float beta) {
  matmul_backward_input_ld<TO>(dx, K, dout, M, W, K, N, K, M, alpha, beta);
}
void matmul_backward_weight(float* dW, const bf16* dout, const bf16* x, int64_t N, int K, int M, float alpha,
                            float beta) {
  matmul_backward_weight_ld(dW, dout, M, x, K, N, K, M, alpha, beta);
}
template <class TO>
void matmul_forward_ld(TO* out, int64_t ld_out, const bf16* x, int64_t ld_x, const bf16* W, int64_t ld_w, int64_t N, int K,
                       int M, float alpha, float beta) {
  gemm<TO>(CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, alpha, W, ld_w, x, ld_x, beta, out, ld_out);
}
template <class TO>
void matmul_backward_input_ld(TO* dx, int64_t ld_dx, const bf16* dout, int64_t ld_dout, const bf16* W, int64_t ld_w,
                              int64_t N, int K, int M, float alpha, float beta) {
  gemm<TO>(CUBLAS_OP_N, CUBLAS_OP_N, K, N, M, alpha, W, ld_w, dout, ld_dout, beta, dx, ld_dx);
}
void matmul_backward_weight_ld(float* dW, const bf16* dout, int64_t ld_dout, const bf16* x, int64_t ld_x, int64_t N,
                               int K, int M, float alpha, float beta) {
  gemm<float>(CUBLAS_OP_N, CUBLAS_OP_T, K, M, N, alpha, x, ld_x, dout, ld_dout, beta, dW, K);
}

template void matmul_forward<bf16>(bf16*, const bf16*, const bf16*, int64_t, int, int, float, float);
template void matmul_forward<float>(float*, const bf16*, const bf16*, int64_t, int, int, float, float);
template void matmul_backward_input<bf16>(bf16*, const bf16*, const bf16*, int64_t, int, int, float, float);
template void matmul_backward_input<float>(float*, const bf16*, const bf16*, int64_t, int, int, float, float);
template void matmul_forward_ld<bf16>(bf16*, int64_t, const bf16*, int64_t, const bf16*, int64_t, int64_t, int, int, float,
                                      float);
template void matmul_backward_input_ld<bf16>(bf16*, int64_t, const bf16*, int64_t, const bf16*, int64_t, int64_t, int, int,
                                             float, float);
template void matmul_backward_input_ld<float>(float*, int64_t, const bf16*, int64_t, const bf16*, int64_t, int64_t, int,
                                              int, float, float);

}  // namespace mimic::cuda
