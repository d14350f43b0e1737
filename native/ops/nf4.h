// nf4 — 4-bit NormalFloat weights exactly as bitsandbytes stores them (quant_type="nf4").
//
// A weight W[M, K] is flattened row-major and cut into blocks of 64 values. Each block keeps
// absmax_b = max |w| and each value the index of the nearest of the 16 NF4 code values
// (NF4_CODE below) to w / absmax_b. Two codes per byte, the FIRST element in the HIGH nibble.
//   dequant: w = NF4_CODE[code] · absmax_b
// Double quantization (compress_statistics=True): absmax (fp32, one per block) has its mean
// subtracted (offset), then is quantized to 8 bits with bitsandbytes' dynamic code (256 values,
// code2) in blocks of 256 with an fp32 absmax2 per block:  absmax_b = code2[u8_b] · absmax2_{b/256} + offset.
//   nf4_matmul: out[N, M] = x[N, K] · dequant(W)ᵀ;  backward dx += dout · dequant(W)
// Ties and rounding follow bitsandbytes (nearest code by the midpoints between code values).
#pragma once
#include <cstdint>
#include <vector>

namespace mimic {
extern const float NF4_CODE[16];

struct NF4Weight {
  int M = 0, K = 0;                 // logical shape W[M, K]
  std::vector<uint8_t> packed;      // M·K/2 bytes
  std::vector<float> absmax;        // one per 64-block (dequantized, even when double-quantized)
  // double quantization (present only when double_quant):
  bool double_quant = false;
  std::vector<uint8_t> absmax_u8;   // one per 64-block
  std::vector<float> absmax2;       // one per 256 blocks
  std::vector<float> code2;         // 256 values
  float offset = 0.f;
};

NF4Weight nf4_quantize(const float* w, int M, int K, bool double_quant);
void nf4_dequantize(float* out, const NF4Weight& q);
}  // namespace mimic

namespace mimic::cpu {
void nf4_matmul_forward(float* out, const float* x, const mimic::NF4Weight& W, int64_t N);
void nf4_matmul_backward_input(float* dx, const float* dout, const mimic::NF4Weight& W, int64_t N);
}  // namespace mimic::cpu
