// decode_batch — one decoding step for S independent sequences at once (continuous batching on
// the CPU engine).
//
// Each sequence s brings n_s new tokens (1 when decoding, a few for a chunk of prompt) that are
// appended at positions cache_s.len .. cache_s.len + n_s − 1 of its own KV cache. All N = Σ n_s
// rows go through each of the seven projections (and lm_head) as ONE matmul, so every weight is
// read once per step instead of once per sequence — that is the whole gain: decoding is bound by
// reading the weights, not by arithmetic. What cannot be shared stays per sequence: attention
// reads only its own cache (q_offset = cache_s.len), and sampling uses its own parameters,
// history and RNG.
//
// Every per-row computation (embedding, RMSNorm, RoPE, each output of a matmul, SwiGLU) depends
// on its row alone and is summed in the same order whatever N is, so the tokens are bit-for-bit
// those of stepping the sequences one by one with llama_forward + sample_token.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/llama.h"
#include "ops/sampling.h"

namespace mimic {

struct DecodeSeq {
  KVCache* cache = nullptr;          // this sequence's cache (distinct for every sequence)
  const int32_t* ids = nullptr;      // the new tokens, n_ids >= 1
  int n_ids = 0;
  SamplingParams params;
  const int32_t* history = nullptr;  // what the repetition penalty looks at
  int64_t n_history = 0;
  Rng* rng = nullptr;                // this sequence's RNG (advanced by the draw)
};

// Appends each sequence's ids to its cache and samples its next token into tokens[s].
// Validates everything first (ids in range, caches initialized, distinct and with room): on a
// bad argument it throws mimic::Error and leaves every cache and RNG as it was.
void decode_batch(const LlamaModel& m, const DecodeSeq* seqs, int S, int32_t* tokens);

// The forward half: logits[S, V] of each sequence's last new token (caches advanced).
void llama_forward_batch(const LlamaModel& m, const DecodeSeq* seqs, int S, float* logits);

}  // namespace mimic
