// train — LoRA training forward/backward over a frozen Llama, masked loss, clipping and AdamW.
// See train.h for the stages; N = B·T tokens, C hidden, I intermediate, Hq/Hkv heads of size D.
//
// Decoder layer ℓ (transformers' LlamaDecoderLayer), forward:
//   xn1 = rmsnorm(x)·w_in;  q, k, v = lin_q(xn1), lin_k(xn1), lin_v(xn1);  q, k ← rope(q, k)
//   att = attention(q, k, v)  (causal GQA; lse kept);  h = x + lin_o(att)
//   xn2 = rmsnorm(h)·w_post;  gate, up = lin_gate(xn2), lin_up(xn2);  act = silu(gate)·up
//   x' = h + lin_down(act)
// backward (each op's backward accumulates, ops/README.md):
//   dact = dx'·W_down (+LoRA);  dgate, dup = swiglu'(dact);  dxn2 = dgate·W_gate + dup·W_up
//   dh = dx' + rmsnorm'(dxn2);  datt = dh·W_o;  dq, dk, dv = attention'(datt);  rope'(dq, dk)
//   dxn1 = dq·W_q + dk·W_k + dv·W_v;  dx = dh + rmsnorm'(dxn1)
// and every lin_* with an adapter adds to its dA, dB on the way (linear_backward).
// Right padding needs no attention mask: with causal attention a real token never sees the
// padding after it, and padded positions carry label -100.
#include "engine/train.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "engine/lora_init.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"

