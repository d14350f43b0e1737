// session (addon) — NativeSession of lib/native.ts: one sequence being generated, with its own
// KV cache and seeded RNG over a shared model. next() runs the new tokens through the model
// (appending to the cache) and samples one token, on a libuv thread.
#pragma once
#include <napi.h>

#include <atomic>
#include <memory>

#include "engine/llama.h"
#include "ops/sampling.h"

#ifdef MIMIC_CUDA
namespace mimic::cuda {
struct DeviceKV;
}
#endif

namespace mimic::addon {

struct ModelState;

struct SessionState {
  std::shared_ptr<ModelState> model;
  KVCache cache;                // on device 'cuda' only its len/max_len are used (the counters)
#ifdef MIMIC_CUDA
  std::shared_ptr<cuda::DeviceKV> gpu_kv;  // device 'cuda': the K/V rows on the GPU
#endif
  Rng rng;
  uint64_t lora_version = 0;    // adapter the cached K/V were computed with
#ifdef MIMIC_CUDA
  // The step run ahead (device 'cuda', MIMIC_RUN_AHEAD != 0): once next() has sampled `token` at cache
  // length `len`, the decode graph for that token is launched before returning, so the GPU computes it
  // while JavaScript handles the token. The next next() with exactly [token] at that length (same
  // cache, model and adapter) only samples its logits; anything else ignores it (its K/V row at `len`
  // is overwritten by whichever step comes next). Set by next(); cleared by next(), nextBatch(), reset()
  // and _release() (forget_ahead()).
  struct Ahead {
    int len = -1;
    int32_t token = 0;
    float* logits = nullptr;
    const cuda::DeviceKV* kv = nullptr;
    uint64_t model_uid = 0, device_lora = 0;
  } ahead;
  // This session's row in the batched step run ahead (cuda::decode_batch_ahead, launched by a
  // nextBatch() for the tokens it returned): taken by the next nextBatch() that brings exactly
  // `token` at cache length `len` while `ticket` is still the model's last batched forward. Set by
  // nextBatch(); cleared with `ahead` (forget_ahead()).
  struct BatchAhead {
    uint64_t ticket = 0;
    int row = -1, len = -1;
    int32_t token = 0;
    const cuda::DeviceKV* kv = nullptr;
  } batch_ahead;
  void forget_ahead() {
    ahead.len = -1;
    batch_ahead.ticket = 0;
  }
#endif
  std::atomic<bool> busy{false};
  explicit SessionState(uint64_t seed) : rng(seed) {}
  ~SessionState();              // device 'cuda': gives the KV cache back to the model's pool
};

class Session : public Napi::ObjectWrap<Session> {
 public:
  static Napi::Function Init(Napi::Env env);
  static Napi::Object NewInstance(Napi::Env env, std::shared_ptr<SessionState> state);
  explicit Session(const Napi::CallbackInfo& info);
  const std::shared_ptr<SessionState>& state() const { return state_; }  // addon/batch.cpp

 private:
  Napi::Value Length(const Napi::CallbackInfo& info);
  Napi::Value MaxLength(const Napi::CallbackInfo& info);
  Napi::Value Next(const Napi::CallbackInfo& info);
  Napi::Value Reset(const Napi::CallbackInfo& info);
  Napi::Value Release(const Napi::CallbackInfo& info);
  std::shared_ptr<SessionState> state_;
};

#ifdef MIMIC_CUDA
// MIMIC_RUN_AHEAD=0 turns the steps run ahead off (next()'s and nextBatch()'s; the A/B leg). Read per call.
bool RunAhead();
#endif

// Reads a NativeSamplingOptions object; throws EINVAL naming the bad field.
SamplingParams ReadSampling(Napi::Env env, Napi::Value v);

}  // namespace mimic::addon
