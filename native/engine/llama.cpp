// llama — load a Llama checkpoint, and its forward pass on the CPU (transformers'
// LlamaForCausalLM, eval mode):
//
//   x = embed[ids]                                                        [T, C]
//   per layer:  h = rmsnorm(x);  q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ;  rope(q, k)
//               x += o_proj(attention(q, k, v))                            (causal GQA)
//               h = rmsnorm(x);  x += down(silu(gate(h)) ⊙ up(h))
//   logits = rmsnorm(x) · lm_headᵀ   (lm_head = embed when tied)           [n_logits, V]
// With a KV cache the new tokens sit at positions cache.len.., their K/V rows are written into
// the cache and attention reads all cached rows (q_offset = cache.len).
#include "engine/llama.h"

#include <cstring>

#include "core/config.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"

namespace mimic {

Linear* LlamaLayer::projection(const std::string& s) {
  if (s == "q_proj") return &q;
  if (s == "k_proj") return &k;
  if (s == "v_proj") return &v;
  if (s == "o_proj") return &o;
  if (s == "gate_proj") return &gate;
  if (s == "up_proj") return &up;
  if (s == "down_proj") return &down;
  return nullptr;
}

namespace {

std::vector<float> load_tensor(const Checkpoint& ck, const std::string& name, std::vector<int64_t> shape) {
  const TensorView& t = ck.get(name);
  TensorView want;
  want.shape = shape;
  MIMIC_CHECK(t.shape == shape, "ESHAPE", "tensor \"", name, "\" in ", t.file, " has shape ", t.shape_str(),
              " but config.json implies ", want.shape_str(), ". config.json and the weights do not match.");
  try {
    return to_f32(t);
  } catch (const std::bad_alloc&) {
    fail("EOOM", "out of memory converting \"", name, "\" to fp32 (", t.numel(), " values)");
  }
}

void load_linear(Linear& L, const Checkpoint& ck, const std::string& name, int M, int K, bool quant_nf4) {
  L.name = name;
  L.M = M;
  L.K = K;
  L.owned = load_tensor(ck, name + ".weight", {M, K});
  if (quant_nf4) {
    MIMIC_CHECK(((int64_t)M * K) % 64 == 0, "ESHAPE", "cannot quantize ", name, " [", M, ", ", K,
                "] to NF4: its size is not a multiple of the 64-value block");
    // Double quantization as QLoRA and bitsandbytes' Params4bit default (compress_statistics=True).
    L.nf4 = std::make_unique<NF4Weight>(nf4_quantize(L.owned.data(), M, K, /*double_quant=*/true));
    std::vector<float>().swap(L.owned);
    L.W = nullptr;
  } else {
    L.W = L.owned.data();
  }
}

}  // namespace

std::unique_ptr<LlamaModel> load_llama(const std::string& dir, bool quant_nf4) {
  auto m = std::make_unique<LlamaModel>();
  m->cfg = load_llama_config(dir);
  const LlamaConfig& c = m->cfg;
  Checkpoint ck = Checkpoint::open_dir(dir);
  const int C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int QD = c.num_heads * c.head_dim, KD = c.num_kv_heads * c.head_dim;

  m->embed = load_tensor(ck, "model.embed_tokens.weight", {V, C});
  if (!c.tie_word_embeddings) {
    MIMIC_CHECK(ck.find("lm_head.weight"), "EBADFILE", "config.json says tie_word_embeddings = false but the checkpoint in ",
                dir, " has no lm_head.weight");
    m->lm_head = load_tensor(ck, "lm_head.weight", {V, C});
  }
  m->final_norm = load_tensor(ck, "model.norm.weight", {C});
  m->layers.resize((size_t)c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    LlamaLayer& L = m->layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    L.input_norm = load_tensor(ck, p + "input_layernorm.weight", {C});
    L.post_attn_norm = load_tensor(ck, p + "post_attention_layernorm.weight", {C});
    load_linear(L.q, ck, p + "self_attn.q_proj", QD, C, quant_nf4);
    load_linear(L.k, ck, p + "self_attn.k_proj", KD, C, quant_nf4);
    load_linear(L.v, ck, p + "self_attn.v_proj", KD, C, quant_nf4);
    load_linear(L.o, ck, p + "self_attn.o_proj", C, QD, quant_nf4);
    load_linear(L.gate, ck, p + "mlp.gate_proj", I, C, quant_nf4);
    load_linear(L.up, ck, p + "mlp.up_proj", I, C, quant_nf4);
    load_linear(L.down, ck, p + "mlp.down_proj", C, I, quant_nf4);
  }
  m->inv_freq = rope_inv_freq(c.rope, c.head_dim);
  return m;
}

void llama_forward(const LlamaModel& m, const int32_t* ids, int T, KVCache* cache, float* logits, int n_logits) {
  const LlamaConfig& c = m.cfg;
  const int C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
  const int QD = Hq * D, KD = Hkv * D;
  MIMIC_CHECK(T >= 1, "EINVAL", "llama_forward needs at least one token");
  MIMIC_CHECK(n_logits >= 1 && n_logits <= T, "EINVAL", "n_logits must be in [1, ", T, "], got ", n_logits);
  for (int t = 0; t < T; ++t)
    MIMIC_CHECK(ids[t] >= 0 && ids[t] < V, "ERANGE", "token id ", ids[t], " at position ", t,
                " is out of range: the model's vocabulary has ", V, " tokens (ids 0..", V - 1,
                "). Was the text tokenized with this model's tokenizer?");
  const int start = cache ? cache->len : 0;
  if (cache) {
    MIMIC_CHECK((int)cache->k.size() == c.num_layers, "EINVAL", "the KV cache was not initialized for this model");
    MIMIC_CHECK(start + T <= cache->max_len, "EFULL", "the KV cache holds ", cache->max_len, " tokens; ", start,
                " are used and ", T, " more do not fit. Create the session with a larger maxLength.");
  }

  std::vector<int32_t> pos((size_t)T);
  for (int t = 0; t < T; ++t) pos[t] = start + t;
  std::vector<float> x((size_t)T * C), h((size_t)T * C), q((size_t)T * QD), att((size_t)T * QD), tmp((size_t)T * C);
  std::vector<float> kbuf, vbuf;
  if (!cache) {
    kbuf.resize((size_t)T * KD);
    vbuf.resize((size_t)T * KD);
  }
  std::vector<float> g((size_t)T * I), u((size_t)T * I);

  cpu::embedding_forward(x.data(), ids, m.embed.data(), T, C);
  for (int l = 0; l < c.num_layers; ++l) {
    const LlamaLayer& L = m.layers[l];
    cpu::rmsnorm_forward(h.data(), nullptr, x.data(), L.input_norm.data(), T, C, c.rms_norm_eps);
    float* kd = cache ? cache->k[l].data() + (size_t)start * KD : kbuf.data();
    float* vd = cache ? cache->v[l].data() + (size_t)start * KD : vbuf.data();
    linear_forward(q.data(), h.data(), T, L.q);
    linear_forward(kd, h.data(), T, L.k);
    linear_forward(vd, h.data(), T, L.v);
    cpu::rope_forward(q.data(), pos.data(), m.inv_freq.data(), T, Hq, D);
    cpu::rope_forward(kd, pos.data(), m.inv_freq.data(), T, Hkv, D);
    if (cache)
      cpu::attention_forward(att.data(), nullptr, q.data(), cache->k[l].data(), cache->v[l].data(), 1, T, start + T,
                             start, Hq, Hkv, D);
    else
      cpu::attention_forward(att.data(), nullptr, q.data(), kbuf.data(), vbuf.data(), 1, T, T, 0, Hq, Hkv, D);
    linear_forward(tmp.data(), att.data(), T, L.o);
    for (size_t i = 0; i < x.size(); ++i) x[i] += tmp[i];

    cpu::rmsnorm_forward(h.data(), nullptr, x.data(), L.post_attn_norm.data(), T, C, c.rms_norm_eps);
    linear_forward(g.data(), h.data(), T, L.gate);
    linear_forward(u.data(), h.data(), T, L.up);
    cpu::swiglu_forward(g.data(), g.data(), u.data(), T, I);
    linear_forward(tmp.data(), g.data(), T, L.down);
    for (size_t i = 0; i < x.size(); ++i) x[i] += tmp[i];
  }
  const float* last = x.data() + (size_t)(T - n_logits) * C;
  cpu::rmsnorm_forward(h.data(), nullptr, last, m.final_norm.data(), n_logits, C, c.rms_norm_eps);
  cpu::matmul_forward(logits, h.data(), m.lm_head_weight(), nullptr, n_logits, C, V);
  if (cache) cache->len = start + T;
}

}  // namespace mimic
