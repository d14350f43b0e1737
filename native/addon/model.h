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

#ifdef MIMIC_CUDA
namespace mimic::cuda {
struct DeviceModel;
}
#endif

namespace mimic::addon {

struct ModelState {
  std::unique_ptr<LlamaModel> model;  // null once disposed
  LlamaConfig cfg;                    // kept after dispose so `config` stays readable
  std::string device = "cpu", quant = "none";
  std::mutex mu;
  std::atomic<bool> dispose_requested{false};
  std::atomic<uint64_t> lora_version{0};  // bumped on every adapter change (sessions check it)

  // With mu held: throws EDISPOSED when the weights are gone; frees them if dispose was requested.
  // On device 'cuda', `model` is a skeleton (config, norms, shapes, the LoRA adapters' CPU copy)
  // and the weights live in `gpu`.
  LlamaModel& weights();
  void dispose_if_requested();
  void free_weights();

#ifdef MIMIC_CUDA
  std::shared_ptr<cuda::DeviceModel> gpu;  // set on device 'cuda'
  // The LoRA arena on the GPU mirrors the CPU adapters of lora_version gpu_lora_version. Adapter
  // changes made on the CPU (setLora, clearLora, createTrainer) bump lora_version only, and the
  // next GPU call re-uploads; changes made on the GPU (a trainer's step, setState's push) set both
  // versions and mark the CPU copy stale, so getLora/adapter() read the GPU first.
  uint64_t gpu_lora_version = 0;
  bool host_lora_stale = false;
  // With mu held: the device model with its LoRA arena current.
  cuda::DeviceModel& device_model();
  // With mu held: copies trained A/B back into the CPU adapters when the GPU is ahead.
  void pull_lora();
#endif
  bool on_gpu() const {
#ifdef MIMIC_CUDA
    return gpu != nullptr;
#else
    return false;
#endif
  }
};

// One async call's hold on the model (on its libuv thread): ModelState::mu for the whole call,
// and — when dispose() came while it ran — the weights freed as it ends, on success and on error
// alike (the destructor body runs before the lock is released).
class ModelCall {
 public:
  explicit ModelCall(ModelState& s) : s_(s), lock_(s.mu) {}
  ~ModelCall() { s_.dispose_if_requested(); }
  ModelCall(const ModelCall&) = delete;
  ModelCall& operator=(const ModelCall&) = delete;

 private:
  ModelState& s_;
  std::lock_guard<std::mutex> lock_;
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
  Napi::Value NextBatch(const Napi::CallbackInfo& info);  // addon/batch.cpp

  std::shared_ptr<ModelState> state_;
};

// loadModel(dir, options) → Promise<NativeModel>.
Napi::Value LoadModel(const Napi::CallbackInfo& info);

}  // namespace mimic::addon