namespace mimic {

namespace {

constexpr int32_t kIgnore = -100;
constexpr int64_t kHeadBytes = 64ll << 20;  // logits chunk budget in the head

template <class T>
void release(std::vector<T>& v) { std::vector<T>().swap(v); }

void add_into(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

Linear& proj(LlamaLayer& L, int i) {
  switch (i) {
    case 0: return L.q;
    case 1: return L.k;
    case 2: return L.v;
    case 3: return L.o;
    case 4: return L.gate;
    case 5: return L.up;
    default: return L.down;
  }
}

}  // namespace

const std::array<const char*, 7>& projection_names() {
  static const std::array<const char*, 7> names = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"};
  return names;
}

std::string peft_name(int layer, const std::string& p, bool is_a) {
  const bool attn = p == "q_proj" || p == "k_proj" || p == "v_proj" || p == "o_proj";
  return "base_model.model.model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") + p +
         (is_a ? ".lora_A.weight" : ".lora_B.weight");
}

void LayerActs::release_all_but_input() {
  for (auto* v : {&xn1, &rstd1, &q, &k, &v, &att, &lse, &h, &xn2, &rstd2, &gate, &up, &act}) release(*v);
  for (auto& c : cache) {
    release(c.x_drop);
    release(c.h);
  }
}

// ---- construction: validate the spec, attach adapters ------------------------------------------

Trainer::Trainer(LlamaModel& model, const TrainerOptions& opt, const std::map<std::string, std::vector<float>>* init)
    : model_(model), opt_(opt), rng_(opt.seed ^ 0xD1B54A32D192ED03ull) {
  const auto& names = projection_names();
  MIMIC_CHECK(!opt.targets.empty(), "EINVAL", "LoRA needs at least one target projection (",
              "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)");
  std::array<bool, 7> on{};
  for (const std::string& t : opt.targets) {
    auto it = std::find_if(names.begin(), names.end(), [&](const char* n) { return t == n; });
    MIMIC_CHECK(it != names.end(), "EINVAL", "unknown LoRA target \"", t,
                "\": use the short projection names q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj");
    on[it - names.begin()] = true;
  }
  MIMIC_CHECK(opt.r >= 1, "EINVAL", "LoRA rank r must be a positive integer (got ", opt.r, ")");
  MIMIC_CHECK(opt.alpha > 0.f && std::isfinite(opt.alpha), "EINVAL", "LoRA alpha must be a positive number (got ",
              opt.alpha, ")");
  MIMIC_CHECK(opt.dropout >= 0.f && opt.dropout < 1.f, "EINVAL", "LoRA dropout must be in [0, 1) (got ", opt.dropout,
              ")");
  for (size_t l = 0; l < model.layers.size(); ++l)
    for (int i = 0; i < 7; ++i) {
      if (!on[i]) continue;
      const Linear& L = proj(model.layers[l], i);
      MIMIC_CHECK(opt.r <= std::min(L.K, L.M), "EINVAL", "LoRA rank r = ", opt.r, " is larger than ", L.name, " [",
                  L.M, " x ", L.K, "] allows: use r <= ", std::min(L.K, L.M));
    }

  // Build every adapter first and attach them only when all are valid: a bad init leaves the
  // model as it was.
  std::vector<std::pair<Linear*, std::unique_ptr<LoraAdapter>>> made;
  size_t used = 0;
  for (size_t l = 0; l < model.layers.size(); ++l)
    for (int i = 0; i < 7; ++i) {
      if (!on[i]) continue;
      Linear& L = proj(model.layers[l], i);
      std::unique_ptr<LoraAdapter> a;
      if (init) {
        const std::string na = peft_name((int)l, names[i], true), nb = peft_name((int)l, names[i], false);
        auto ia = init->find(na), ib = init->find(nb);
        MIMIC_CHECK(ia != init->end() && ib != init->end(), "EINVAL", "the init adapter has no ",
                    ia == init->end() ? na : nb, ": it must hold lora_A and lora_B for every target of every layer");
        const size_t want_a = (size_t)opt.r * L.K, want_b = (size_t)L.M * opt.r;
        MIMIC_CHECK(ia->second.size() == want_a, "ESHAPE", "init tensor ", na, " has ", ia->second.size(),
                    " values; r x in_features = ", opt.r, " x ", L.K, " = ", want_a,
                    " expected (is the adapter's rank r = ", opt.r, "?)");
        MIMIC_CHECK(ib->second.size() == want_b, "ESHAPE", "init tensor ", nb, " has ", ib->second.size(),
                    " values; out_features x r = ", L.M, " x ", opt.r, " = ", want_b, " expected");
        for (const auto* t : {&ia->second, &ib->second})
          for (float x : *t)
            MIMIC_CHECK(std::isfinite(x), "EINVAL", "init tensor ", (t == &ia->second ? na : nb),
                        " holds a NaN or infinite value");
        a = std::make_unique<LoraAdapter>();
        a->r = opt.r;
        a->scale = opt.alpha / (float)opt.r;
        a->A = ia->second;
        a->B = ib->second;
        a->dA.assign(a->A.size(), 0.f);
        a->dB.assign(a->B.size(), 0.f);
        used += 2;
      } else {
        a = lora_init(L.M, L.K, opt.r, opt.alpha, lora_stream_seed(opt.seed, (int)l, i));
      }
      made.emplace_back(&L, std::move(a));
    }
  if (init && used != init->size()) {
    for (const auto& kv : *init) {
      bool known = false;
      for (size_t l = 0; l < model.layers.size() && !known; ++l)
        for (int i = 0; i < 7 && !known; ++i)
          known = on[i] && (kv.first == peft_name((int)l, names[i], true) || kv.first == peft_name((int)l, names[i], false));
      MIMIC_CHECK(known, "EINVAL", "the init adapter has a tensor \"", kv.first,
                  "\" that matches no LoRA target of this model (targets: ", [&] {
                    std::string s;
                    for (const auto& t : opt.targets) s += (s.empty() ? "" : " ") + t;
                    return s;
                  }(), ", ", model.layers.size(), " layers)");
    }
  }
  // The model's adapter becomes exactly this spec: projections outside the targets lose any
  // adapter attached before (setLora, an earlier trainer), so training and generation agree.
  for (auto& layer : model.layers)
    for (int i = 0; i < 7; ++i) proj(layer, i).lora.reset();
  for (auto& [L, a] : made) {
    attached_.emplace_back(L, a.get());
    L->lora = std::move(a);
  }
  for (size_t l = 0; l < model.layers.size(); ++l)
    for (int i = 0; i < 7; ++i) {
      if (!on[i]) continue;
      LoraAdapter& a = *proj(model.layers[l], i).lora;
      params_.push_back({peft_name((int)l, names[i], true), &a.A, &a.dA, std::vector<float>(a.A.size(), 0.f),
                         std::vector<float>(a.A.size(), 0.f)});
      params_.push_back({peft_name((int)l, names[i], false), &a.B, &a.dB, std::vector<float>(a.B.size(), 0.f),
                         std::vector<float>(a.B.size(), 0.f)});
    }
}

void Trainer::check_attached() const {
  for (const auto& [L, a] : attached_)
    MIMIC_CHECK(L->lora.get() == a, "EINVAL", "the adapter of ", L->name,
                " was replaced or removed (setLora/clearLora) after this trainer was created; create a new trainer");
}

void Trainer::release_gradients() {
  check_attached();
  for (Param& p : params_) release(*p.g);
}

// ---- inputs -----------------------------------------------------------------------------------

void Trainer::check_batch(const int32_t* ids, const int32_t* labels, int B, int T) const {
  MIMIC_CHECK(B >= 1 && T >= 1, "EINVAL", "a micro-batch needs batch >= 1 and seqLen >= 1 (got ", B, " x ", T, ")");
  const int V = model_.cfg.vocab_size;
  const int64_t N = (int64_t)B * T;
  for (int64_t n = 0; n < N; ++n) {
    MIMIC_CHECK(ids[n] >= 0 && ids[n] < V, "ERANGE", "token id ", ids[n], " at row ", n / T, ", position ", n % T,
                " is out of range: the model's vocabulary has ", V, " tokens (ids 0..", V - 1,
                "). Pad with a valid id (e.g. the eos id) and label padding -100.");
    MIMIC_CHECK(labels[n] == kIgnore || (labels[n] >= 0 && labels[n] < V), "ERANGE", "label ", labels[n], " at row ",
                n / T, ", position ", n % T, " is neither -100 (masked) nor a token id in 0..", V - 1);
  }
}

std::vector<int32_t> Trainer::shift_targets(const int32_t* labels, int B, int T, int64_t* tokens) const {
  std::vector<int32_t> target((size_t)B * T);
  int64_t count = 0;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      const int32_t y = t + 1 < T ? labels[(int64_t)b * T + t + 1] : kIgnore;
      target[(size_t)b * T + t] = y;
      count += y != kIgnore;
    }
  *tokens = count;
  return target;
}

