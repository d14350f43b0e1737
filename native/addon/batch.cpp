// batch (addon) — model.nextBatch(): one decoding step for S sessions of a model in one native
// call (continuous batching). The TS scheduler gathers whatever steps are pending and sends them
// here together; the engine (engine/decode_batch.cpp) runs the projections once over all their
// rows and gives each session exactly the token session.next would have given it.
//
// On a CUDA model the step runs on the GPU (native/cuda/decode_batch_cuda.cu): one-token rows
// together, prompt chunks through the per-session prefill path; same tokens as session.next.
#include "addon/batch.h"

#include <mutex>
#include <vector>

#include "addon/args.h"
#include "addon/data.h"
#include "addon/errors.h"
#include "addon/model.h"
#include "addon/session.h"
#include "core/error.h"
#include "engine/decode_batch.h"

#ifdef MIMIC_CUDA
#include "cuda/llama_cuda.h"
#endif

namespace mimic::addon {

namespace {

struct BatchEntry {
  std::shared_ptr<SessionState> s;
  std::vector<int32_t> ids, history;
  SamplingParams p;
};

class NextBatchWorker : public Worker {
 public:
  NextBatchWorker(Napi::Env env, std::shared_ptr<ModelState> m, std::vector<BatchEntry> entries)
      : Worker(env, "mimic.model.nextBatch"), m_(std::move(m)), e_(std::move(entries)) {}

 protected:
  // A session joins only with tokens to feed and under the adapter its cache was filled with.
  static void check_entry(const BatchEntry& e, size_t i, uint64_t lv) {
    const uint64_t v = e.s->cache.len == 0 ? lv : e.s->lora_version;
    MIMIC_CHECK(v == lv, "ESTALE", "nextBatch: session ", i,
                ": the model's LoRA adapter changed after this session cached its tokens; call session.reset() and "
                "feed the prompt again");
    MIMIC_CHECK(!e.ids.empty(), "EINVAL", "nextBatch: ids[", i, "] is empty; give at least one token id");
  }

  void Run() override {
    ModelState& ms = *m_;
    ModelCall call(ms);
    LlamaModel& m = ms.weights();
    const uint64_t lv = ms.lora_version.load();
#ifdef MIMIC_CUDA
    if (ms.on_gpu()) {
      RunCuda(ms, m, lv);
      return;
    }
#endif
    MIMIC_CHECK(ms.device == "cpu", "ENOTSUP", "nextBatch: this build has no batched step for device '", ms.device,
                "'; step each session with session.next()");
    std::vector<DecodeSeq> seqs(e_.size());
    for (size_t i = 0; i < e_.size(); ++i) {
      BatchEntry& e = e_[i];
      check_entry(e, i, lv);
      DecodeSeq& q = seqs[i];
      q.cache = &e.s->cache;
      q.ids = e.ids.data();
      q.n_ids = (int)e.ids.size();
      q.params = e.p;
      q.history = e.history.data();
      q.n_history = (int64_t)e.history.size();
      q.rng = &e.s->rng;
    }
    tokens_.resize(e_.size());
    decode_batch(m, seqs.data(), (int)seqs.size(), tokens_.data());
    for (BatchEntry& e : e_) e.s->lora_version = lv;
  }
#ifdef MIMIC_CUDA
  // Everything is validated before anything runs (a refused batch leaves every session as it
  // was, so lib/infer/model.ts can retry the others one by one).
  void RunCuda(ModelState& ms, LlamaModel& m, uint64_t lv) {
    const LlamaConfig& c = m.cfg;
    for (size_t i = 0; i < e_.size(); ++i) {
      BatchEntry& e = e_[i];
      check_entry(e, i, lv);
      MIMIC_CHECK(e.s->cache.len + (int)e.ids.size() <= e.s->cache.max_len, "EFULL", "nextBatch: session ", i,
                  ": the KV cache holds ", e.s->cache.max_len, " tokens; ", e.s->cache.len, " are used and ",
                  e.ids.size(), " more do not fit. Create the session with a larger maxLength.");
      for (size_t t = 0; t < e.ids.size(); ++t)
        MIMIC_CHECK(e.ids[t] >= 0 && e.ids[t] < c.vocab_size, "ERANGE", "token id ", e.ids[t], " at position ", t,
                    " of sequence ", i, " is out of range: the model's vocabulary has ", c.vocab_size, " tokens (ids 0..",
                    c.vocab_size - 1, "). Was the text tokenized with this model's tokenizer?");
    }
    cuda::DeviceModel& d = ms.device_model();
    std::vector<cuda::DeviceDecodeSeq> seqs(e_.size());
    const uint64_t ticket = cuda::decode_batch_ticket(d);  // the step the previous nextBatch() ran ahead, if still the last
    bool any_hit = false;
    for (size_t i = 0; i < e_.size(); ++i) {
      BatchEntry& e = e_[i];
      SessionState& s = *e.s;
      if (!s.gpu_kv || s.gpu_kv->k.empty()) s.gpu_kv = cuda::kv_acquire(d, s.cache.max_len);
      s.gpu_kv->len = s.cache.len;  // reset() sets the counter only
      const SessionState::BatchAhead& ba = s.batch_ahead;
      const bool hit = ticket && ba.ticket == ticket && e.ids.size() == 1 && e.ids[0] == ba.token &&
                       ba.len == s.cache.len && ba.kv == s.gpu_kv.get();
      any_hit |= hit;
      seqs[i].ahead_row = hit ? ba.row : -1;
      s.forget_ahead();             // this step writes the rows a next() or nextBatch() may have run ahead into
      cuda::DeviceDecodeSeq& q = seqs[i];
      q.kv = s.gpu_kv.get();
      q.ids = e.ids.data();
      q.n_ids = (int)e.ids.size();
      q.params = e.p;
      q.history = e.history.data();
      q.n_history = (int64_t)e.history.size();
      q.rng = &s.rng;
    }
    tokens_.resize(e_.size());
    try {
      cuda::decode_batch(d, seqs.data(), (int)seqs.size(), tokens_.data(), any_hit ? ticket : 0);
    } catch (...) {
      for (BatchEntry& e : e_) e.s->cache.len = e.s->gpu_kv->len;
      throw;
    }
    for (BatchEntry& e : e_) {
      e.s->cache.len = e.s->gpu_kv->len;
      e.s->lora_version = lv;
    }
    if (RunAhead() && e_.size() >= 2) RunAheadStep(d);
  }
  // The step for the tokens just sampled, launched before they go back to JavaScript (one graph
  // launch, no wait): when the next nextBatch() brings these sessions with these tokens, their rows
  // are only sampled. Only an optimization: if it fails, this call still returns its tokens.
  void RunAheadStep(cuda::DeviceModel& d) {
    std::vector<cuda::DeviceKV*> kvs(e_.size());
    for (size_t i = 0; i < e_.size(); ++i) kvs[i] = e_[i].s->gpu_kv.get();
    uint64_t t = 0;
    try {
      t = cuda::decode_batch_ahead(d, kvs.data(), tokens_.data(), (int)e_.size());
    } catch (const std::exception&) {
      t = 0;
    }
    for (size_t i = 0; i < e_.size(); ++i) {
      SessionState& s = *e_[i].s;
      s.gpu_kv->len = s.cache.len;
      if (t) s.batch_ahead = {t, (int)i, s.cache.len, tokens_[i], s.gpu_kv.get()};
    }
  }
#endif
  Napi::Value Resolve(Napi::Env env) override {
    auto a = Napi::Int32Array::New(env, tokens_.size());
    for (size_t i = 0; i < tokens_.size(); ++i) a[i] = tokens_[i];
    return a;
  }
  void Finally() override {
    for (BatchEntry& e : e_) e.s->busy = false;
  }

