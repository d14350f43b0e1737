// trainer (addon) — NativeTrainer of lib/native.ts over engine/train.h.
//
// JS values in, checked once here (types, lengths, integer-ness) so that a mistake reads as
// "labels has 23 values, batch × seqLen = 24" rather than a crash; the engine checks the
// values (ids in range, rank vs. layer size). accumulate/evaluate/step copy their inputs and
// run on a libuv thread holding the model's mutex. Tensors cross as Float32Array copies under
// PEFT names ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").
#include "addon/trainer.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "addon/args.h"
#include "addon/data.h"
#include "addon/errors.h"
#include "addon/hooks.h"
#include "addon/model.h"
#include "core/error.h"
#include "dist/nccl_comm.h"
#include "engine/train.h"

#ifdef MIMIC_CUDA
#include "cuda/llama_cuda.h"
#endif

namespace mimic::addon {
namespace {

// ---- one trainer per model --------------------------------------------------------------------

std::mutex g_registry_mu;
std::set<const ModelState*> g_registry;

// ---- the wrapped trainer ----------------------------------------------------------------------

struct Pending {  // handed from MakeTrainer to the JS constructor through an External
  std::shared_ptr<ModelState> state;
  std::unique_ptr<Trainer> trainer;
#ifdef MIMIC_CUDA
  std::unique_ptr<cuda::DeviceTrainer> gpu;
#endif
};

class TrainerWrap : public Napi::ObjectWrap<TrainerWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Trainer",
                       {InstanceMethod<&TrainerWrap::Accumulate>("accumulate"),
                        InstanceMethod<&TrainerWrap::Evaluate>("evaluate"),
                        InstanceMethod<&TrainerWrap::Step>("step"),
                        InstanceMethod<&TrainerWrap::Gradients>("gradients"),
                        InstanceMethod<&TrainerWrap::ZeroGrad>("zeroGrad"),
                        InstanceMethod<&TrainerWrap::GetState>("getState"),
                        InstanceMethod<&TrainerWrap::SetState>("setState"),
                        InstanceMethod<&TrainerWrap::Adapter>("adapter"),
                        InstanceMethod<&TrainerWrap::Dispose>("dispose"),
                        // data-parallel training (lib/train/distributed/)
                        InstanceMethod<&TrainerWrap::SetGradients>("setGradients"),
                        InstanceMethod<&TrainerWrap::NcclInit>("ncclInit"),
                        InstanceMethod<&TrainerWrap::NcclAllReduce>("ncclAllReduce"),
                        InstanceMethod<&TrainerWrap::NcclAbort>("ncclAbort"),
                        InstanceMethod<&TrainerWrap::NcclDestroy>("ncclDestroy")});
  }

  explicit TrainerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TrainerWrap>(info) {
    if (info.Length() < 1 || !info[0].IsExternal())
      throw MakeError(info.Env(), "EINVAL", "a Trainer is created with model.createTrainer(options)");
    Pending* p = info[0].As<Napi::External<Pending>>().Data();
    state_ = std::move(p->state);
    trainer_ = std::move(p->trainer);
#ifdef MIMIC_CUDA
    gpu_ = std::move(p->gpu);
#endif
  }

  ~TrainerWrap() override { unregister(); }  // GC: never touches the model (it may be busy or gone)

  // What an async call does, on the libuv thread, with the model's mutex held.
  template <class F>
  void run_locked(F&& f) {
    ModelCall call(*state_);
    state_->weights();  // EDISPOSED once the model is gone
    f(*trainer_);
  }

  // Sync methods: never block the event loop.
  template <class F>
  auto sync(Napi::Env env, F&& f) -> decltype(f(std::declval<Trainer&>())) {
    return Guard(env, [&] {
      MIMIC_CHECK(trainer_, "EDISPOSED", "this trainer was disposed");
      MIMIC_CHECK(!busy_, "EBUSY", "a call of this trainer (accumulate/evaluate/step) is still running; await it first");
      std::unique_lock<std::mutex> lock(state_->mu, std::try_to_lock);
      MIMIC_CHECK(lock.owns_lock(), "EBUSY", "the model is busy with another call (logits, generation); await it first");
      state_->weights();
      return f(*trainer_);
    });
  }

  std::shared_ptr<ModelState> state_;
  std::unique_ptr<Trainer> trainer_;
