// nf4 — the CUDA twin of ops/nf4.h: bitsandbytes NF4 weights stay 4-bit on the GPU; a GEMM
// dequantizes ONE projection into a bf16 scratch [M, K] and hands it to cuBLAS.
//
//   w[i] = NF4_CODE[nibble_i] · absmax_{i/64}          (first element of a byte in the HIGH nibble)
//   double quantization: absmax_b = code2[absmax_u8[b]] · absmax2[b/256] + offset
//   nf4_quantize_device      : W (fp32/bf16/f16 on the GPU) → the layout above, bit for bit as the
//                              CPU oracle (native/core/nf4.cpp), so loading skips the CPU quantizer
//   nf4_matmul_forward       : out = α · x · dequant(W)ᵀ + β · out
//   nf4_matmul_backward_input: dx  = α · dout · dequant(W) + β · dx
// The scratch is reused projection after projection, so the model is never dequantized whole.
// N <= kGemvMaxN (decode) skips the scratch: gemv.cu / gemv_tc.cu read the 4-bit weight once and dequantize in registers.
#include <cuda_fp16.h>

#include <algorithm>
#include <vector>

#include "core/nf4_codes.h"
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/nf4_dequant_fast.h"

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


// ---- quantization on the GPU (the CPU oracle: native/core/nf4.cpp) -----------------------------
// Exactness: the same fp32 operations as the CPU in the same order. --use_fast_math would turn
// 1/x into an approximate reciprocal and may contract a·b+c into an FMA, so every step that
// decides a code is an explicit round-to-nearest intrinsic (__fdiv_rn, __fmul_rn, __fsub_rn).
// Max and the comparisons are exact in any order. The double-quant offset is the mean of the
// block absmax values summed in double; the sum of float absmax values of one weight is exact in
// double for any realistic spread of exponents, so the order of the sum does not matter.
__device__ __forceinline__ float load_f(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_f(const bf16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float load_f(const __half* p, int64_t i) { return __half2float(p[i]); }

// One warp per 64-block: lane j owns values 2j (high nibble) and 2j + 1 (low nibble) = byte j.
template <class TI>
__global__ void nf4_quant_blocks_kernel(uint8_t* __restrict__ packed, float* __restrict__ absmax,
                                        const TI* __restrict__ w, int64_t blocks) {
  const int64_t blk = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (blk >= blocks) return;  // whole warps exit together
  const int lane = threadIdx.x & 31;
  const int64_t i = blk * 64 + 2 * lane;
  const float a = load_f(w, i), b = load_f(w, i + 1);
  const float amax = warp_max(fmaxf(fabsf(a), fabsf(b)));
  const float inv = __fdiv_rn(1.0f, amax);
  const uint32_t hi = nf4_code_of(__fmul_rn(a, inv)), lo = nf4_code_of(__fmul_rn(b, inv));
  packed[blk * 32 + lane] = (uint8_t)((hi << 4) | lo);
  if (lane == 0) absmax[blk] = amax;
}

// Partial double sums of absmax, one per CUDA block (fixed order within a block).
__global__ void nf4_absmax_partial_kernel(double* __restrict__ part, const float* __restrict__ absmax, int64_t n) {
  __shared__ double sh[256];
  double s = 0;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    s += (double)absmax[i];
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if ((int)threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}
__global__ void nf4_offset_kernel(float* __restrict__ offset, const double* __restrict__ part, int n_part, int64_t blocks) {
  double s = 0;
  for (int i = 0; i < n_part; ++i) s += part[i];
  *offset = (float)__ddiv_rn(s, (double)blocks);
}

// One CUDA block (256 threads) per 256 absmax values: absmax2 = max |absmax − offset|, then the
// 8-bit dynamic code of (absmax − offset) / absmax2.
__global__ void nf4_double_quant_kernel(uint8_t* __restrict__ am_u8, float* __restrict__ absmax2,
                                        const float* __restrict__ absmax, const float* __restrict__ code2,
                                        const float* __restrict__ offset_p, int64_t blocks) {
  __shared__ float code[256];
  __shared__ float red[256];
  code[threadIdx.x] = code2[threadIdx.x];
  const float offset = *offset_p;
  const int64_t i = (int64_t)blockIdx.x * 256 + threadIdx.x;
  const float d = i < blocks ? __fsub_rn(absmax[i], offset) : 0.f;
  red[threadIdx.x] = fabsf(d);
  __syncthreads();
  for (int o = 128; o > 0; o >>= 1) {
    if ((int)threadIdx.x < o) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + o]);
    __syncthreads();
  }
  const float amax2 = red[0];
  if (threadIdx.x == 0) absmax2[blockIdx.x] = amax2;
  if (i < blocks) am_u8[i] = dynamic_code_of(code, __fmul_rn(d, __fdiv_rn(1.0f, amax2)));
}

// code2 (bitsandbytes' create_dynamic_map) as the CPU oracle builds it.
const std::vector<float>& dynamic_code() {
  static const std::vector<float> code = [] {
    std::vector<float> w(64, 1.f);
    return mimic::nf4_quantize(w.data(), 1, 64, true).code2;
  }();
  return code;
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

NF4Device nf4_quantize_device(const void* src, mimic::DType dtype, int M, int K, bool double_quant) {
  const int64_t n = (int64_t)M * K;
  MIMIC_CHECK(M > 0 && K > 0 && n % 64 == 0, "ESHAPE", "NF4 weight ", M, "x", K,
              " is not a whole number of 64-value blocks");
  ensure_code();
  cudaStream_t st = Context::get().stream;
  const int64_t blocks = n / 64;
  NF4Device d;
  d.M = M;
  d.K = K;
  d.packed.alloc((size_t)n / 2);
  d.absmax.alloc((size_t)blocks);
  const int warps = 8;
  const unsigned grid = (unsigned)((blocks + warps - 1) / warps);
  switch (dtype) {
    case mimic::DType::F32:
      nf4_quant_blocks_kernel<<<grid, 32 * warps, 0, st>>>(d.packed.p, d.absmax.p, (const float*)src, blocks); break;
    case mimic::DType::BF16:
      nf4_quant_blocks_kernel<<<grid, 32 * warps, 0, st>>>(d.packed.p, d.absmax.p, (const bf16*)src, blocks); break;
    case mimic::DType::F16:
      nf4_quant_blocks_kernel<<<grid, 32 * warps, 0, st>>>(d.packed.p, d.absmax.p, (const __half*)src, blocks); break;
  }
  MIMIC_CUDA_LAUNCHED();
  if (!double_quant) return d;
  const int64_t blocks2 = (blocks + 255) / 256;
  const int n_part = (int)std::min<int64_t>(256, (blocks + 255) / 256);
  DevBuf<double> part((size_t)n_part);
  DevBuf<float> off(1);
  d.code2 = upload(dynamic_code());
  d.absmax_u8.alloc((size_t)blocks);
  d.absmax2.alloc((size_t)blocks2);
  nf4_absmax_partial_kernel<<<n_part, 256, 0, st>>>(part.p, d.absmax.p, blocks);
  nf4_offset_kernel<<<1, 1, 0, st>>>(off.p, part.p, n_part, blocks);
  nf4_double_quant_kernel<<<(unsigned)blocks2, 256, 0, st>>>(d.absmax_u8.p, d.absmax2.p, d.absmax.p, d.code2.p, off.p,
                                                              blocks);
  MIMIC_CUDA_LAUNCHED();
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(&d.offset, off.p, sizeof(float), cudaMemcpyDeviceToHost, st));
  Context::get().sync();
  d.double_quant = true;
  d.absmax.release();  // the double-quantized form is what the GEMMs read
  return d;
}

// The original kernel (8 bytes a thread). nf4_dequantize below takes nf4_dequant_fast.cu's kernel
// whenever the shape/alignment allow (the default since round 7; MIMIC_NF4_DEQUANT_FAST=0 keeps this one).
void nf4_dequantize_legacy(bf16* out, const NF4Device& W) {
  ensure_code();
  const int64_t n_bytes = (int64_t)W.M * W.K / 2;
  const int threads = 256;
  dequant_kernel<<<blocks_for((n_bytes + 7) / 8, threads), threads, 0, Context::get().stream>>>(
      out, W.packed.p, W.double_quant ? nullptr : W.absmax.p, W.absmax_u8.p, W.absmax2.p, W.code2.p, W.offset, n_bytes);
  MIMIC_CUDA_LAUNCHED();
}

void nf4_dequantize(bf16* out, const NF4Device& W) {
  if (nf4_dequant_fast_enabled() && nf4_dequantize_fast(out, W)) return;
  nf4_dequantize_legacy(out, W);
}

template <class TO>
void nf4_matmul_forward(TO* out, const bf16* x, const NF4Device& W, int64_t N, bf16* scratch, float alpha, float beta) {
  if (N >= 1 && N <= kGemvMaxN && gemv_enabled()) {  // decode-sized: fused GEMV, the 4-bit weight read once
    GemvJob j = gemv_job_nf4(W);
    j.x = x; j.out = out; j.out_f32 = sizeof(TO) == 4; j.alpha = alpha; j.beta = beta;
    gemv(&j, 1, N);
    return;
  }
  // a short prompt chunk (17..64 rows): the tensor-core kernel reads the codes once; its K-slice
  // partials fit the dequant scratch (sized for the largest projection, ≥ M·K bf16 of this one)
  if (N > kGemvMaxN && N <= kNF4GemmSmallMaxS && nf4_gemm_small_enabled() &&
      nf4_gemm_small_workspace((int)N, W.M, W.K) <= (size_t)W.M * W.K * sizeof(bf16) &&
      nf4_gemm_small<TO>(out, x, W, (int)N, alpha, beta, reinterpret_cast<float*>(scratch), (size_t)W.M * W.K * sizeof(bf16)))
    return;
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