 private:
  std::shared_ptr<ModelState> m_;
  std::vector<BatchEntry> e_;
  std::vector<int32_t> tokens_;
};

Napi::Array ReadArray(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsArray()) throw MakeError(env, "EINVAL", std::string("nextBatch(sessions, ids, sampling, history): ") + what + " must be an array");
  return v.As<Napi::Array>();
}

}  // namespace

Napi::Value NextBatch(const Napi::CallbackInfo& info, const std::shared_ptr<ModelState>& model) {
  Napi::Env env = info.Env();
  std::vector<BatchEntry> entries;
  try {
    Napi::Array ss = ReadArray(env, info[0], "sessions"), ids = ReadArray(env, info[1], "ids"),
                sp = ReadArray(env, info[2], "sampling"), hs = ReadArray(env, info[3], "history");
    const uint32_t n = ss.Length();
    if (n == 0) throw MakeError(env, "EINVAL", "nextBatch: sessions is empty; give at least one session");
    if (ids.Length() != n || sp.Length() != n || hs.Length() != n)
      throw MakeError(env, "EINVAL", "nextBatch: sessions, ids, sampling and history must have the same length (got " +
                                         std::to_string(n) + ", " + std::to_string(ids.Length()) + ", " +
                                         std::to_string(sp.Length()) + ", " + std::to_string(hs.Length()) + ")");
    Napi::Function sessionClass = Data(env).session.Value();
    entries.resize(n);
    for (uint32_t i = 0; i < n; ++i) {
      const std::string at = "[" + std::to_string(i) + "]";
      Napi::Value sv = ss.Get(i);
      if (!sv.IsObject() || !sv.As<Napi::Object>().InstanceOf(sessionClass))
        throw MakeError(env, "EINVAL", "nextBatch: sessions" + at + " is not a session from model.createSession()");
      std::shared_ptr<SessionState> s = Session::Unwrap(sv.As<Napi::Object>())->state();
      if (s->model != model)
        throw MakeError(env, "EINVAL", "nextBatch: sessions" + at + " belongs to another model; a batch steps sessions of this model only");
      for (uint32_t j = 0; j < i; ++j)
        if (entries[j].s == s) throw MakeError(env, "EINVAL", "nextBatch: sessions" + at + " is the same session as sessions[" +
                                                                  std::to_string(j) + "]; a session may appear once per step");
      entries[i].s = std::move(s);
      entries[i].ids = ReadInt32Array(env, ids.Get(i), ("nextBatch: ids" + at).c_str());
      entries[i].p = ReadSampling(env, sp.Get(i));
      entries[i].history = ReadInt32Array(env, hs.Get(i), ("nextBatch: history" + at).c_str());
    }
  } catch (const Napi::Error& e) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(e.Value());
    return d.Promise();
  }
  if (!model->model || model->dispose_requested)
    return Rejected(env, "EDISPOSED", "this model was disposed; load it again with loadModel()");
  // Claim every session; if one is busy, give back the ones already claimed.
  for (size_t i = 0; i < entries.size(); ++i) {
    bool expected = false;
    if (!entries[i].s->busy.compare_exchange_strong(expected, true)) {
      for (size_t j = 0; j < i; ++j) entries[j].s->busy = false;
      return Rejected(env, "EBUSY", "nextBatch: sessions[" + std::to_string(i) +
                                        "] is busy with a running next() or nextBatch(); await it before stepping it again");
    }
  }
  auto* w = new NextBatchWorker(env, model, std::move(entries));
  Napi::Promise promise = w->Promise();
  w->Queue();
  return promise;
}

Napi::Value Model::NextBatch(const Napi::CallbackInfo& info) { return mimic::addon::NextBatch(info, state_); }

}  // namespace mimic::addon