#ifdef MIMIC_CUDA
  // Device 'cuda': the GPU twin of trainer_ (engine state in the model's LoRA arena). trainer_
  // keeps the PEFT names, the step count and host copies that gradients/getState/adapter fill
  // from the GPU on demand.
  std::unique_ptr<cuda::DeviceTrainer> gpu_;
  // With the model's mutex held: the GPU arena is ahead of the CPU adapters from now on.
  void gpu_changed() {
    state_->lora_version++;
    state_->gpu_lora_version = state_->lora_version.load();
    state_->host_lora_stale = true;
  }
#endif
  bool on_gpu() const {
#ifdef MIMIC_CUDA
    return gpu_ != nullptr;
#else
    return false;
#endif
  }
  std::atomic<bool> busy_{false};
  bool registered_ = true;  // MakeTrainer registered this model for us
  // Data-parallel training on the GPU: this rank's NCCL communicator (set by ncclInit; shared
  // with the worker threads so that ncclAbort from the JS thread reaches a call in flight).
  std::shared_ptr<dist::NcclComm> nccl_;

 private:
  void unregister() {
    if (!state_ || !registered_) return;
    registered_ = false;
    std::lock_guard<std::mutex> g(g_registry_mu);
    g_registry.erase(state_.get());
  }

  Napi::Value Accumulate(const Napi::CallbackInfo& info) { return Batch(info, false); }
  Napi::Value Evaluate(const Napi::CallbackInfo& info) { return Batch(info, true); }
  Napi::Value Batch(const Napi::CallbackInfo& info, bool eval);
  Napi::Value Step(const Napi::CallbackInfo& info);
  Napi::Value NcclInit(const Napi::CallbackInfo& info);
  Napi::Value NcclAllReduce(const Napi::CallbackInfo& info);
  Napi::Value NcclDestroy(const Napi::CallbackInfo& info);

  // setGradients(tensors): replaces the accumulated gradients (every tensor under its PEFT name,
  // as gradients() returns them): the CPU all-reduce of data-parallel training writes the global
  // sum back through it. All are checked before any is written.
  Napi::Value SetGradients(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return sync(env, [&](Trainer& t) -> Napi::Value {
      t.check_attached();
      MIMIC_CHECK(!on_gpu(), "ENOTSUP",
                  "setGradients is the CPU path; on the GPU the gradients are all-reduced in place (ncclAllReduce)");
      MIMIC_CHECK(info.Length() >= 1 && info[0].IsObject(), "EINVAL",
                  "setGradients(tensors) needs an object of Float32Arrays under PEFT names (as gradients() returns)");
      Napi::Object ts = info[0].As<Napi::Object>();
      MIMIC_CHECK(ts.GetPropertyNames().Length() == t.params().size(), "EINVAL", "setGradients got ",
                  ts.GetPropertyNames().Length(), " tensors; this trainer has ", t.params().size());
      std::vector<std::vector<float>> vals;
      for (auto& p : t.params()) {
        MIMIC_CHECK(ts.Has(p.name), "EINVAL", "setGradients: no tensor \"", p.name, "\"");
        vals.push_back(f32_copy(ts.Get(p.name), "tensors[\"" + p.name + "\"]"));
        MIMIC_CHECK(vals.back().size() == p.p->size(), "ESHAPE", "tensors[\"", p.name, "\"] has ", vals.back().size(),
                    " values, the parameter has ", p.p->size());
      }
      for (size_t i = 0; i < t.params().size(); ++i) *t.params()[i].g = std::move(vals[i]);
      return env.Undefined();
    });
  }

  // ncclAbort(): never blocks, works while a call is in flight (it then rejects EABORTED).
  Napi::Value NcclAbort(const Napi::CallbackInfo& info) {
    return Guard(info.Env(), [&]() -> Napi::Value {
      if (nccl_) nccl_->abort();
      return info.Env().Undefined();
    });
  }

  Napi::Value Gradients(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return sync(env, [&](Trainer& t) -> Napi::Value {
      t.check_attached();
      pull();
      Napi::Object o = Napi::Object::New(env);
      for (auto& p : t.params()) {
        if (p.g->size() == p.p->size()) o.Set(p.name, ToFloat32Array(env, *p.g));
        else o.Set(p.name, ToFloat32Array(env, std::vector<float>(p.p->size(), 0.f)));
      }
      return o;
    });
  }

  Napi::Value ZeroGrad(const Napi::CallbackInfo& info) {
    return sync(info.Env(), [&](Trainer& t) -> Napi::Value {
#ifdef MIMIC_CUDA
      if (gpu_) {
        t.check_attached();
        gpu_->zero_grad();
        cuda::Context::get().sync();
      }
#endif
      t.zero_grad();
      return info.Env().Undefined();
    });
  }

  Napi::Value Adapter(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return sync(env, [&](Trainer& t) -> Napi::Value {
      t.check_attached();
      pull();
      Napi::Object o = Napi::Object::New(env);
      for (auto& p : t.params()) o.Set(p.name, ToFloat32Array(env, *p.p));
      return o;
    });
  }

  Napi::Value GetState(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return sync(env, [&](Trainer& t) -> Napi::Value {
      t.check_attached();
      pull();
      Napi::Object o = Napi::Object::New(env);
      o.Set("step", Napi::Number::New(env, t.step_count()));
      Napi::Uint32Array rng = Napi::Uint32Array::New(env, 8);
      for (int i = 0; i < 4; ++i) {  // little-endian halves: low word first
        rng[2 * i] = static_cast<uint32_t>(t.rng().s[i] & 0xFFFFFFFFu);
        rng[2 * i + 1] = static_cast<uint32_t>(t.rng().s[i] >> 32);
      }
      o.Set("rng", rng);
      Napi::Object tensors = Napi::Object::New(env);
      for (auto& p : t.params()) {
        tensors.Set(p.name, ToFloat32Array(env, *p.p));
        tensors.Set(p.name + ".exp_avg", ToFloat32Array(env, p.m));
        tensors.Set(p.name + ".exp_avg_sq", ToFloat32Array(env, p.v));
      }
      o.Set("tensors", tensors);
      return o;
    });
  }

  Napi::Value SetState(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return sync(env, [&](Trainer& t) -> Napi::Value {
      t.check_attached();
      MIMIC_CHECK(info.Length() >= 1 && info[0].IsObject(), "EINVAL",
                  "setState(state) needs the object getState() returned");
      Napi::Object s = info[0].As<Napi::Object>();
      const int step = int_arg(s.Get("step"), "state.step", 0);
      Napi::Value rv = s.Get("rng");
      MIMIC_CHECK(rv.IsTypedArray() && rv.As<Napi::TypedArray>().TypedArrayType() == napi_uint32_array &&
                      rv.As<Napi::TypedArray>().ElementLength() == 8,
                  "EINVAL", "state.rng must be a Uint32Array of 8 values (as getState() returns)");
      Napi::Uint32Array r = rv.As<Napi::Uint32Array>();
      uint64_t rs[4];
      for (int i = 0; i < 4; ++i) rs[i] = (uint64_t)r[2 * i] | ((uint64_t)r[2 * i + 1] << 32);
      MIMIC_CHECK(rs[0] | rs[1] | rs[2] | rs[3], "EINVAL", "state.rng is all zeros: not a state getState() returned");
      MIMIC_CHECK(s.Get("tensors").IsObject(), "EINVAL", "state.tensors must be an object of Float32Arrays");
      Napi::Object ts = s.Get("tensors").As<Napi::Object>();
      // Read and check everything before changing anything: a bad state leaves the trainer as it was.
      std::vector<std::array<std::vector<float>, 3>> vals;
      for (auto& p : t.params()) {
        std::array<std::vector<float>, 3> v;
        const std::string names[3] = {p.name, p.name + ".exp_avg", p.name + ".exp_avg_sq"};
        for (int i = 0; i < 3; ++i) {
          MIMIC_CHECK(ts.Has(names[i]), "EINVAL", "state.tensors has no \"", names[i],
                      "\": the state is from another adapter layout (targets, layers)");
          v[i] = f32_copy(ts.Get(names[i]), "state.tensors[\"" + names[i] + "\"]");
          MIMIC_CHECK(v[i].size() == p.p->size(), "ESHAPE", "state.tensors[\"", names[i], "\"] has ", v[i].size(),
                      " values, this trainer's has ", p.p->size(), " (another rank?)");
        }
        vals.push_back(std::move(v));
      }
      Napi::Array keys = ts.GetPropertyNames();
      MIMIC_CHECK(keys.Length() == 3 * t.params().size(), "EINVAL", "state.tensors has ", keys.Length(),
                  " entries; this trainer expects ", 3 * t.params().size(), " (its tensors and their AdamW moments)");
      for (size_t i = 0; i < t.params().size(); ++i) {
        auto& p = t.params()[i];
        *p.p = std::move(vals[i][0]);
        p.m = std::move(vals[i][1]);
        p.v = std::move(vals[i][2]);
      }
      t.zero_grad();
      t.set_step_count(step);
      for (int i = 0; i < 4; ++i) t.rng().s[i] = rs[i];
      state_->lora_version++;
#ifdef MIMIC_CUDA
      if (gpu_) {  // parameters and moments to the GPU, its gradients zeroed
        gpu_->push();
        state_->gpu_lora_version = state_->lora_version.load();
        state_->host_lora_stale = false;
      }
#endif
      return env.Undefined();
    });
  }

  // dispose() during a running call takes effect when that call settles (Worker::Finally).
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return Guard(env, [&]() -> Napi::Value {
      if (busy_) dispose_requested_ = true;
      else finish_dispose();
      return env.Undefined();
    });
  }

 public:
  bool dispose_requested_ = false;

  // With the model's mutex held: the GPU's params, gradients and moments into the CPU trainer.
  void pull() {
#ifdef MIMIC_CUDA
    if (!gpu_) return;
    gpu_->pull();
    state_->host_lora_stale = false;
#endif
  }

  // JS thread. Frees the gradient buffers and, on CUDA, the training workspace (GiBs of activations)
  // if the model is free right now (else they go with the next adapter change / stay for the model's
  // next trainer), forgets the engine, lets the model take another trainer.
  void finish_dispose() {
    if (!trainer_) return;
    {
      std::unique_lock<std::mutex> lock(state_->mu, std::try_to_lock);
      if (lock.owns_lock() && state_->model) {
        try {
          trainer_->release_gradients();
        } catch (const mimic::Error&) {  // adapters replaced since: nothing of ours to free
        }
#ifdef MIMIC_CUDA
        if (gpu_ && state_->gpu) {
          try {
            cuda::release_workspace(*state_->gpu);
          } catch (const mimic::Error&) {  // a sticky CUDA error: the model's next call reports it
          }
        }
#endif
      }
    }
#ifdef MIMIC_CUDA
    gpu_.reset();
#endif
    trainer_.reset();
    unregister();
  }
};

