// llama_cuda — the CUDA engine: a LlamaModel's weights on the GPU (bf16, or NF4 that stays 4-bit),
// its forward for logits and KV-cached decoding, and LoRA training that mirrors engine/train.h.
//
// Ownership: the CPU LlamaModel stays the source of truth for config, names and LoRA bookkeeping
// (engine/train.h's Trainer attaches adapters and keeps their PEFT names and AdamW moments);
// DeviceModel holds the device copies. LoRA tensors live in one fp32 arena on the GPU (params,
// grads, exp_avg, exp_avg_sq, and a bf16 copy for the GEMMs); pull()/push() move them to and
// from the CPU model when JS asks for state, gradients or an adapter.
//
// Training stages (as train.h): embed → layers (x^ℓ kept; the rest recomputed per layer in the
// backward when recompute is on, else saved) → final norm + lm_head + cross-entropy over the rows
// with a target, chunk by chunk (never N × V logits) → layers backward (dA, dB accumulate) → step.
// Dropout on the LoRA input uses a counter-based hash mask (regenerated in the backward), not the
// CPU's sequential Rng stream: same distribution, different draws.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/cuda_ops.h"
#include "engine/llama.h"
#include "engine/train.h"
#include "core/opcheck.h"

namespace mimic::cuda {

struct DLinear {
  int M = 0, K = 0;
  bool is_nf4 = false;
  DevBuf<bf16> W;            // dense base [M, K]
  NF4Device nf4;             // 4-bit base
  const LoraAdapter* src = nullptr;  // the CPU adapter mirrored in the arena (null: none)
  int r = 0;
  float scale = 0.f;
  int64_t offA = -1, offB = -1;      // offsets into the LoRA arena
};

struct DLayer {
  DevBuf<float> in_norm, post_norm;
  std::array<DLinear, 7> proj;       // q k v o gate up down
};

struct DeviceKV;

// Freed KV caches of one model, kept for the next session instead of ~2·layers cudaFree +
// cudaMalloc (≈ 14 ms of a cold 3B TTFT): a new session takes the smallest pooled cache that
// holds its maxLength, with its captured decode graph (the graph's cache rows are the same).
// Bounded by `budget` bytes (MIMIC_KV_POOL_MB; default min(4 GiB, device memory / 8)); a cache
// that does not fit is freed. Thread-safe: sessions are given back from JS finalizers (main
// thread) while steps run on worker threads.
struct KVPool {
  std::mutex mu;
  std::vector<std::shared_ptr<DeviceKV>> free;
  size_t bytes = 0, budget = 0;
  uint64_t hits = 0, misses = 0;
};

struct DeviceModel {
  LlamaConfig cfg;
  DevBuf<bf16> embed, lm_head;       // lm_head empty when tied
  DevBuf<float> final_norm, inv_freq;
  std::vector<DLayer> layers;
  // LoRA arena
  int64_t lora_n = 0;
  DevBuf<float> lp, lg, lm, lv;
  DevBuf<bf16> lb;                   // bf16 copy of lp for the GEMMs
  bool has_lora() const { return lora_n > 0; }
  size_t weight_bytes = 0;           // base weights on the GPU
  uint64_t lora_version = 0;         // bumped by sync_lora_to_device (the adapter layout may have changed)
  uint64_t uid = next_uid();         // tells captured decode graphs which model they belong to
  static uint64_t next_uid() { static std::atomic<uint64_t> n{0}; return ++n; }
  std::shared_ptr<struct Workspace> ws;  // grow-only activation/scratch buffers (no cudaMalloc per step once warm)
  std::shared_ptr<KVPool> kv_pool = std::make_shared<KVPool>();
  std::shared_ptr<struct BatchDecode> batch;  // decode_batch_cuda.cu: buffers + a graph per batch size
  const bf16* head() const { return lm_head.n ? lm_head.p : embed.p; }
};

// Uploads the base weights (NF4 projections stay 4-bit) and the attached adapters.
std::unique_ptr<DeviceModel> upload_model(const LlamaModel& m);
// Loads config.json + safetensors from dir straight onto the GPU (native/cuda/load_cuda.cu):
// bf16 weights, or NF4 quantized on the GPU (the same bytes as the CPU's nf4_quantize). *skeleton
// receives the CPU-side LlamaModel with config, norms, inv_freq and each Linear's name and shape
// but no weights — the LoRA bookkeeping (setLora, the CPU Trainer's params) lives there.
std::unique_ptr<DeviceModel> load_model(const std::string& dir, bool quant_nf4, std::unique_ptr<LlamaModel>* skeleton);
// Rebuilds the LoRA arena from the CPU model's Linear::lora (after setLora/clearLora/new trainer).
void sync_lora_to_device(DeviceModel& d, const LlamaModel& m);
// Copies the arena's A/B (and dA/dB when grads) back into the CPU model's adapters.
void sync_lora_to_host(DeviceModel& d, LlamaModel& m, bool grads);

struct DeviceKV {
  int max_len = 0, len = 0;
  std::vector<DevBuf<bf16>> k, v;    // per layer [max_len, Hkv·D]
  std::shared_ptr<struct DecodeGraph> graph;  // the captured T = 1 step (decode_step.cu); rebuilt when stale
  std::weak_ptr<KVPool> pool;        // where kv_release gives it back (set by kv_acquire)
  void init(const LlamaConfig& cfg, int max_len);
  size_t bytes() const;
};

// A cache for at least max_len tokens (len 0): from the model's pool when one fits, else a new one
// (max_len rounded up to 256 so that later sessions of other lengths can reuse it).
std::shared_ptr<DeviceKV> kv_acquire(DeviceModel& d, int max_len);
// Gives a cache back to the pool it came from (or frees it: no pool, the model gone, over budget).
void kv_release(std::shared_ptr<DeviceKV> kv);

// One decoding step for S sequences of one model (native/cuda/decode_batch_cuda.cu): sequences
// with one new token run together (every projection's weights read once per 16 rows, attention
// per sequence against its own cache, one CUDA graph per batch size); sequences with a chunk of
// prompt run through llama_forward one by one. Then each samples its token with its own
// parameters, history and RNG — bit for bit what stepping it alone would give. The caller has
// validated ids, capacity and distinct caches (addon/batch.cpp); kv->len advances.
struct DeviceDecodeSeq {
  DeviceKV* kv = nullptr;
  const int32_t* ids = nullptr;
  int n_ids = 0;
  SamplingParams params;
  const int32_t* history = nullptr;
  int64_t n_history = 0;
  Rng* rng = nullptr;
  int ahead_row = -1;  // this one-token row's row in the step run ahead (decode_batch_ahead), or -1
};
// ahead: the ticket decode_batch_ahead returned (0: none); rows with ahead_row >= 0 are sampled from
// that step's logits when it is still the last batched forward, and the rest run as usual.
void decode_batch(DeviceModel& d, const DeviceDecodeSeq* seqs, int S, int32_t* tokens, uint64_t ahead = 0);
// The forward half for S one-token sequences: fp32 logits [S, V] on the device (valid until the
// next call), every kv->len advanced by one.
const float* decode_batch_logits(DeviceModel& d, DeviceKV* const* kvs, const int32_t* ids, int S);
// The batched step run ahead (addon/batch.cpp): right after a nextBatch() sampled `ids`, the forward
// for exactly those tokens is launched without waiting, so the GPU computes the next step while
// JavaScript handles these tokens; kv->len stays (the rows are taken by decode_batch when the tokens
// come back). Launched only where this width's graph is already captured (a capture would delay the
// tokens at hand) and every cache has room; returns its ticket, or 0 when nothing was launched.
uint64_t decode_batch_ahead(DeviceModel& d, DeviceKV* const* kvs, const int32_t* ids, int S);
// The ticket of the last batched forward (0: none yet, or its logits already sampled).
uint64_t decode_batch_ticket(const DeviceModel& d);

// One token appended to kv (T = 1) as a single CUDA graph launch (native/cuda/decode_step.cu):
// fused NF4/bf16 GEMVs, no cuBLAS, no host allocation. Returns the fp32 logits [V] on the device
// (valid until the next step on this kv), or nullptr when the fast path does not apply (then the
// caller runs the eager forward). Does not validate id or capacity: llama_forward does.
float* decode_step(DeviceModel& d, int32_t id, DeviceKV& kv);
// True when decode_step would launch kv's captured graph as it is (no capture first).
bool decode_step_ready(const DeviceModel& d, const DeviceKV& kv);
// Forces programmatic dependent launches in the decode graph on (1) or off (0), or back to
// MIMIC_DECODE_PDL (-1); graphs are re-recorded at their next step. For the checks.
void decode_pdl_override(int mode);
// The same for RoPE + the KV append folded into the decode graph's q/k/v launch (MIMIC_DECODE_FUSE).
void decode_fuse_override(int mode);
// The same for the two RMSNorms of a layer folded into the q/k/v and gate/up launches (gemv_tc.h's
// GemvNorm; MIMIC_DECODE_NORM_FOLD): not the bits of the unfolded step — checks that compare the
// graph with other paths bit for bit turn it off.
void decode_norm_fold_override(int mode);
// The decode step's in-graph timeline (pdl.h's markers; PDL graphs only): decode_trace(true) makes
// the next recorded graphs carry a marker after every kernel; decode_trace_read() gives, for the
// last step run, each kernel's name and the globaltimer stamps (ns) of its marker becoming
// resident and of the kernel having completed. For cuda_check's profile, not for serving.
struct DecodeTraceRow {
  std::string kernel;
  double resident_ns, done_ns;
};
void decode_trace(bool on);
// Every decode graph is re-recorded at its next step (after an environment switch changed; A/B legs).
void decode_graph_invalidate();
std::vector<DecodeTraceRow> decode_trace_read();

// T tokens of one sequence (appended to the cache when given). logits: host [n_logits, V] fp32 for
// the last n_logits positions; or, with logits == nullptr, the last row stays on the device and
// is returned (fp32 [V], valid until the next call) for sample_token.
float* llama_forward(DeviceModel& d, const int32_t* ids, int T, DeviceKV* cache, float* logits, int n_logits);

// Frees the model's training workspace — every layer's activations, the kept attention, the backward's
// buffers (GiBs for a 3B at 8×512) — once its trainer is gone; a later prompt forward or trainer makes
// what it needs again (the same bits). The caller holds the model (no call of it may be running).
void release_workspace(DeviceModel& d);

// LoRA training on the GPU over the adapters that `cpu` (engine/train.h) attached to its model.
class DeviceTrainer {
 public:
  DeviceTrainer(DeviceModel& d, Trainer& cpu);
  // key: as Trainer::accumulate (engine/train.h) — the dropout masks from (seed, key) alone.
  LossSum accumulate(const int32_t* ids, const int32_t* labels, int B, int T, const MicroBatchKey* key = nullptr);
  LossSum evaluate(const int32_t* ids, const int32_t* labels, int B, int T);
  double step(const StepOptions& o);
  void zero_grad();
  // Device → the CPU trainer's params (A, B, dA, dB, exp_avg, exp_avg_sq) / and back.
  void pull();
  void push();
  size_t peak_bytes() const { return peak_; }

 private:
  LossSum run(const int32_t* ids, const int32_t* labels, int B, int T, bool train, const MicroBatchKey* key = nullptr);
  DeviceModel& d_;
  Trainer& cpu_;
  std::vector<std::pair<int64_t, int64_t>> param_off_;  // (offset, size) per cpu_.params() entry
  uint64_t dropout_calls_ = 0;
  size_t peak_ = 0;
};

// Registered as the "cuda" rows of the op harness (core/opcheck.h).
std::vector<OpCheckRow> cuda_op_checks();

}  // namespace mimic::cuda
