// train — LoRA training of a Llama model over a frozen base (fp32 or NF4), on the CPU.
//
// One micro-batch is B right-padded rows of T tokens: ids[B, T], labels[B, T] (aligned with ids,
// -100 = masked: prompt and padding). As transformers' causal-LM loss, labels are shifted inside:
//   target[b, t] = labels[b, t + 1] (t < T − 1),  target[b, T − 1] = −100
//   lossSum = Σ_{target != −100} (logsumexp(logits[b, t]) − logits[b, t, target]),  tokens = #unmasked
// The mean loss is lossSum / tokens; across micro-batches the caller sums both and passes
// gradScale = 1 / Σ tokens to step(), so accumulation over micro-batches equals one big batch.
//
// Stages (one function each in train.cpp; the CUDA twin mirrors them):
//   embed        x⁰ = embed[ids]                                                    [N, C]
//   layer ℓ      forward with saved activations (LayerActs), or only xˡ when recompute is on
//   head         x̂ = rmsnorm(x^L)·w_f; logits = x̂ · lm_headᵀ in chunks of rows that have a target
//                (never all N × V logits), fused cross-entropy forward + backward → dx̂
//   layer ℓ back from dxˡ⁺¹ to dxˡ, accumulating dA, dB of its adapters (base never written)
//   step         g ← gradScale · g; global L2 norm; clip (torch clip_grad_norm_); AdamW; zero g
// All LoRA parameters live in the model's Linear::lora (the trainer attaches them), so the model
// generates with the adapter being trained.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/linear.h"
#include "engine/llama.h"
#include "ops/adamw.h"
#include "ops/sampling.h"

namespace mimic {

struct TrainerOptions {
  int r = 16;
  float alpha = 32.f;
  float dropout = 0.05f;
  std::vector<std::string> targets;  // short names: q_proj ... down_proj
  uint64_t seed = 0;
  bool recompute = false;
  // Rows of logits computed at once in the head (each row is V floats).
  int64_t head_chunk_rows = 0;       // 0: as many as fit in ~64 MiB
};

struct StepOptions {
  AdamWParams adamw;
  float max_grad_norm = 0.f;  // 0: no clipping
  float grad_scale = 1.f;
};

struct LossSum {
  double loss_sum = 0.0;
  int64_t tokens = 0;
};

// Where a micro-batch sits in the run: its optimizer step (0-based, counted over the whole run),
// its index among that step's micro-batches, and — when data parallelism split the micro-batch's
// rows across ranks — which part (0 otherwise). accumulate() with a key draws the dropout masks
// from micro_batch_seed(seed, key) alone: the same micro-batch gets the same masks whichever
// rank runs it and however many micro-batches that rank ran before (lib/train/finetune.ts passes
// it; docs/distributed.md). Without a key the masks come from the trainer's sequential Rng.
struct MicroBatchKey {
  uint64_t step = 0;
  uint64_t micro = 0;
  uint64_t part = 0;
};

// splitmix64 chained over (seed, step, micro, part): the dropout seed of one micro-batch.
uint64_t micro_batch_seed(uint64_t seed, const MicroBatchKey& key);

// PEFT's name of a projection's adapter tensor, e.g.
// "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight".
std::string peft_name(int layer, const std::string& proj, bool is_a);

// The seven projection names in PEFT order; index = position in this list.
const std::array<const char*, 7>& projection_names();

// Everything the backward of one decoder layer needs from its forward.
struct LayerActs {
  std::vector<float> x;             // layer input xˡ                      [N, C]
  std::vector<float> xn1, rstd1;    // rmsnorm(x)·w_in, its 1/rms          [N, C], [N]
  std::vector<float> q, k, v;       // projections, q and k after RoPE     [N, Hq·D], [N, Hkv·D] ×2
  std::vector<float> att, lse;      // attention output, log-sum-exp       [N, Hq·D], [B, Hq, T]
  std::vector<float> h;             // x + o_proj(att)  (mid residual)     [N, C]
  std::vector<float> xn2, rstd2;    // rmsnorm(h)·w_post, its 1/rms        [N, C], [N]
  std::vector<float> gate, up, act; // gate_proj, up_proj, silu(gate)·up   [N, I] ×3
  std::array<LinearCache, 7> cache; // per projection (q k v o gate up down)
  std::array<uint64_t, 7> seeds{};  // dropout seeds, reused when the layer is recomputed
  void release_all_but_input();
};

class Trainer {
 public:
  // Attaches adapters to `targets` of every layer of `model`, replacing the model's whole
  // adapter (projections outside the targets are left without one):
  // from `init` (PEFT names → values) when given, else fresh (lora_init.h). Throws mimic::Error
  // on unknown targets, a rank larger than min(K, M) of a target, or init tensors that are
  // missing, unexpected or of the wrong size.
  Trainer(LlamaModel& model, const TrainerOptions& opt,
          const std::map<std::string, std::vector<float>>* init = nullptr);
  ~Trainer() = default;  // never touches the model: it may already be gone