// ---- async calls ------------------------------------------------------------------------------

// One async call of a trainer: keeps the JS trainer alive while it runs, then (JS thread, success
// or failure) frees the trainer for the next call and finishes a dispose() that came meanwhile.
class TrainerCall : public Worker {
 public:
  TrainerCall(Napi::Env env, const char* name, Napi::Object self, TrainerWrap* t) : Worker(env, name), t_(t) {
    self_ = Napi::Persistent(self);
  }

 protected:
  void Finally() override {
    t_->busy_ = false;
    if (t_->dispose_requested_) t_->finish_dispose();
    self_.Reset();
  }
  TrainerWrap* t_;

 private:
  Napi::ObjectReference self_;
};

class BatchWorker : public TrainerCall {
 public:
  BatchWorker(Napi::Env env, Napi::Object self, TrainerWrap* t, std::vector<int32_t> ids, std::vector<int32_t> labels,
              int B, int T, bool eval, bool keyed, MicroBatchKey key)
      : TrainerCall(env, eval ? "mimic.Trainer.evaluate" : "mimic.Trainer.accumulate", self, t), ids_(std::move(ids)),
        labels_(std::move(labels)), B_(B), T_(T), eval_(eval), keyed_(keyed), key_(key) {
  }

 protected:
  void Run() override {
    t_->run_locked([&](Trainer& tr) {
#ifdef MIMIC_CUDA
      if (t_->gpu_) {
        tr.check_attached();
        t_->state_->device_model();  // the arena is current (it is: this trainer owns it)
        if (eval_) {
          res_ = t_->gpu_->evaluate(ids_.data(), labels_.data(), B_, T_);
          return;
        }
        try {
          res_ = t_->gpu_->accumulate(ids_.data(), labels_.data(), B_, T_, keyed_ ? &key_ : nullptr);
        } catch (...) {  // a failed micro-batch leaves no partial gradient behind (as on the CPU)
          try {
            t_->gpu_->zero_grad();
            cuda::Context::get().sync();
          } catch (...) {
          }
          throw;
        }
        return;
      }
#endif
      res_ = eval_ ? tr.evaluate(ids_.data(), labels_.data(), B_, T_)
                   : tr.accumulate(ids_.data(), labels_.data(), B_, T_, keyed_ ? &key_ : nullptr);
    });
  }
  Napi::Value Resolve(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("lossSum", Napi::Number::New(env, res_.loss_sum));
    o.Set("tokens", Napi::Number::New(env, (double)res_.tokens));
    return o;
  }

