// decode_batch — one decoding step for S sequences, each with its own KV cache, the projections
// run once over all their rows (see decode_batch.h for why and for the exactness argument).
//
//   rows r = 0 .. N−1, sequence s owns rows off_s .. off_s + n_s − 1, row r sits at pos_r
//   x = embed[ids]                                                        [N, C]
//   per layer:  h = rmsnorm(x);  q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ  (one matmul each, N rows)
//               rope(q, k) at pos_r;  k, v rows → cache_s at pos_r
//               att_s = attention(q_s, cache_s.k, cache_s.v, q_offset = cache_s.len)  (per s)
//               x += o_proj(att);  h = rmsnorm(x);  x += down(silu(gate(h)) ⊙ up(h))
//   logits_s = rmsnorm(x[last row of s]) · lm_headᵀ                         [S, V]
//   token_s  = sample_token(logits_s, params_s, history_s, rng_s)
#include "engine/decode_batch.h"

#include <cstring>
#include <set>

#include "core/error.h"
#include "core/threadpool.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"

namespace mimic {

namespace {

void validate(const LlamaModel& m, const DecodeSeq* seqs, int S) {
  const LlamaConfig& c = m.cfg;
  MIMIC_CHECK(S >= 1, "EINVAL", "a batched decoding step needs at least one sequence");
  std::set<const KVCache*> seen;
  for (int s = 0; s < S; ++s) {
    const DecodeSeq& q = seqs[s];
    MIMIC_CHECK(q.cache && q.rng, "EINVAL", "sequence ", s, " of the batch has no KV cache or RNG");
    MIMIC_CHECK(seen.insert(q.cache).second, "EINVAL", "sequence ", s,
                " of the batch uses the same session as an earlier one; a session may appear once per step");
    MIMIC_CHECK(q.n_ids >= 1 && q.ids, "EINVAL", "sequence ", s, " of the batch has no token ids (give at least one)");
    MIMIC_CHECK((int)q.cache->k.size() == c.num_layers, "EINVAL", "the KV cache of sequence ", s,
                " was not initialized for this model");
    MIMIC_CHECK(q.cache->len + q.n_ids <= q.cache->max_len, "EFULL", "sequence ", s, ": the KV cache holds ",
                q.cache->max_len, " tokens; ", q.cache->len, " are used and ", q.n_ids,
                " more do not fit. Create the session with a larger maxLength.");
    for (int t = 0; t < q.n_ids; ++t)
      MIMIC_CHECK(q.ids[t] >= 0 && q.ids[t] < c.vocab_size, "ERANGE", "token id ", q.ids[t], " at position ", t,
                  " of sequence ", s, " is out of range: the model's vocabulary has ", c.vocab_size, " tokens (ids 0..",
                  c.vocab_size - 1, "). Was the text tokenized with this model's tokenizer?");
  }
}

}  // namespace

void llama_forward_batch(const LlamaModel& m, const DecodeSeq* seqs, int S, float* logits) {
  validate(m, seqs, S);
  const LlamaConfig& c = m.cfg;
  const int C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
  const int QD = Hq * D, KD = Hkv * D;

  std::vector<int> off((size_t)S + 1, 0);
  for (int s = 0; s < S; ++s) off[s + 1] = off[s] + seqs[s].n_ids;
  const int N = off[S];
  std::vector<int32_t> ids((size_t)N), pos((size_t)N);
  for (int s = 0; s < S; ++s)
    for (int t = 0; t < seqs[s].n_ids; ++t) {
      ids[off[s] + t] = seqs[s].ids[t];
      pos[off[s] + t] = seqs[s].cache->len + t;
    }

  std::vector<float> x((size_t)N * C), h((size_t)N * C), q((size_t)N * QD), att((size_t)N * QD), tmp((size_t)N * C);
  std::vector<float> kb((size_t)N * KD), vb((size_t)N * KD), g((size_t)N * I), u((size_t)N * I);

  cpu::embedding_forward(x.data(), ids.data(), m.embed.data(), N, C);
  for (int l = 0; l < c.num_layers; ++l) {
    const LlamaLayer& L = m.layers[l];
    cpu::rmsnorm_forward(h.data(), nullptr, x.data(), L.input_norm.data(), N, C, c.rms_norm_eps);
    linear_forward(q.data(), h.data(), N, L.q);
    linear_forward(kb.data(), h.data(), N, L.k);
    linear_forward(vb.data(), h.data(), N, L.v);
    cpu::rope_forward(q.data(), pos.data(), m.inv_freq.data(), N, Hq, D);
    cpu::rope_forward(kb.data(), pos.data(), m.inv_freq.data(), N, Hkv, D);
    // Each sequence's new K/V rows go to its own cache, then it attends to that cache alone.
    // Sequences run in parallel; attention inside one is then serial (nested parallel_for),
    // which does not change its per-row results.
    parallel_for(S, [&](int64_t b, int64_t e) {
      for (int64_t s = b; s < e; ++s) {
        KVCache& kv = *seqs[s].cache;
        const int start = kv.len, n = seqs[s].n_ids;
        std::memcpy(kv.k[l].data() + (size_t)start * KD, kb.data() + (size_t)off[s] * KD, (size_t)n * KD * sizeof(float));
        std::memcpy(kv.v[l].data() + (size_t)start * KD, vb.data() + (size_t)off[s] * KD, (size_t)n * KD * sizeof(float));
        cpu::attention_forward(att.data() + (size_t)off[s] * QD, nullptr, q.data() + (size_t)off[s] * QD, kv.k[l].data(),
                               kv.v[l].data(), 1, n, start + n, start, Hq, Hkv, D);
      }
    });
    linear_forward(tmp.data(), att.data(), N, L.o);
    for (size_t i = 0; i < x.size(); ++i) x[i] += tmp[i];

    cpu::rmsnorm_forward(h.data(), nullptr, x.data(), L.post_attn_norm.data(), N, C, c.rms_norm_eps);
    linear_forward(g.data(), h.data(), N, L.gate);
    linear_forward(u.data(), h.data(), N, L.up);
    cpu::swiglu_forward(g.data(), g.data(), u.data(), N, I);
    linear_forward(tmp.data(), g.data(), N, L.down);
    for (size_t i = 0; i < x.size(); ++i) x[i] += tmp[i];
  }
  // Only each sequence's last row needs logits: gather them, then one lm_head matmul.
  std::vector<float> last((size_t)S * C);
  for (int s = 0; s < S; ++s)
    std::memcpy(last.data() + (size_t)s * C, x.data() + (size_t)(off[s + 1] - 1) * C, (size_t)C * sizeof(float));
  cpu::rmsnorm_forward(h.data(), nullptr, last.data(), m.final_norm.data(), S, C, c.rms_norm_eps);
  cpu::matmul_forward(logits, h.data(), m.lm_head_weight(), nullptr, S, C, V);
  for (int s = 0; s < S; ++s) seqs[s].cache->len += seqs[s].n_ids;
}

void decode_batch(const LlamaModel& m, const DecodeSeq* seqs, int S, int32_t* tokens) {
  const int V = m.cfg.vocab_size;
  std::vector<float> logits;
  try {
    logits.resize((size_t)(S > 0 ? S : 0) * V);
  } catch (const std::bad_alloc&) {
    fail("EOOM", "out of memory for the logits of a batch of ", S, " sequences");
  }
  llama_forward_batch(m, seqs, S, logits.data());
  parallel_for(S, [&](int64_t b, int64_t e) {
    for (int64_t s = b; s < e; ++s) {
      const DecodeSeq& q = seqs[s];
      tokens[s] = cpu::sample_token(logits.data() + (size_t)s * V, V, q.params, q.history, q.n_history, *q.rng);
    }
  });
}

}  // namespace mimic