void Trainer::embed(std::vector<float>& x, const int32_t* ids, int64_t N) const {
  x.resize((size_t)(N * model_.cfg.hidden_size));
  cpu::embedding_forward(x.data(), ids, model_.embed.data(), N, model_.cfg.hidden_size);
}

// ---- one decoder layer ------------------------------------------------------------------------

void Trainer::layer_forward(int l, LayerActs& a, float* out, int B, int T, bool save, bool train) {
  const LlamaConfig& c = model_.cfg;
  LlamaLayer& L = model_.layers[l];
  const int C = c.hidden_size, I = c.intermediate_size, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
  const int64_t N = (int64_t)B * T, NC = N * C;
  const float p = train ? opt_.dropout : 0.f;
  auto cache = [&](int i) { return save ? &a.cache[i] : nullptr; };

  a.xn1.resize((size_t)NC);
  a.rstd1.resize((size_t)N);
  cpu::rmsnorm_forward(a.xn1.data(), a.rstd1.data(), a.x.data(), L.input_norm.data(), N, C, c.rms_norm_eps);
  a.q.resize((size_t)(N * Hq * D));
  a.k.resize((size_t)(N * Hkv * D));
  a.v.resize((size_t)(N * Hkv * D));
  linear_forward(a.q.data(), a.xn1.data(), N, L.q, cache(0), p, a.seeds[0]);
  linear_forward(a.k.data(), a.xn1.data(), N, L.k, cache(1), p, a.seeds[1]);
  linear_forward(a.v.data(), a.xn1.data(), N, L.v, cache(2), p, a.seeds[2]);
  cpu::rope_forward(a.q.data(), pos_.data(), model_.inv_freq.data(), N, Hq, D);
  cpu::rope_forward(a.k.data(), pos_.data(), model_.inv_freq.data(), N, Hkv, D);
  a.att.resize((size_t)(N * Hq * D));
  a.lse.resize((size_t)(N * Hq));
  cpu::attention_forward(a.att.data(), save ? a.lse.data() : nullptr, a.q.data(), a.k.data(), a.v.data(), B, T, T, 0,
                         Hq, Hkv, D);
  if (!save) {
    release(a.xn1); release(a.q); release(a.k); release(a.v); release(a.lse);
  }
  a.h.resize((size_t)NC);
  linear_forward(a.h.data(), a.att.data(), N, L.o, cache(3), p, a.seeds[3]);
  add_into(a.h.data(), a.x.data(), NC);  // h = x + o_proj(att)
  if (!save) release(a.att);

  a.xn2.resize((size_t)NC);
  a.rstd2.resize((size_t)N);
  cpu::rmsnorm_forward(a.xn2.data(), a.rstd2.data(), a.h.data(), L.post_attn_norm.data(), N, C, c.rms_norm_eps);
  a.gate.resize((size_t)(N * I));
  a.up.resize((size_t)(N * I));
  a.act.resize((size_t)(N * I));
  linear_forward(a.gate.data(), a.xn2.data(), N, L.gate, cache(4), p, a.seeds[4]);
  linear_forward(a.up.data(), a.xn2.data(), N, L.up, cache(5), p, a.seeds[5]);
  cpu::swiglu_forward(a.act.data(), a.gate.data(), a.up.data(), N, I);
  if (!save) {
    release(a.xn2); release(a.gate); release(a.up);
  }
  if (!out) {  // a recompute: the layer's output is not needed again (its backward reads act, not down(act))
    LinearCache& dc = a.cache[6];  // so no down product: its backward rebuilds h = dropout(act)·Aᵀ itself
    dc.h.clear(); dc.x_drop.clear();
    dc.dropout = p; dc.dropout_seed = a.seeds[6];
    return;
  }
  linear_forward(out, a.act.data(), N, L.down, cache(6), p, a.seeds[6]);
  add_into(out, a.h.data(), NC);  // x' = h + down(act)
  if (!save) a.release_all_but_input();
}