 private:
  std::vector<int32_t> ids_, labels_;
  int B_, T_;
  bool eval_;
  bool keyed_;
  MicroBatchKey key_;
  LossSum res_;
};

class StepWorker : public TrainerCall {
 public:
  StepWorker(Napi::Env env, Napi::Object self, TrainerWrap* t, StepOptions o)
      : TrainerCall(env, "mimic.Trainer.step", self, t), o_(o) {
  }

 protected:
  void Run() override {
#ifdef MIMIC_CUDA
    if (t_->gpu_) {
      t_->run_locked([&](Trainer& tr) {
        tr.check_attached();
        t_->state_->device_model();
        try {
          norm_ = t_->gpu_->step(o_);
        } catch (...) {
          t_->gpu_changed();  // ENONFINITE zeroed the GPU gradients; the adapter may be unchanged, but be safe
          throw;
        }
        t_->gpu_changed();  // sessions re-check their caches; the CPU copy is stale until read
      });
      return;
    }
#endif
    t_->run_locked([&](Trainer& tr) { norm_ = tr.step(o_); });
    t_->state_->lora_version++;  // sessions re-check their caches: the adapter changed
  }
  Napi::Value Resolve(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("gradNorm", Napi::Number::New(env, norm_));
    return o;
  }

 private:
  StepOptions o_;
  double norm_ = 0.0;
};

