// rope — rotary position embedding, Hugging Face "rotate_half" convention, in place.
//
// x is [N, H, D] (one row per token, H heads of size D); pos[N] is each token's absolute
// position. For i < D/2, with angle a = pos · inv_freq[i]:
//   x'[i]       = x[i] · cos a − x[i + D/2] · sin a
//   x'[i + D/2] = x[i + D/2] · cos a + x[i] · sin a
// backward is the rotation by −a, applied in place to the gradient.
// inv_freq[D/2] comes from rope_inv_freq(): base θ^(−2i/D), then Llama-3 "llama3" scaling
// (factor, low/high frequency factors, original context) when rope_type == "llama3".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mimic {
struct RopeParams {
  float theta = 10000.f;
  std::string type = "default";      // "default" or "llama3"
  float factor = 1.f, low_freq_factor = 1.f, high_freq_factor = 4.f;
  int original_max_position = 8192;
};
std::vector<float> rope_inv_freq(const RopeParams& p, int head_dim);
}  // namespace mimic

namespace mimic::cpu {
void rope_forward(float* x, const int32_t* pos, const float* inv_freq, int64_t N, int H, int D);
void rope_backward(float* dx, const int32_t* pos, const float* inv_freq, int64_t N, int H, int D);
}  // namespace mimic::cpu