void Trainer::layer_backward(int l, LayerActs& a, const float* dx_out, float* dx_in, int B, int T) {
  const LlamaConfig& c = model_.cfg;
  LlamaLayer& L = model_.layers[l];
  const int C = c.hidden_size, I = c.intermediate_size, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
  const int64_t N = (int64_t)B * T, NC = N * C, NQ = N * Hq * D, NKV = N * Hkv * D;

  // MLP
  std::vector<float> dact((size_t)(N * I), 0.f);
  linear_backward(dact.data(), dx_out, a.act.data(), N, L.down, &a.cache[6]);
  std::vector<float> dgate((size_t)(N * I), 0.f), dup((size_t)(N * I), 0.f);
  cpu::swiglu_backward(dgate.data(), dup.data(), dact.data(), a.gate.data(), a.up.data(), N, I);
  release(dact);
  std::vector<float> dxn2((size_t)NC, 0.f);
  linear_backward(dxn2.data(), dgate.data(), a.xn2.data(), N, L.gate, &a.cache[4]);
  linear_backward(dxn2.data(), dup.data(), a.xn2.data(), N, L.up, &a.cache[5]);
  release(dgate);
  release(dup);
  std::vector<float> dh(dx_out, dx_out + NC);  // the residual passes dx' straight through
  cpu::rmsnorm_backward(dh.data(), nullptr, dxn2.data(), a.h.data(), L.post_attn_norm.data(), a.rstd2.data(), N, C);
  release(dxn2);

  // attention
  std::vector<float> datt((size_t)NQ, 0.f);
  linear_backward(datt.data(), dh.data(), a.att.data(), N, L.o, &a.cache[3]);
  std::vector<float> dq((size_t)NQ, 0.f), dk((size_t)NKV, 0.f), dv((size_t)NKV, 0.f);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), a.q.data(), a.k.data(), a.v.data(),
                          a.att.data(), a.lse.data(), B, T, Hq, Hkv, D);
  release(datt);
  cpu::rope_backward(dq.data(), pos_.data(), model_.inv_freq.data(), N, Hq, D);
  cpu::rope_backward(dk.data(), pos_.data(), model_.inv_freq.data(), N, Hkv, D);
  if (!dx_in) {  // first layer: only the adapters' gradients are wanted
    linear_backward(nullptr, dq.data(), a.xn1.data(), N, L.q, &a.cache[0]);
    linear_backward(nullptr, dk.data(), a.xn1.data(), N, L.k, &a.cache[1]);
    linear_backward(nullptr, dv.data(), a.xn1.data(), N, L.v, &a.cache[2]);
    return;
  }
  std::vector<float> dxn1((size_t)NC, 0.f);
  linear_backward(dxn1.data(), dq.data(), a.xn1.data(), N, L.q, &a.cache[0]);
  linear_backward(dxn1.data(), dk.data(), a.xn1.data(), N, L.k, &a.cache[1]);
  linear_backward(dxn1.data(), dv.data(), a.xn1.data(), N, L.v, &a.cache[2]);
  add_into(dx_in, dh.data(), NC);
  cpu::rmsnorm_backward(dx_in, nullptr, dxn1.data(), a.x.data(), L.input_norm.data(), a.rstd1.data(), N, C);
}