// ncclInit(id, rank, worldSize, timeoutMs): joins the communicator; never takes the model's mutex.
class NcclInitWorker : public TrainerCall {
 public:
  NcclInitWorker(Napi::Env env, Napi::Object self, TrainerWrap* t, std::shared_ptr<dist::NcclComm> c,
                 std::vector<uint8_t> id, int64_t timeout_ms)
      : TrainerCall(env, "mimic.Trainer.ncclInit", self, t), c_(std::move(c)), id_(std::move(id)), timeout_ms_(timeout_ms) {
  }

 protected:
  void Run() override { c_->init(id_.data(), timeout_ms_); }
  Napi::Value Resolve(Napi::Env env) override { return env.Undefined(); }

 private:
  std::shared_ptr<dist::NcclComm> c_;
  std::vector<uint8_t> id_;
  int64_t timeout_ms_;
};

// ncclAllReduce(bucketElems, timeoutMs): the device gradient arena summed over ranks, in place.
class NcclAllReduceWorker : public TrainerCall {
 public:
  NcclAllReduceWorker(Napi::Env env, Napi::Object self, TrainerWrap* t, size_t bucket, int64_t timeout_ms)
      : TrainerCall(env, "mimic.Trainer.ncclAllReduce", self, t), bucket_(bucket), timeout_ms_(timeout_ms) {
  }

 protected:
  void Run() override {
#ifdef MIMIC_CUDA
    t_->run_locked([&](Trainer& tr) {
      tr.check_attached();
      cuda::DeviceModel& d = *t_->state_->gpu;
      t_->nccl_->all_reduce_sum(d.lg.p, (size_t)d.lora_n, cuda::Context::get().stream, bucket_, timeout_ms_);
    });
#else
    fail("ENOTSUP", "ncclAllReduce needs the CUDA backend");
#endif
  }
  Napi::Value Resolve(Napi::Env env) override { return env.Undefined(); }

 private:
  size_t bucket_;
  int64_t timeout_ms_;
};

// ncclDestroy(timeoutMs): ends the communicator (dist::NcclComm::destroy); resolves with what it
// did. Never takes the model's mutex, and works after dispose() (the communicator outlives it).
class NcclDestroyWorker : public TrainerCall {
 public:
  NcclDestroyWorker(Napi::Env env, Napi::Object self, TrainerWrap* t, std::shared_ptr<dist::NcclComm> c, int64_t timeout_ms)
      : TrainerCall(env, "mimic.Trainer.ncclDestroy", self, t), c_(std::move(c)), timeout_ms_(timeout_ms) {
  }

