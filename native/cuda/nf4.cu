// nf4 — the CUDA twin of ops/nf4.h: bitsandbytes NF4 weights stay 4-bit on the GPU; a GEMM
// dequantizes ONE projection into a bf16 scratch [M, K] and hands it to cuBLAS.
//
//   w[i] = NF4_CODE[nibble_i] · absmax_{i/64}          (first element of a byte in the HIGH nibble)
//   double quantization: absmax_b = code2[absmax_u8[b]] · absmax2[b/256] + offset
//   nf4_matmul_forward       : out = α · x · dequant(W)ᵀ + β · out
//   nf4_matmul_backward_input: dx  = α · dout · dequant(W) + β · dx
// The scratch is reused projection after projection, so the model is never dequantized whole.
// (A fused NF4 GEMV for decode, reading 4-bit weights once, is the speed issue's work.)
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {

__constant__ float c_nf4[16];

// Each thread: 8 packed bytes → 16 bf16 values (two 16-byte stores).
__global__ void dequant_kernel(bf16* __restrict__ out, const uint8_t* __restrict__ packed,
                               const float* __restrict__ absmax, const uint8_t* __restrict__ am_u8,
                               const float* __restrict__ absmax2, const float* __restrict__ code2, float offset,
                               int64_t n_bytes) {
  int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t b0 = t * 8;
  if (b0 >= n_bytes) return;
  const int64_t blk = (b0 * 2) / 64;  // 8 bytes = 16 values never straddle a 64-block
  float am = absmax ? absmax[blk] : code2[am_u8[blk]] * absmax2[blk / 256] + offset;
  if (b0 + 8 <= n_bytes) {
    uint2 raw = *reinterpret_cast<const uint2*>(packed + b0);
    uint32_t words[2] = {raw.x, raw.y};
    __align__(16) bf16 v[16];
#pragma unroll
    for (int w = 0; w < 2; ++w)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t byte = (words[w] >> (8 * j)) & 0xffu;
        v[w * 8 + j * 2] = __float2bfloat16(c_nf4[byte >> 4] * am);
        v[w * 8 + j * 2 + 1] = __float2bfloat16(c_nf4[byte & 15] * am);
      }
    uint4* o = reinterpret_cast<uint4*>(out + b0 * 2);
    o[0] = reinterpret_cast<uint4*>(v)[0];
    o[1] = reinterpret_cast<uint4*>(v)[1];
  } else {
    for (int64_t b = b0; b < n_bytes; ++b) {
      uint8_t byte = packed[b];
      float a = absmax ? absmax[(b * 2) / 64] : code2[am_u8[(b * 2) / 64]] * absmax2[(b * 2) / 64 / 256] + offset;
      out[b * 2] = __float2bfloat16(c_nf4[byte >> 4] * a);
      out[b * 2 + 1] = __float2bfloat16(c_nf4[byte & 15] * a);
    }
  }
}

void ensure_code() {
  static bool done = false;
  if (done) return;
  MIMIC_CUDA_CHECK(cudaMemcpyToSymbol(c_nf4, mimic::NF4_CODE, sizeof(float) * 16));
  done = true;
}

}  // namespace

NF4Device nf4_upload(const mimic::NF4Weight& w) {
  MIMIC_CHECK((int64_t)w.M * w.K % 64 == 0, "ESHAPE", "NF4 weight ", w.M, "x", w.K, " is not a whole number of 64-blocks");
  ensure_code();
  NF4Device d;
  d.M = w.M;
  d.K = w.K;
  d.packed = upload(w.packed);
  d.double_quant = w.double_quant && !w.absmax_u8.empty();
  if (d.double_quant) {
    d.absmax_u8 = upload(w.absmax_u8);
    d.absmax2 = upload(w.absmax2);
    d.code2 = upload(w.code2);
    d.offset = w.offset;
  } else {
    d.absmax = upload(w.absmax);
  }
  return d;
}

void nf4_dequantize(bf16* out, const NF4Device& W) {
  ensure_code();
  const int64_t n_bytes = (int64_t)W.M * W.K / 2;
  const int threads = 256;
  dequant_kernel<<<blocks_for((n_bytes + 7) / 8, threads), threads, 0, Context::get().stream>>>(
      out, W.packed.p, W.double_quant ? nullptr : W.absmax.p, W.absmax_u8.p, W.absmax2.p, W.code2.p, W.offset, n_bytes);
  MIMIC_CUDA_LAUNCHED();
}

template <class TO>
void nf4_matmul_forward(TO* out, const bf16* x, const NF4Device& W, int64_t N, bf16* scratch, float alpha, float beta) {
  nf4_dequantize(scratch, W);
  matmul_forward<TO>(out, x, scratch, N, W.K, W.M, alpha, beta);
}
template <class TO>
void nf4_matmul_backward_input(TO* dx, const bf16* dout, const NF4Device& W, int64_t N, bf16* scratch, float alpha,
                               float beta) {
  nf4_dequantize(scratch, W);
  matmul_backward_input<TO>(dx, dout, scratch, N, W.K, W.M, alpha, beta);
}

template void nf4_matmul_forward<bf16>(bf16*, const bf16*, const NF4Device&, int64_t, bf16*, float, float);
template void nf4_matmul_forward<float>(float*, const bf16*, const NF4Device&, int64_t, bf16*, float, float);
template void nf4_matmul_backward_input<bf16>(bf16*, const bf16*, const NF4Device&, int64_t, bf16*, float, float);
template void nf4_matmul_backward_input<float>(float*, const bf16*, const NF4Device&, int64_t, bf16*, float, float);

}  // namespace mimic::cuda
