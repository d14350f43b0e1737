// session (addon) — see session.h.
#include "addon/session.h"

#include <cmath>
#include <vector>

#include "addon/args.h"
#include "addon/data.h"
#include "addon/errors.h"
#include "addon/model.h"
#include "core/env.h"
#include "core/error.h"

#ifdef MIMIC_CUDA
#include "cuda/llama_cuda.h"
#endif

namespace mimic::addon {

SamplingParams ReadSampling(Napi::Env env, Napi::Value v) {
  if (!v.IsObject()) throw MakeError(env, "EINVAL", "sampling must be an object {temperature, topK, topP, repetitionPenalty}");
  Napi::Object o = v.As<Napi::Object>();
  SamplingParams p;
  p.temperature = (float)ReadNumber(env, o, "temperature", "sampling");
  p.top_k = (int)ReadInteger(env, o.Get("topK"), "sampling.topK", 0, 1 << 30);
  p.top_p = (float)ReadNumber(env, o, "topP", "sampling");
  p.repetition_penalty = (float)ReadNumber(env, o, "repetitionPenalty", "sampling");
  if (!(p.top_p > 0 && p.top_p <= 1)) throw MakeError(env, "EINVAL", "sampling.topP must be in (0, 1] (1 = off)");
  if (!(p.repetition_penalty > 0)) throw MakeError(env, "EINVAL", "sampling.repetitionPenalty must be > 0 (1 = off)");
  return p;
}

#ifdef MIMIC_CUDA
bool RunAhead() { return env_switch_on("MIMIC_RUN_AHEAD"); }
#endif

namespace {

class NextWorker : public Worker {
 public:
  NextWorker(Napi::Env env, std::shared_ptr<SessionState> s, std::vector<int32_t> ids, SamplingParams p,
             std::vector<int32_t> history)
      : Worker(env, "mimic.session.next"), s_(std::move(s)), ids_(std::move(ids)), p_(p), history_(std::move(history)) {}

 protected:
  void Run() override {
    ModelState& ms = *s_->model;
    ModelCall call(ms);
    LlamaModel& m = ms.weights();
    MIMIC_CHECK(!ids_.empty(), "EINVAL", "session.next(ids, ...) needs at least one token id");
    if (s_->cache.len == 0) s_->lora_version = ms.lora_version.load();
    MIMIC_CHECK(s_->lora_version == ms.lora_version.load(), "ESTALE",
                "the model's LoRA adapter changed after this session cached its tokens; call session.reset() and "
                "feed the prompt again");
#ifdef MIMIC_CUDA
    if (s_->gpu_kv) {
      cuda::DeviceModel& d = ms.device_model();
      MIMIC_CHECK(s_->cache.len + (int)ids_.size() <= s_->cache.max_len, "EFULL", "the KV cache holds ",
                  s_->cache.max_len, " tokens; ", s_->cache.len, " are used and ", ids_.size(),
                  " more do not fit. Create the session with a larger maxLength.");
      // the cache comes from the model's pool (a freed session's, with its decode graph) when one fits
      if (s_->gpu_kv->k.empty()) s_->gpu_kv = cuda::kv_acquire(d, s_->cache.max_len);
      cuda::DeviceKV& kv = *s_->gpu_kv;
      SessionState::Ahead& a = s_->ahead;
      float* last = nullptr;
      if (a.len >= 0 && a.len == s_->cache.len && a.kv == &kv && ids_.size() == 1 && ids_[0] == a.token &&
          a.model_uid == d.uid && a.device_lora == d.lora_version) {
        last = a.logits;  // launched by the previous next(): stream order makes the sampling wait for it
        kv.len = a.len + 1;
      } else {
        kv.len = s_->cache.len;  // reset() sets the counter only
        last = cuda::llama_forward(d, ids_.data(), (int)ids_.size(), &kv, nullptr, 1);
      }
      s_->forget_ahead();
      s_->cache.len = kv.len;
      token_ = cuda::sample_token(last, m.cfg.vocab_size, p_, history_.data(), (int64_t)history_.size(), s_->rng);
      if (RunAhead() && kv.len < kv.max_len && cuda::decode_step_ready(d, kv)) {
        // the step for the token just sampled, before JavaScript asks for it (one graph launch, no
        // wait; never a graph capture, which would delay this token). Only an optimization: if it
        // fails, this call still returns its token.
        try {
          if (float* row = cuda::decode_step(d, token_, kv)) a = {s_->cache.len, token_, row, &kv, d.uid, d.lora_version};
        } catch (const std::exception&) {
          a.len = -1;
        }
        kv.len = s_->cache.len;
      }
      return;
    }
#endif
    std::vector<float> logits((size_t)m.cfg.vocab_size);
    llama_forward(m, ids_.data(), (int)ids_.size(), &s_->cache, logits.data(), 1);
    token_ = cpu::sample_token(logits.data(), m.cfg.vocab_size, p_, history_.data(), (int64_t)history_.size(), s_->rng);
  }
  Napi::Value Resolve(Napi::Env env) override { return Napi::Number::New(env, token_); }
  void Finally() override { s_->busy = false; }

