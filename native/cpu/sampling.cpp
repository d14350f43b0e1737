// sampling — next-token choice from one row of logits[V], as transformers' generate() does it
// (see ops/sampling.h for the order of the processors).
//
// The Rng is xoshiro256** seeded through splitmix64, so one u64 seed gives a full, well-mixed
// state; uniform() takes the top 24 bits so it is exactly representable in [0, 1).
// Ties follow HF: top-k keeps every token equal to the k-th largest logit; top-p drops, in
// ascending order, tokens whose cumulative probability is <= 1 − top_p, never the most likely one.
// greedy (temperature <= 0) is the first index of the maximum, as torch.argmax.
#include "ops/sampling.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>
#include <utility>
#include <vector>

namespace mimic {

static uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Rng::Rng(uint64_t seed) {
  for (auto& w : s) w = splitmix64(seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t Rng::next() {
  const uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

float Rng::uniform() { return (float)(next() >> 40) * (1.0f / 16777216.0f); }

}  // namespace mimic

namespace mimic::cpu {

int32_t sample_token(float* logits, int64_t V, const SamplingParams& p, const int32_t* history, int64_t n_history,
                     Rng& rng) {
  if (p.repetition_penalty != 1.f && n_history > 0) {
    std::unordered_set<int32_t> seen;  // HF gathers each id once, however often it occurs
    for (int64_t i = 0; i < n_history; ++i) {
      int32_t id = history[i];
      if (id < 0 || id >= V || !seen.insert(id).second) continue;
      float& l = logits[id];
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    }
  }
  if (!(p.temperature > 0)) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; ++i)
      if (logits[i] > logits[best]) best = i;
    return (int32_t)best;
  }
  for (int64_t i = 0; i < V; ++i) logits[i] /= p.temperature;

  std::vector<std::pair<float, int32_t>> cand;
  cand.reserve((size_t)V);
  for (int64_t i = 0; i < V; ++i) cand.emplace_back(logits[i], (int32_t)i);
  auto desc = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  if (p.top_k > 0 && p.top_k < V) {
    std::nth_element(cand.begin(), cand.begin() + (p.top_k - 1), cand.end(), desc);
    float kth = cand[p.top_k - 1].first;
    cand.erase(std::remove_if(cand.begin(), cand.end(), [&](const std::pair<float, int32_t>& c) { return c.first < kth; }),
               cand.end());
  }
  std::sort(cand.begin(), cand.end(), desc);

  std::vector<double> prob(cand.size());
  double mx = cand[0].first, sum = 0;
  for (size_t i = 0; i < cand.size(); ++i) sum += prob[i] = std::exp((double)cand[i].first - mx);
  for (auto& q : prob) q /= sum;

  size_t keep = cand.size();
  if (p.top_p < 1.f) {
    // Ascending cumulative mass of the tail from the least likely token up; drop while <= 1 - top_p.
    double tail = 0, cut = 1.0 - (double)p.top_p;
    size_t i = cand.size();
    while (i > 1) {
      tail += prob[i - 1];
      if (tail <= cut) --i; else break;
    }
    keep = i;
  }
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += prob[i];
  double u = (double)rng.uniform() * total, acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += prob[i];
    if (u < acc) return cand[i].second;
  }
  return cand[keep - 1].second;
}

}  // namespace mimic::cpu
