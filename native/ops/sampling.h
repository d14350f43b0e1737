// sampling — next-token choice from one row of logits, as transformers' generate() does it.
//
// Order (HF's logits processors): repetition penalty (logit/penalty if > 0 else logit·penalty,
// for every token id in `history`), temperature, top-k, top-p (smallest set whose probability
// mass reaches top_p, always at least one token), then a draw from the renormalized softmax.
// temperature <= 0 is greedy argmax (after the repetition penalty). The RNG is a seeded
// xoshiro-style generator owned by the caller so a run is reproducible.
#pragma once
#include <cstdint>

namespace mimic {
struct SamplingParams {
  float temperature = 0.7f;
  int top_k = 40;             // 0: off
  float top_p = 0.9f;         // 1: off
  float repetition_penalty = 1.f;
};
struct Rng {
  uint64_t s[4];
  explicit Rng(uint64_t seed = 0x9E3779B97F4A7C15ull);
  uint64_t next();
  float uniform();  // [0, 1)
};
}  // namespace mimic

namespace mimic::cpu {
// logits is modified in place (penalties, temperature); history[n_history] are earlier token ids.
int32_t sample_token(float* logits, int64_t V, const mimic::SamplingParams& p, const int32_t* history,
                     int64_t n_history, mimic::Rng& rng);
}  // namespace mimic::cpu
