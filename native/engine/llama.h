// llama — a Llama-architecture checkpoint in memory, and its forward pass on the CPU.
//
// Weights follow transformers' LlamaForCausalLM names (model.embed_tokens, model.layers.N.*,
// model.norm, lm_head — tied to the embedding when tie_word_embeddings). The seven projections
// of each layer are Linear (fp32 or NF4, + optional LoRA). Embeddings and norms stay fp32.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/linear.h"
#include "ops/rope.h"

namespace mimic {

struct LlamaConfig {
  int vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_layers = 0;
  int num_heads = 0, num_kv_heads = 0, head_dim = 0, max_position = 0;
  float rms_norm_eps = 1e-5f;
  bool tie_word_embeddings = false;
  RopeParams rope;
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
};

struct LlamaLayer {
  std::vector<float> input_norm, post_attn_norm;   // [C]
  Linear q, k, v, o, gate, up, down;
  Linear* projection(const std::string& short_name);  // "q_proj" ... "down_proj", or null
};

struct LlamaModel {
  LlamaConfig cfg;
  std::vector<float> embed;          // [V, C]
  std::vector<float> lm_head;        // [V, C]; empty when tied (use embed)
  std::vector<float> final_norm;     // [C]
  std::vector<LlamaLayer> layers;
  std::vector<float> inv_freq;       // [head_dim / 2], rope_inv_freq(cfg.rope, head_dim)
  const float* lm_head_weight() const { return lm_head.empty() ? embed.data() : lm_head.data(); }
};

// Loads config.json + (sharded) safetensors from dir; quant_nf4 quantizes the seven projections.
std::unique_ptr<LlamaModel> load_llama(const std::string& dir, bool quant_nf4);

// Per-sequence KV cache: for each layer, K and V rows [max_len, Hkv·D].
struct KVCache {
  int max_len = 0, len = 0;
  std::vector<std::vector<float>> k, v;
  void init(const LlamaConfig& cfg, int max_len);
};

// Runs T tokens of one sequence through the model. With a cache, the tokens are appended at
// positions cache->len.. and attend to everything cached; without one, positions start at 0.
// Writes logits for the last `n_logits` positions (1 for decoding, T for scoring) into
// logits[n_logits, V]. Throws mimic::Error on an out-of-range id or a full cache.
void llama_forward(const LlamaModel& m, const int32_t* ids, int T, KVCache* cache, float* logits, int n_logits);

}  // namespace mimic