// ---- head: final norm, lm_head, masked cross-entropy, in chunks of rows with a target ---------

double Trainer::head(const float* xL, const int32_t* target, int64_t N, float* dxL) {
  const LlamaConfig& c = model_.cfg;
  const int C = c.hidden_size;
  const int64_t V = c.vocab_size;
  std::vector<int64_t> rows;  // rows without a target contribute nothing: skip their logits
  for (int64_t n = 0; n < N; ++n)
    if (target[n] != kIgnore) rows.push_back(n);
  if (dxL) std::fill(dxL, dxL + N * C, 0.f);
  if (rows.empty()) return 0.0;
  int64_t R = opt_.head_chunk_rows > 0 ? opt_.head_chunk_rows : std::max<int64_t>(1, kHeadBytes / (V * 4));
  R = std::min<int64_t>(R, (int64_t)rows.size());
  const float* W = model_.lm_head_weight();
  std::vector<float> xr((size_t)(R * C)), xhat((size_t)(R * C)), rstd((size_t)R), logits((size_t)(R * V));
  std::vector<float> dxhat, dxr;
  std::vector<int32_t> tg((size_t)R);
  if (dxL) {
    dxhat.resize((size_t)(R * C));
    dxr.resize((size_t)(R * C));
  }
  double loss = 0.0;
  for (size_t r0 = 0; r0 < rows.size(); r0 += (size_t)R) {
    const int64_t n = std::min<int64_t>(R, (int64_t)(rows.size() - r0));
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(&xr[(size_t)(i * C)], xL + rows[r0 + i] * C, sizeof(float) * C);
      tg[(size_t)i] = target[rows[r0 + i]];
    }
    cpu::rmsnorm_forward(xhat.data(), rstd.data(), xr.data(), model_.final_norm.data(), n, C, c.rms_norm_eps);
    cpu::matmul_forward(logits.data(), xhat.data(), W, nullptr, n, C, (int)V);
    if (!dxL) {
      loss += cpu::cross_entropy_forward(logits.data(), tg.data(), n, V);
      continue;
    }
    // dlogits = softmax − onehot (gradient of the summed loss), in place over the logits.
    loss += cpu::cross_entropy_forward_backward(logits.data(), logits.data(), tg.data(), n, V, 1.f);
    std::fill(dxhat.begin(), dxhat.begin() + n * C, 0.f);
    cpu::matmul_backward(dxhat.data(), nullptr, logits.data(), xhat.data(), W, n, C, (int)V);
    std::fill(dxr.begin(), dxr.begin() + n * C, 0.f);
    cpu::rmsnorm_backward(dxr.data(), nullptr, dxhat.data(), xr.data(), model_.final_norm.data(), rstd.data(), n, C);
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(dxL + rows[r0 + i] * C, &dxr[(size_t)(i * C)], sizeof(float) * C);
  }
  return loss;
}

