// cross_entropy — masked token cross-entropy, exactly transformers' causal-LM loss once the
// caller has shifted the labels (target[n] = labels[n + 1]; the last position gets -100).
//
//   loss_n = logsumexp(logits[n, :]) − logits[n, target[n]]       for target[n] != -100
//   returns Σ_n loss_n  (the caller divides by the number of unmasked targets)
//   backward, fused: dlogits[n, v] = scale · (softmax(logits[n])[v] − [v == target[n]]),
//                    and 0 for masked rows. dlogits may alias logits (in place, llm.c-style).
// The engine calls it on chunks of rows so that a 128k vocabulary never needs all logits at once.
#pragma once
#include <cstdint>

namespace mimic::cpu {
double cross_entropy_forward(const float* logits, const int32_t* target, int64_t N, int64_t V);
double cross_entropy_forward_backward(float* dlogits, const float* logits, const int32_t* target,
                                      int64_t N, int64_t V, float scale);
}  // namespace mimic::cpu