 private:
  std::shared_ptr<SessionState> s_;
  std::vector<int32_t> ids_;
  SamplingParams p_;
  std::vector<int32_t> history_;
  int32_t token_ = -1;
};

}  // namespace

#ifdef MIMIC_CUDA
SessionState::~SessionState() { cuda::kv_release(std::move(gpu_kv)); }  // back to the model's KV pool
#else
SessionState::~SessionState() = default;
#endif

Napi::Function Session::Init(Napi::Env env) {
  return DefineClass(env, "Session", {
      InstanceAccessor<&Session::Length>("length"),
      InstanceAccessor<&Session::MaxLength>("maxLength"),
      InstanceMethod<&Session::Next>("next"),
      InstanceMethod<&Session::Reset>("reset"),
      InstanceMethod<&Session::Release>("_release"),
  });
}

Napi::Object Session::NewInstance(Napi::Env env, std::shared_ptr<SessionState> state) {
  return Data(env).session.New({Napi::External<std::shared_ptr<SessionState>>::New(env, &state)});
}

Session::Session(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Session>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw MakeError(info.Env(), "EINVAL", "Session cannot be constructed directly; use model.createSession()");
  state_ = *info[0].As<Napi::External<std::shared_ptr<SessionState>>>().Data();
}

Napi::Value Session::Length(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), state_->cache.len); }
Napi::Value Session::MaxLength(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), state_->cache.max_len);
}

Napi::Value Session::Next(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<int32_t> ids, history;
  SamplingParams p;
  try {
    ids = ReadInt32Array(env, info[0], "session.next(ids, sampling, history): ids");
    p = ReadSampling(env, info[1]);
    if (info.Length() > 2 && !info[2].IsUndefined()) history = ReadInt32Array(env, info[2], "session.next: history");
  } catch (const Napi::Error& e) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(e.Value());
    return d.Promise();
  }
  bool expected = false;
  if (!state_->busy.compare_exchange_strong(expected, true))
    return Rejected(env, "EBUSY", "session.next() was called while a previous next() of this session is still running; "
                    "await each call before the next (tokens must enter the cache in order)");
  auto* w = new NextWorker(env, state_, std::move(ids), p, std::move(history));
  Napi::Promise promise = w->Promise();
  w->Queue();
  return promise;
}

// _release(): reset() that also gives a GPU session's KV cache back to the model's pool now
// instead of when the garbage collector finalizes the session (serving creates a session per
// request). A later next() takes a cache again. Returns false (nothing done) while busy.
Napi::Value Session::Release(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (state_->busy) return Napi::Boolean::New(env, false);
  state_->cache.len = 0;
#ifdef MIMIC_CUDA
  state_->forget_ahead();
  if (state_->gpu_kv && !state_->gpu_kv->k.empty()) {
    cuda::kv_release(std::move(state_->gpu_kv));
    state_->gpu_kv = std::make_shared<cuda::DeviceKV>();
  }
#endif
  return Napi::Boolean::New(env, true);
}

Napi::Value Session::Reset(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (state_->busy) throw MakeError(env, "EBUSY", "session.reset() while next() is running; await it first");
  state_->cache.len = 0;
#ifdef MIMIC_CUDA
  state_->forget_ahead();
#endif
  return env.Undefined();
}

}  // namespace mimic::addon
