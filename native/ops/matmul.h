// matmul — dense linear layer, y = x · Wᵀ (+ bias), Hugging Face weight layout W[M, K].
//
//   forward : out[N, M]  = x[N, K] · W[M, K]ᵀ            (+ bias[M] when bias != nullptr)
//   backward: dx[N, K]  += dout[N, M] · W[M, K]
//             dW[M, K]  += dout[N, M]ᵀ · x[N, K]
// The base model's weights are frozen, so the engine asks for dW only for LoRA's A and B.
#pragma once
#include <cstdint>

namespace mimic::cpu {
void matmul_forward(float* out, const float* x, const float* W, const float* bias, int64_t N, int K, int M);
void matmul_backward(float* dx, float* dW, const float* dout, const float* x, const float* W,
                     int64_t N, int K, int M);
}  // namespace mimic::cpu