  // Throws EINVAL when the model's adapters are no longer the ones this trainer attached
  // (setLora/clearLora since): every entry point below checks it first.
  void check_attached() const;
  // Frees the gradient buffers in the model's adapters (training is over; the model lives on).
  void release_gradients();

  // Forward + backward of one micro-batch; dA/dB accumulate the gradient of lossSum. Should it
  // fail half-way (out of memory), every accumulated gradient is zeroed before the error
  // propagates: a later step never uses a partial gradient. With `key` the dropout masks are
  // those of micro_batch_seed(seed, *key) (the Rng is not advanced); without, the next draws of rng().
  LossSum accumulate(const int32_t* ids, const int32_t* labels, int B, int T, const MicroBatchKey* key = nullptr);
  // Masked loss only: no gradients, no dropout.
  LossSum evaluate(const int32_t* ids, const int32_t* labels, int B, int T);
  // Scale, clip, AdamW, zero gradients. Returns the global gradient norm before clipping.
  double step(const StepOptions& opt);
  void zero_grad();

  // Parameters in PEFT-name order (layer, then q k v o gate up down, then A before B).
  struct Param {
    std::string name;       // PEFT name
    std::vector<float>* p;  // the model's A or B
    std::vector<float>* g;  // its gradient
    std::vector<float> m, v;  // AdamW exp_avg, exp_avg_sq
  };
  std::vector<Param>& params() { return params_; }
  int step_count() const { return step_; }
  void set_step_count(int s) { step_ = s; }
  Rng& rng() { return rng_; }
  const TrainerOptions& options() const { return opt_; }
  LlamaModel& model() { return model_; }

 private:
  void check_batch(const int32_t* ids, const int32_t* labels, int B, int T) const;
  std::vector<int32_t> shift_targets(const int32_t* labels, int B, int T, int64_t* tokens) const;
  void embed(std::vector<float>& x, const int32_t* ids, int64_t N) const;
  // embed → layers (saving or checkpointing) → head → layers backward; returns lossSum.
  double forward_backward(const int32_t* ids, const int32_t* target, int B, int T, const MicroBatchKey* key);
  // Runs layer ℓ on acts.x (input) producing out; with `save` every activation and linear cache
  // stays in acts, else scratch is released as soon as it is dead. out null (a recompute before the
  // layer's backward): everything but the output — no down product, the backward rebuilds its h.
  void layer_forward(int l, LayerActs& acts, float* out, int B, int T, bool save, bool train);
  // dx_out → dx_in (dx_in may be null: the first layer's input needs no gradient).
  void layer_backward(int l, LayerActs& acts, const float* dx_out, float* dx_in, int B, int T);
  // Final norm + lm_head + masked cross-entropy over rows with a target; with dx non-null also
  // the gradient of lossSum with respect to the final hidden state x^L.
  double head(const float* xL, const int32_t* target, int64_t N, float* dxL);

  LlamaModel& model_;
  TrainerOptions opt_;
  std::vector<Param> params_;
  std::vector<std::pair<const Linear*, const LoraAdapter*>> attached_;
  std::vector<int32_t> pos_;  // scratch: positions of a [B, T] batch
  Rng rng_;
  int step_ = 0;
};

}  // namespace mimic