 protected:
  void Run() override { end_ = c_->destroy(timeout_ms_); }
  Napi::Value Resolve(Napi::Env env) override { return Napi::String::New(env, dist::nccl_end_name(end_)); }

 private:
  std::shared_ptr<dist::NcclComm> c_;
  int64_t timeout_ms_;
  dist::NcclEnd end_ = dist::NcclEnd::kNone;
};

// Starts `make()`'s worker unless the trainer is disposed or busy; argument errors reject.
// after_dispose: the call is valid on a disposed trainer too (ncclDestroy: the communicator outlives it).
template <class F>
Napi::Value start(Napi::Env env, TrainerWrap* t, F&& make, bool after_dispose = false) {
  std::string code, msg;
  try {
    MIMIC_CHECK(after_dispose || t->trainer_, "EDISPOSED", "this trainer was disposed");
    MIMIC_CHECK(!t->busy_, "EBUSY",
                "a call of this trainer (accumulate/evaluate/step) is still running; await it before the next");
    Worker* w = make();
    t->busy_ = true;
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    Classify(e, &code, &msg);
  }
  return Rejected(env, code, msg);
}

Napi::Value TrainerWrap::Batch(const Napi::CallbackInfo& info, bool eval) {
  Napi::Env env = info.Env();
  return start(env, this, [&]() -> Worker* {
    const char* fn = eval ? "evaluate" : "accumulate";
    MIMIC_CHECK(info.Length() >= 4, "EINVAL", fn, "(ids, labels, batch, seqLen) needs 4 arguments");
    std::vector<int32_t> ids = i32_copy(info[0], "ids");
    std::vector<int32_t> labels = i32_copy(info[1], "labels");
    const int B = int_arg(info[2], "batch", 1), T = int_arg(info[3], "seqLen", 1);
    MIMIC_CHECK((int64_t)ids.size() == (int64_t)B * T, "ESHAPE", "ids has ", ids.size(), " values but batch x seqLen = ",
                B, " x ", T, " = ", (int64_t)B * T, " (rows are right-padded to seqLen)");
    MIMIC_CHECK(labels.size() == ids.size(), "ESHAPE", "labels has ", labels.size(), " values but ids has ", ids.size(),
                ": labels are aligned with ids (-100 where masked)");
    // accumulate(..., { step, micro, part? }): the micro-batch's place in the run seeds its dropout
    // (engine/train.h MicroBatchKey), so that data-parallel ranks draw one device's masks.
    MicroBatchKey key;
    const bool keyed = !eval && info.Length() >= 5 && !info[4].IsUndefined() && !info[4].IsNull();
    if (keyed) {
      MIMIC_CHECK(info[4].IsObject(), "EINVAL", "accumulate's 5th argument must be { step, micro, part? }");
      Napi::Object k = info[4].As<Napi::Object>();
      const auto field = [&](const char* name, bool required) -> uint64_t {
        Napi::Value v = k.Get(name);
        if (!required && v.IsUndefined()) return 0;
        MIMIC_CHECK(v.IsNumber(), "EINVAL", "key.", name, " must be an integer >= 0");
        const double d = v.As<Napi::Number>().DoubleValue();
        MIMIC_CHECK(std::isfinite(d) && d == std::floor(d) && d >= 0 && d <= 9007199254740991.0, "EINVAL", "key.", name,
                    " must be an integer >= 0 (got ", d, ")");
        return (uint64_t)d;
      };
      key.step = field("step", true);
      key.micro = field("micro", true);
      key.part = field("part", false);
    }
    return new BatchWorker(env, Value(), this, std::move(ids), std::move(labels), B, T, eval, keyed, key);
  });
}

Napi::Value TrainerWrap::Step(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return start(env, this, [&]() -> Worker* {
    MIMIC_CHECK(info.Length() >= 1 && info[0].IsObject(), "EINVAL",
                "step(options) needs { lr, beta1, beta2, eps, weightDecay, maxGradNorm, gradScale }");
    Napi::Object o = info[0].As<Napi::Object>();
    StepOptions s;
    s.adamw.lr = (float)number_field(o, "lr", "step options");
    s.adamw.beta1 = (float)number_field(o, "beta1", "step options");
    s.adamw.beta2 = (float)number_field(o, "beta2", "step options");
    s.adamw.eps = (float)number_field(o, "eps", "step options");
    s.adamw.weight_decay = (float)number_field(o, "weightDecay", "step options");
    s.max_grad_norm = (float)number_field(o, "maxGradNorm", "step options");
    s.grad_scale = (float)number_field(o, "gradScale", "step options");
    return new StepWorker(env, Value(), this, s);
  });
}

