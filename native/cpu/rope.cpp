// rope — rotary position embedding, HF "rotate_half" convention, in place on x[N, H, D]
// (see ops/rope.h):  for i < D/2, a = pos · inv_freq[i]
//   x'[i] = x[i] cos a − x[i + D/2] sin a;   x'[i + D/2] = x[i + D/2] cos a + x[i] sin a
// backward rotates the gradient by −a.
//
// rope_inv_freq reproduces transformers' float32 arithmetic (_compute_default_rope_parameters and
// _compute_llama3_parameters): θ^(2i/D) and the wavelengths are float32 as torch computes them,
// and the angle pos · inv_freq is a float32 product before cos/sin, so positions in the
// thousands get the same rounding as the reference.
#include "ops/rope.h"

#include <cmath>

#include "core/error.h"
#include "core/threadpool.h"

namespace mimic {

std::vector<float> rope_inv_freq(const RopeParams& p, int head_dim) {
  MIMIC_CHECK(head_dim > 0 && head_dim % 2 == 0, "EINVAL", "rope needs an even head_dim, got ", head_dim);
  const int half = head_dim / 2;
  std::vector<float> f((size_t)half);
  for (int i = 0; i < half; ++i) {
    float expo = (float)(2 * i) / (float)head_dim;
    f[i] = 1.0f / (float)std::pow((double)p.theta, (double)expo);
  }
  if (p.type == "default") return f;
  MIMIC_CHECK(p.type == "llama3", "EINVAL", "unsupported rope_type \"", p.type, "\" (supported: default, llama3)");
  const float factor = p.factor, lo = p.low_freq_factor, hi = p.high_freq_factor;
  const float old_ctx = (float)p.original_max_position;
  const float low_wavelen = old_ctx / lo, high_wavelen = old_ctx / hi;
  for (int i = 0; i < half; ++i) {
    const float inv = f[i];
    const float wavelen = (float)(2.0 * M_PI) / inv;
    float scaled = wavelen > low_wavelen ? inv / factor : inv;
    const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
    if (medium) {
      const float smooth = (old_ctx / wavelen - lo) / (hi - lo);
      scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
    }
    f[i] = scaled;
  }
  return f;
}

}  // namespace mimic

namespace mimic::cpu {

static void rotate(float* x, const int32_t* pos, const float* inv_freq, int64_t N, int H, int D, float sign) {
  const int half = D / 2;
  parallel_for(N, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      for (int i = 0; i < half; ++i) {
        const float a = (float)pos[n] * inv_freq[i];
        const float c = std::cos(a), s = sign * std::sin(a);
        for (int h = 0; h < H; ++h) {
          float* r = x + (n * H + h) * D;
          const float x0 = r[i], x1 = r[i + half];
          r[i] = x0 * c - x1 * s;
          r[i + half] = x1 * c + x0 * s;
        }
      }
    }
  }, 8);
}

void rope_forward(float* x, const int32_t* pos, const float* inv_freq, int64_t N, int H, int D) {
  rotate(x, pos, inv_freq, N, H, D, 1.0f);
}

void rope_backward(float* dx, const int32_t* pos, const float* inv_freq, int64_t N, int H, int D) {
  rotate(dx, pos, inv_freq, N, H, D, -1.0f);
}

}  // namespace mimic::cpu
