// nf4.cpp — NF4 quantization of a weight W[M, K] exactly as bitsandbytes' quantize_4bit
// (quant_type="nf4", blocksize 64) stores it, with optional double quantization of the absmax
// (compress_statistics=True), and the matching dequantization. See ops/nf4.h for the layout.
//
// Bit-exactness with bitsandbytes' CUDA kernels (kQuantizeBlockwise) comes from doing the same
// fp32 operations in the same order:
//   - a block's scale is the reciprocal inv = 1 / absmax, and each value is quantized as
//     dQuantizeNF4(w · inv) (a multiply, not a division: the two differ in the last bit);
//   - dQuantizeNF4 is a decision tree on the float-rounded midpoints between code values, with
//     strict ">" comparisons (a value on a midpoint goes to the lower code);
//   - an all-zero block gives inv = inf and w · inv = NaN, which the tree sends to code 0
//     (-1.0 · 0 = 0 on dequantization): bitsandbytes does the same;
//   - the 8-bit absmax code (double quantization) is bitsandbytes' dQuantize<0>: a 7-step binary
//     search over the sorted 256-entry dynamic code, then the nearer neighbour by midpoint;
//   - code2 is create_dynamic_map(signed=True), rebuilt here with torch's float32 linspace
//     (checked equal to the code2 bitsandbytes stores, entry for entry).
#include "ops/nf4.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/nf4_codes.h"

namespace mimic {

const float NF4_CODE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

namespace {

constexpr int kBlock = 64;     // values per NF4 block (one absmax each)
constexpr int kBlock2 = 256;   // absmax values per 8-bit block of the double quantization

// torch.linspace(start, end, steps, dtype=float32) on the CPU: the first half counts up from
// start, the second half down from end, with a float32 step. torch's x86 build contracts
// `start + step * idx` into one fused multiply-add (one rounding), so std::fmaf reproduces it
// bit for bit; two roundings differ from bitsandbytes' code2 in 42 of 256 entries.
std::vector<float> linspace_f32(float start, float end, int steps) {
  std::vector<float> out(steps);
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int halfway = steps / 2;
  for (int i = 0; i < steps; ++i)
    out[i] = i < halfway ? std::fmaf(step, static_cast<float>(i), start)
                         : std::fmaf(-step, static_cast<float>(steps - i - 1), end);
  return out;
}

// bitsandbytes.functional.create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
// for each exponent i, the midpoints of linspace(0.1, 1, 2^i + 1) scaled by 10^(i-6), both
// signs; then 0 and 1, sorted. 127 + 127 + 2 = 256 values. The products are float32 (torch
// multiplies a float32 tensor by the Python scalar in float32).
std::vector<float> nf4_dynamic_code() {
  std::vector<float> data;
  const int max_exponent_bits = 7;
  for (int i = 0; i < max_exponent_bits; ++i) {
    const int fraction_items = (1 << i) + 1;
    std::vector<float> b = linspace_f32(0.1f, 1.0f, fraction_items);
    const float scale = static_cast<float>(std::pow(10.0, -(max_exponent_bits - 1) + i));
    for (int j = 0; j + 1 < fraction_items; ++j) {
      const float mean = (b[j] + b[j + 1]) / 2.0f;
      data.push_back(scale * mean);
      data.push_back(-(scale * mean));
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  return data;
}

}  // namespace

NF4Weight nf4_quantize(const float* w, int M, int K, bool double_quant) {
  MIMIC_CHECK(M > 0 && K > 0, "ESHAPE", "nf4_quantize: weight shape [", M, ", ", K,
              "] must be positive");
  const int64_t n = static_cast<int64_t>(M) * K;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  NF4Weight q;
  q.M = M;
  q.K = K;
  q.packed.assign((n + 1) / 2, 0);
  q.absmax.resize(blocks);

  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t lo = b * kBlock, hi = std::min<int64_t>(n, lo + kBlock);
    float amax = 0.f;
    for (int64_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(w[i]));
    q.absmax[b] = amax;
    const float inv = 1.0f / amax;
    for (int64_t i = lo; i < hi; ++i) {
      const uint8_t c = nf4_code_of(w[i] * inv);
      q.packed[i / 2] |= (i % 2 == 0) ? static_cast<uint8_t>(c << 4) : c;
    }
  }

  if (double_quant) {
    q.double_quant = true;
    q.code2 = nf4_dynamic_code();
    double sum = 0;
    for (float a : q.absmax) sum += a;
    q.offset = static_cast<float>(sum / static_cast<double>(blocks));
    const int64_t blocks2 = (blocks + kBlock2 - 1) / kBlock2;
    q.absmax_u8.resize(blocks);
    q.absmax2.resize(blocks2);
    for (int64_t b2 = 0; b2 < blocks2; ++b2) {
      const int64_t lo = b2 * kBlock2, hi = std::min<int64_t>(blocks, lo + kBlock2);
      float amax2 = 0.f;
      for (int64_t i = lo; i < hi; ++i) amax2 = std::max(amax2, std::fabs(q.absmax[i] - q.offset));
      q.absmax2[b2] = amax2;
      const float inv2 = 1.0f / amax2;
      for (int64_t i = lo; i < hi; ++i)
        q.absmax_u8[i] = dynamic_code_of(q.code2.data(), (q.absmax[i] - q.offset) * inv2);
    }
    // From here on absmax holds what dequantization uses (bitsandbytes: dequantize_blockwise,
    // then += offset), so every consumer reads one array whatever the storage.
    for (int64_t i = 0; i < blocks; ++i)
      q.absmax[i] = q.code2[q.absmax_u8[i]] * q.absmax2[i / kBlock2] + q.offset;
  }
  return q;
}

void nf4_dequantize(float* out, const NF4Weight& q) {
  const int64_t n = static_cast<int64_t>(q.M) * q.K;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t byte = q.packed[i / 2];
    const uint8_t c = (i % 2 == 0) ? (byte >> 4) : (byte & 15);
    out[i] = NF4_CODE[c] * q.absmax[i / kBlock];
  }
}

}  // namespace mimic
