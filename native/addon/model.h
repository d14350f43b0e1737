// model (addon) — NativeModel of lib/native.ts: loaded weights, logits, sessions, LoRA adapters.
//
// Concurrency: every call that touches the weights holds ModelState::mu. Async calls (logits,
// session.next) wait for it on their libuv thread, so calls on one model run one after another
// and never interleave. Synchronous calls that would change the weights (setLora, clearLora)
// never block the event loop: while an async call is running they throw EBUSY instead.
// dispose() during a running call frees the weights as soon as that call finishes.
#pragma once
#include <napi.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "engine/llama.h"

namespace mimic::addon {

struct ModelState {
  std::unique_ptr<LlamaModel> model;  // null once disposed
  LlamaConfig cfg;                    // kept after dispose so `config` stays readable
  std::string device = "cpu", quant = "none";
  std::mutex mu;
  std::atomic<bool> dispose_requested{false};
  std::atomic<uint64_t> lora_version{0};  // bumped on every adapter change (sessions check it)

  // With mu held: throws EDISPOSED when the weights are gone; frees them if dispose was requested.
  LlamaModel& weights();
  void dispose_if_requested();
};

class Model : public Napi::ObjectWrap<Model> {
 public:
  static Napi::Function Init(Napi::Env env);
  static Napi::Object NewInstance(Napi::Env env, std::shared_ptr<ModelState> state);
  explicit Model(const Napi::CallbackInfo& info);

 private:
  Napi::Value Config(const Napi::CallbackInfo& info);
  Napi::Value Device(const Napi::CallbackInfo& info);
  Napi::Value Quant(const Napi::CallbackInfo& info);
  Napi::Value Logits(const Napi::CallbackInfo& info);
  Napi::Value CreateSession(const Napi::CallbackInfo& info);
  Napi::Value SetLora(const Napi::CallbackInfo& info);
  Napi::Value GetLora(const Napi::CallbackInfo& info);
  Napi::Value ClearLora(const Napi::CallbackInfo& info);
  Napi::Value CreateTrainer(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value LogitsCached(const Napi::CallbackInfo& info);

  std::shared_ptr<ModelState> state_;
};

// loadModel(dir, options) → Promise<NativeModel>.
Napi::Value LoadModel(const Napi::CallbackInfo& info);

}  // namespace mimic::addon