// ---- public entry points ----------------------------------------------------------------------

uint64_t micro_batch_seed(uint64_t seed, const MicroBatchKey& key) {
  const auto mix = [](uint64_t z) {  // splitmix64's finalizer
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  uint64_t h = mix(seed ^ 0x6A09E667F3BCC909ull);
  h = mix(h ^ key.step);
  h = mix(h ^ key.micro);
  return mix(h ^ key.part);
}

LossSum Trainer::accumulate(const int32_t* ids, const int32_t* labels, int B, int T, const MicroBatchKey* key) {
  check_attached();
  for (Param& p : params_)  // after release_gradients()
    if (p.g->size() != p.p->size()) p.g->assign(p.p->size(), 0.f);
  check_batch(ids, labels, B, T);
  LossSum out;
  const std::vector<int32_t> target = shift_targets(labels, B, T, &out.tokens);
  if (out.tokens == 0) return out;  // nothing in the loss: no gradient
  try {
    out.loss_sum = forward_backward(ids, target.data(), B, T, key);
  } catch (...) {
    zero_grad();  // a failure half-way (out of memory) must never leave a partial gradient to step on
    throw;
  }
  return out;
}

double Trainer::forward_backward(const int32_t* ids, const int32_t* target, int B, int T, const MicroBatchKey* key) {
  const LlamaConfig& c = model_.cfg;
  const int nl = c.num_layers, C = c.hidden_size;
  const int64_t N = (int64_t)B * T, NC = N * C;
  pos_.resize((size_t)N);
  for (int64_t n = 0; n < N; ++n) pos_[(size_t)n] = (int32_t)(n % T);

  // forward: acts[ℓ].x is layer ℓ's input; xL the last layer's output
  std::vector<LayerActs> acts((size_t)nl);
  std::vector<float> xL;
  embed(nl > 0 ? acts[0].x : xL, ids, N);
  // dropout seeds: from the micro-batch's key when given (data parallel: independent of the rank),
  // else the trainer's sequential stream
  Rng keyed(key ? micro_batch_seed(opt_.seed, *key) : 0);
  Rng& seeds = key ? keyed : rng_;
  for (int l = 0; l < nl; ++l) {
    for (int i = 0; i < 7; ++i) acts[l].seeds[i] = opt_.dropout > 0.f ? seeds.next() : 0;
    std::vector<float>& next = l + 1 < nl ? acts[l + 1].x : xL;
    next.resize((size_t)NC);
    layer_forward(l, acts[l], next.data(), B, T, /*save=*/!opt_.recompute, /*train=*/true);
  }

  // head, then backward layer by layer
  std::vector<float> dx((size_t)NC), dx_below;
  const double loss_sum = head(xL.data(), target, N, dx.data());
  release(xL);
  for (int l = nl - 1; l >= 0; --l) {
    if (opt_.recompute) {  // gradient checkpointing: rebuild this layer's activations from its input
      layer_forward(l, acts[l], /*out=*/nullptr, B, T, /*save=*/true, /*train=*/true);
    }
    if (l > 0) dx_below.assign((size_t)NC, 0.f);
    layer_backward(l, acts[l], dx.data(), l > 0 ? dx_below.data() : nullptr, B, T);
    acts[l] = LayerActs();  // this layer's memory is done
    dx.swap(dx_below);
  }
  return loss_sum;
}

LossSum Trainer::evaluate(const int32_t* ids, const int32_t* labels, int B, int T) {
  check_attached();
  check_batch(ids, labels, B, T);
  LossSum out;
  const std::vector<int32_t> target = shift_targets(labels, B, T, &out.tokens);
  if (out.tokens == 0) return out;
  const LlamaConfig& c = model_.cfg;
  const int64_t N = (int64_t)B * T, NC = N * c.hidden_size;
  pos_.resize((size_t)N);
  for (int64_t n = 0; n < N; ++n) pos_[(size_t)n] = (int32_t)(n % T);
  LayerActs a;
  embed(a.x, ids, N);
  std::vector<float> y((size_t)NC);
  for (int l = 0; l < c.num_layers; ++l) {
    a.seeds.fill(0);
    layer_forward(l, a, y.data(), B, T, /*save=*/false, /*train=*/false);
    a.x.swap(y);
  }
  out.loss_sum = head(a.x.data(), target.data(), N, nullptr);
  return out;
}

void Trainer::zero_grad() {
  check_attached();
  for (Param& p : params_) std::fill(p.g->begin(), p.g->end(), 0.f);
}

double Trainer::step(const StepOptions& o) {
  check_attached();
  for (Param& p : params_)
    if (p.g->size() != p.p->size()) p.g->assign(p.p->size(), 0.f);
  MIMIC_CHECK(std::isfinite(o.grad_scale) && o.grad_scale > 0.f, "EINVAL",
              "gradScale must be a positive number (1 / unmasked tokens of the accumulated batch), got ", o.grad_scale);
  MIMIC_CHECK(o.max_grad_norm >= 0.f, "EINVAL", "maxGradNorm must be >= 0 (0 = no clipping), got ", o.max_grad_norm);
  const AdamWParams& h = o.adamw;
  MIMIC_CHECK(h.lr >= 0.f && std::isfinite(h.lr), "EINVAL", "lr must be a finite number >= 0, got ", h.lr);
  MIMIC_CHECK(h.beta1 >= 0.f && h.beta1 < 1.f && h.beta2 >= 0.f && h.beta2 < 1.f, "EINVAL",
              "AdamW betas must be in [0, 1), got ", h.beta1, ", ", h.beta2);
  MIMIC_CHECK(h.eps > 0.f, "EINVAL", "AdamW eps must be > 0, got ", h.eps);
  MIMIC_CHECK(h.weight_decay >= 0.f, "EINVAL", "weight decay must be >= 0, got ", h.weight_decay);

  double sq = 0.0;
  for (Param& p : params_)
    for (float& g : *p.g) {
      g *= o.grad_scale;
      sq += (double)g * g;
    }
  const double norm = std::sqrt(sq);
  if (!std::isfinite(norm)) zero_grad();
  MIMIC_CHECK(std::isfinite(norm), "ENONFINITE", "the gradient holds NaN or infinite values (step ", step_ + 1,
              "): the adapter was not updated and the gradients were dropped; lower the learning rate or check the data");
  if (o.max_grad_norm > 0.f) {
    // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied when it is < 1.
    const double coef = (double)o.max_grad_norm / (norm + 1e-6);
    if (coef < 1.0)
      for (Param& p : params_)
        for (float& g : *p.g) g *= (float)coef;
  }
  ++step_;
  for (Param& p : params_) cpu::adamw_step(p.p->data(), p.g->data(), p.m.data(), p.v.data(), (int64_t)p.p->size(), h, step_);
  zero_grad();
  return norm;
}

}  // namespace mimic