Napi::Value TrainerWrap::NcclInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return start(env, this, [&]() -> Worker* {
    MIMIC_CHECK(dist::nccl_built(), "ENOTSUP", "this build of mimic has no NCCL: multi-GPU training needs the addon built ",
                "on a machine with CUDA and NCCL (see docs/distributed.md); CPU data parallel (workers) needs none");
    MIMIC_CHECK(on_gpu(), "ENOTSUP", "the NCCL all-reduce needs a trainer on device 'cuda'");
    MIMIC_CHECK(!nccl_, "EINVAL", "ncclInit was already called on this trainer");
    MIMIC_CHECK(info.Length() >= 4, "EINVAL", "ncclInit(id, rank, worldSize, timeoutMs) needs 4 arguments");
    MIMIC_CHECK(info[0].IsTypedArray() && info[0].As<Napi::TypedArray>().TypedArrayType() == napi_uint8_array &&
                    info[0].As<Napi::TypedArray>().ElementLength() == (size_t)dist::kNcclIdBytes,
                "EINVAL", "ncclInit: id must be the Uint8Array of ", dist::kNcclIdBytes, " bytes _ncclUniqueId() made");
    Napi::Uint8Array a = info[0].As<Napi::Uint8Array>();
    std::vector<uint8_t> id(a.Data(), a.Data() + a.ElementLength());
    const int world = int_arg(info[2], "worldSize", 1);
    const int rank = int_arg(info[1], "rank", 0);
    MIMIC_CHECK(rank < world, "EINVAL", "rank ", rank, " must be < worldSize ", world);
    const int64_t timeout = int_arg(info[3], "timeoutMs", 0);
    nccl_ = std::make_shared<dist::NcclComm>(rank, world);
    return new NcclInitWorker(env, Value(), this, nccl_, std::move(id), timeout);
  });
}

Napi::Value TrainerWrap::NcclAllReduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return start(env, this, [&]() -> Worker* {
    MIMIC_CHECK(nccl_, "EINVAL", "ncclAllReduce before ncclInit");
    MIMIC_CHECK(info.Length() >= 2, "EINVAL", "ncclAllReduce(bucketElems, timeoutMs) needs 2 arguments");
    const size_t bucket = (size_t)int_arg(info[0], "bucketElems", 0);
    const int64_t timeout = int_arg(info[1], "timeoutMs", 0);
    return new NcclAllReduceWorker(env, Value(), this, bucket, timeout);
  });
}

// Idempotent; 'none' at once where there is no communicator (never initialized — always so on a
// build without NCCL — or already ended). Rejects EBUSY while another call of this trainer runs.
Napi::Value TrainerWrap::NcclDestroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!nccl_) {  // nothing to end (a CPU build, or never initialised)
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(Napi::String::New(env, dist::nccl_end_name(dist::NcclEnd::kNone)));
    return d.Promise();
  }
  return start(env, this, [&]() -> Worker* {
    // the finalize's deadline (0 = none); default 60 s, so that a lost peer never holds the exit
    const int64_t timeout = info.Length() >= 1 && !info[0].IsUndefined() ? int_arg(info[0], "timeoutMs", 0) : 60000;
    return new NcclDestroyWorker(env, Value(), this, nccl_, timeout);
  }, /*after_dispose=*/true);
}

// ---- options → engine -------------------------------------------------------------------------

