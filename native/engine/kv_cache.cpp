// kv_cache — per-sequence K/V rows for every layer: k[l], v[l] are [max_len, Hkv·D], the
// layout attention_forward reads as [B = 1, Tk, Hkv, D], so decoding passes them without a copy.
#include <cstddef>

#include "core/error.h"
#include "engine/llama.h"

namespace mimic {

void KVCache::init(const LlamaConfig& cfg, int max_len_) {
  MIMIC_CHECK(max_len_ > 0, "EINVAL", "a KV cache needs maxLength >= 1, got ", max_len_);
  const size_t row = (size_t)cfg.num_kv_heads * cfg.head_dim;
  const double bytes = 2.0 * cfg.num_layers * (double)max_len_ * row * sizeof(float);
  MIMIC_CHECK(bytes < 64.0 * (1ull << 30), "EOOM", "a KV cache of ", max_len_, " tokens would take ", bytes / (1 << 30),
              " GiB; use a smaller maxLength");
  max_len = max_len_;
  len = 0;
  k.assign((size_t)cfg.num_layers, std::vector<float>());
  v.assign((size_t)cfg.num_layers, std::vector<float>());
  try {
    for (int l = 0; l < cfg.num_layers; ++l) {
      k[l].assign((size_t)max_len * row, 0.f);
      v[l].assign((size_t)max_len * row, 0.f);
    }
  } catch (const std::bad_alloc&) {
    k.clear();
    v.clear();
    fail("EOOM", "out of memory allocating a KV cache of ", max_len_, " tokens; use a smaller maxLength");
  }
}

}  // namespace mimic