TrainerOptions parse_options(const Napi::Value& v, std::map<std::string, std::vector<float>>* init, bool* has_init) {
  MIMIC_CHECK(v.IsObject(), "EINVAL", "createTrainer(options) needs { lora: { r, alpha, dropout, targets }, seed, recompute }");
  Napi::Object o = v.As<Napi::Object>();
  MIMIC_CHECK(o.Get("lora").IsObject(), "EINVAL", "options.lora must be { r, alpha, dropout, targets }");
  Napi::Object lora = o.Get("lora").As<Napi::Object>();
  TrainerOptions t;
  t.r = int_arg(lora.Get("r"), "options.lora.r", 1);
  t.alpha = (float)number_field(lora, "alpha", "options.lora");
  t.dropout = (float)number_field(lora, "dropout", "options.lora");
  Napi::Value tg = lora.Get("targets");
  MIMIC_CHECK(tg.IsArray(), "EINVAL", "options.lora.targets must be an array of projection names");
  Napi::Array ta = tg.As<Napi::Array>();
  for (uint32_t i = 0; i < ta.Length(); ++i) {
    Napi::Value s = ta.Get(i);
    MIMIC_CHECK(s.IsString(), "EINVAL", "options.lora.targets[", i, "] must be a string");
    t.targets.push_back(s.As<Napi::String>().Utf8Value());
  }
  const double seed = number_field(o, "seed", "options");
  MIMIC_CHECK(seed >= 0 && seed == std::floor(seed) && seed <= 9007199254740991.0, "EINVAL",
              "options.seed must be a non-negative integer (got ", seed, ")");
  t.seed = (uint64_t)seed;
  Napi::Value rc = o.Get("recompute");
  MIMIC_CHECK(rc.IsBoolean() || rc.IsUndefined(), "EINVAL", "options.recompute must be a boolean");
  t.recompute = rc.IsBoolean() && rc.As<Napi::Boolean>().Value();
  // Internal (tests): rows of logits per head chunk, so that chunking is exercised on a tiny vocabulary.
  if (o.Has("_headChunkRows")) t.head_chunk_rows = int_arg(o.Get("_headChunkRows"), "options._headChunkRows", 1);
  Napi::Value iv = o.Get("init");
  *has_init = !iv.IsUndefined() && !iv.IsNull();
  if (*has_init) {
    MIMIC_CHECK(iv.IsObject(), "EINVAL", "options.init must be an object of Float32Arrays under PEFT names");
    Napi::Object io = iv.As<Napi::Object>();
    Napi::Array keys = io.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); ++i) {
      const std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
      (*init)[k] = f32_copy(io.Get(k), "options.init[\"" + k + "\"]");
    }
  }
  return t;
}

}  // namespace

Napi::Value MakeTrainer(Napi::Env env, std::shared_ptr<ModelState> state, Napi::Value options) {
  return Guard(env, [&]() -> Napi::Value {
    std::map<std::string, std::vector<float>> init;
    bool has_init = false;
    TrainerOptions opt = parse_options(options, &init, &has_init);
    {
      std::lock_guard<std::mutex> g(g_registry_mu);
      MIMIC_CHECK(!g_registry.count(state.get()), "EBUSY",
                  "this model already has a trainer: dispose() it before creating another");
    }
    MIMIC_CHECK(state->device == "cpu" || state->on_gpu(), "ENOTSUP", "training on device '", state->device,
                "' is not available in this build: load the model with device 'cpu' to train");
    auto pending = std::make_unique<Pending>();
    {
      std::unique_lock<std::mutex> lock(state->mu, std::try_to_lock);
      MIMIC_CHECK(lock.owns_lock(), "EBUSY", "the model is busy with another call (logits, generation); await it first");
      LlamaModel& m = state->weights();
#ifdef MIMIC_CUDA
      if (state->on_gpu()) state->pull_lora();  // the CPU adapters are read below (replaced, not kept)
#endif
      pending->trainer = std::make_unique<Trainer>(m, opt, has_init ? &init : nullptr);
      state->lora_version++;
#ifdef MIMIC_CUDA
      if (state->on_gpu()) {
        // uploads the new adapters into the arena (zero moments, zero gradients)
        pending->gpu = std::make_unique<cuda::DeviceTrainer>(*state->gpu, *pending->trainer);
        state->gpu_lora_version = state->lora_version.load();
        state->host_lora_stale = false;
      }
#endif
    }
    {
      std::lock_guard<std::mutex> g(g_registry_mu);
      g_registry.insert(state.get());
    }
    pending->state = state;
    auto it = Data(env).extra.find("Trainer");
    MIMIC_CHECK(it != Data(env).extra.end(), "EINTERNAL", "the Trainer class was not registered (InitTrainer)");
    try {
      return it->second.New({Napi::External<Pending>::New(env, pending.get())});
    } catch (...) {
      std::lock_guard<std::mutex> g(g_registry_mu);
      g_registry.erase(state.get());
      throw;
    }
  });
}

Napi::Object InitTrainer(Napi::Env env, Napi::Object exports) {
  Data(env).extra["Trainer"] = Napi::Persistent(TrainerWrap::Init(env));
  return InitHooks(env, exports);
}

}  // namespace mimic::addon
