// model (addon) — see model.h. Also loadModel(), the AsyncWorker that builds a Model.
#include "addon/model.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <regex>
#include <vector>

#include "addon/args.h"
#include "addon/data.h"
#include "addon/errors.h"
#include "addon/session.h"
#include "addon/trainer.h"
#include "core/error.h"
#include "core/threadpool.h"

#ifdef MIMIC_CUDA
#include "cuda/llama_cuda.h"
#endif

namespace mimic::addon {

static const char* kProjections[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
static const char* Group(const std::string& proj) {
  return proj == "gate_proj" || proj == "up_proj" || proj == "down_proj" ? "mlp" : "self_attn";
}

LlamaModel& ModelState::weights() {
  if (!model) fail("EDISPOSED", "this model was disposed; load it again with loadModel()");
  return *model;
}

void ModelState::dispose_if_requested() {
  if (dispose_requested.load()) free_weights();
}

void ModelState::free_weights() {
#ifdef MIMIC_CUDA
  gpu.reset();
#endif
  model.reset();
}

#ifdef MIMIC_CUDA
cuda::DeviceModel& ModelState::device_model() {
  LlamaModel& m = weights();
  MIMIC_CHECK(gpu, "EINTERNAL", "device_model() on a CPU model");
  if (gpu_lora_version != lora_version.load()) {
    cuda::sync_lora_to_device(*gpu, m);
    gpu_lora_version = lora_version.load();
    host_lora_stale = false;
  }
  return *gpu;
}

void ModelState::pull_lora() {
  if (!gpu || !host_lora_stale || !model) return;
  cuda::sync_lora_to_host(*gpu, *model, false);
  host_lora_stale = false;
}
#endif

// ---- loadModel --------------------------------------------------------------------------------

namespace {

class LoadWorker : public Worker {
 public:
  LoadWorker(Napi::Env env, std::string dir, bool nf4, bool cuda)
      : Worker(env, "mimic.loadModel"), dir_(std::move(dir)), nf4_(nf4), cuda_(cuda) {}

 protected:
  void Run() override {
    state_ = std::make_shared<ModelState>();
#ifdef MIMIC_CUDA
    if (cuda_) {
      state_->gpu = cuda::load_model(dir_, nf4_, &state_->model);
      state_->device = "cuda";
    } else
#endif
      state_->model = load_llama(dir_, nf4_);
    state_->cfg = state_->model->cfg;
    state_->quant = nf4_ ? "nf4" : "none";
  }
  Napi::Value Resolve(Napi::Env env) override { return Model::NewInstance(env, state_); }

 private:
  std::string dir_;
  bool nf4_, cuda_;
  std::shared_ptr<ModelState> state_;
};

class LogitsWorker : public Worker {
 public:
  LogitsWorker(Napi::Env env, std::shared_ptr<ModelState> s, std::vector<int32_t> ids)
      : Worker(env, "mimic.logits"), s_(std::move(s)), ids_(std::move(ids)) {}

 protected:
  void Run() override {
    ModelCall call(*s_);
    LlamaModel& m = s_->weights();
    MIMIC_CHECK(!ids_.empty(), "EINVAL", "logits() needs at least one token id");
    out_.resize(ids_.size() * (size_t)m.cfg.vocab_size);
#ifdef MIMIC_CUDA
    if (s_->on_gpu())
      cuda::llama_forward(s_->device_model(), ids_.data(), (int)ids_.size(), nullptr, out_.data(), (int)ids_.size());
    else
#endif
      llama_forward(m, ids_.data(), (int)ids_.size(), nullptr, out_.data(), (int)ids_.size());
  }
  Napi::Value Resolve(Napi::Env env) override { return ToFloat32Array(env, out_); }

 private:
  std::shared_ptr<ModelState> s_;
  std::vector<int32_t> ids_;
  std::vector<float> out_;
};

// _logitsCached(ids, chunk): the same logits as logits(ids), computed through a fresh KV cache
// fed `chunk` tokens at a time (internal: proves cached decoding equals the uncached forward).
class CachedLogitsWorker : public Worker {
 public:
  CachedLogitsWorker(Napi::Env env, std::shared_ptr<ModelState> s, std::vector<int32_t> ids, int chunk)
      : Worker(env, "mimic.logitsCached"), s_(std::move(s)), ids_(std::move(ids)), chunk_(chunk) {}

 protected:
  void Run() override {
    ModelCall call(*s_);
    LlamaModel& m = s_->weights();
    MIMIC_CHECK(!ids_.empty(), "EINVAL", "_logitsCached needs at least one token id");
    const int T = (int)ids_.size(), V = m.cfg.vocab_size;
    out_.resize((size_t)T * V);
#ifdef MIMIC_CUDA
    if (s_->on_gpu()) {
      cuda::DeviceModel& d = s_->device_model();
      cuda::DeviceKV kv;
      kv.init(m.cfg, T);
      for (int t = 0; t < T; t += chunk_) {
        const int n = std::min(chunk_, T - t);
        cuda::llama_forward(d, ids_.data() + t, n, &kv, out_.data() + (size_t)t * V, n);
      }
      return;
    }
#endif
    KVCache cache;
    cache.init(m.cfg, T);
    out_.resize((size_t)T * V);
    for (int t = 0; t < T; t += chunk_) {
      const int n = std::min(chunk_, T - t);
      llama_forward(m, ids_.data() + t, n, &cache, out_.data() + (size_t)t * V, n);
    }
  }
  Napi::Value Resolve(Napi::Env env) override { return ToFloat32Array(env, out_); }

 private:
  std::shared_ptr<ModelState> s_;
  std::vector<int32_t> ids_;
  int chunk_;
  std::vector<float> out_;
};

}  // namespace

Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) return Rejected(env, "EINVAL", "loadModel(dir, options): dir must be a string");
  std::string dir = info[0].As<Napi::String>();
  std::string device = "cpu", quant = "none";
  if (info.Length() >= 2 && !info[1].IsUndefined()) {
    if (!info[1].IsObject()) return Rejected(env, "EINVAL", "loadModel(dir, options): options must be an object");
    Napi::Object o = info[1].As<Napi::Object>();
    Napi::Value d = o.Get("device"), q = o.Get("quant"), t = o.Get("threads");
    if (!d.IsUndefined()) {
      if (!d.IsString()) return Rejected(env, "EINVAL", "options.device must be 'cpu' or 'cuda'");
      device = d.As<Napi::String>();
    }
    if (!q.IsUndefined()) {
      if (!q.IsString()) return Rejected(env, "EINVAL", "options.quant must be 'nf4' or 'none'");
      quant = q.As<Napi::String>();
    }
    if (!t.IsUndefined()) {
      double n = t.IsNumber() ? t.As<Napi::Number>().DoubleValue() : -1;
      if (!(n >= 0 && n <= 1024 && n == (double)(int)n))
        return Rejected(env, "EINVAL", "options.threads must be an integer >= 0 (0 = all cores)");
      set_num_threads((int)n);
    }
  }
  if (device == "cuda") {
#ifdef MIMIC_CUDA
    if (!cuda::available())
      return Rejected(env, "ECUDA", "device 'cuda': this build of mimic has the CUDA backend but no CUDA device is "
                      "visible (no GPU, no driver, or CUDA_VISIBLE_DEVICES hides it). Use device 'cpu' or 'auto'.");
    if (quant != "none" && quant != "nf4") return Rejected(env, "EINVAL", "options.quant must be 'nf4' or 'none', got '" + quant + "'");
    auto* w = new LoadWorker(env, dir, quant == "nf4", true);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
#else
    return Rejected(env, "ECUDA", "this build of mimic has no CUDA backend (no CUDA toolkit with cuBLAS was found when it "
                    "was built). Use device 'cpu', or rebuild on a machine with CUDA: MIMIC_CUDA=ON npm run build:native");
#endif
  }
  if (device != "cpu") return Rejected(env, "EINVAL", "options.device must be 'cpu' or 'cuda', got '" + device + "'");
  if (quant != "none" && quant != "nf4") return Rejected(env, "EINVAL", "options.quant must be 'nf4' or 'none', got '" + quant + "'");
  auto* w = new LoadWorker(env, dir, quant == "nf4", false);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// ---- Model --------------------------------------------------------------------------------------

Napi::Function Model::Init(Napi::Env env) {
  return DefineClass(env, "Model", {
      InstanceAccessor<&Model::Config>("config"),
      InstanceAccessor<&Model::Device>("device"),
      InstanceAccessor<&Model::Quant>("quant"),
      InstanceMethod<&Model::Logits>("logits"),
      InstanceMethod<&Model::CreateSession>("createSession"),
      InstanceMethod<&Model::SetLora>("setLora"),
      InstanceMethod<&Model::GetLora>("getLora"),
      InstanceMethod<&Model::ClearLora>("clearLora"),
      InstanceMethod<&Model::CreateTrainer>("createTrainer"),
      InstanceMethod<&Model::Dispose>("dispose"),
      InstanceMethod<&Model::LogitsCached>("_logitsCached"),
      InstanceMethod<&Model::NextBatch>("nextBatch"),  // addon/batch.cpp
  });
}

Napi::Object Model::NewInstance(Napi::Env env, std::shared_ptr<ModelState> state) {
  return Data(env).model.New({Napi::External<std::shared_ptr<ModelState>>::New(env, &state)});
}

Model::Model(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Model>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw MakeError(info.Env(), "EINVAL", "Model cannot be constructed directly; use loadModel()");
  state_ = *info[0].As<Napi::External<std::shared_ptr<ModelState>>>().Data();
}

Napi::Value Model::Config(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const LlamaConfig& c = state_->cfg;
  Napi::Object o = Napi::Object::New(env);
  o.Set("vocabSize", c.vocab_size);
  o.Set("hiddenSize", c.hidden_size);
  o.Set("intermediateSize", c.intermediate_size);
  o.Set("numLayers", c.num_layers);
  o.Set("numHeads", c.num_heads);
  o.Set("numKvHeads", c.num_kv_heads);
  o.Set("headDim", c.head_dim);
  o.Set("maxPosition", c.max_position);
  o.Set("rmsNormEps", c.rms_norm_eps);
  o.Set("tieWordEmbeddings", c.tie_word_embeddings);
  o.Set("ropeTheta", c.rope.theta);
  o.Set("ropeType", c.rope.type);
  o.Set("bosTokenId", c.bos_token_id);
  Napi::Array eos = Napi::Array::New(env, c.eos_token_ids.size());
  for (size_t i = 0; i < c.eos_token_ids.size(); ++i) eos.Set((uint32_t)i, c.eos_token_ids[i]);
  o.Set("eosTokenIds", eos);
  return o;
}

Napi::Value Model::Device(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), state_->device); }
Napi::Value Model::Quant(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), state_->quant); }

Napi::Value Model::Logits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<int32_t> ids;
  try {
    ids = ReadInt32Array(env, info[0], "logits(ids): ids");
  } catch (const Napi::Error& e) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(e.Value());
    return d.Promise();
  }
  if (!state_->model || state_->dispose_requested) return Rejected(env, "EDISPOSED", "this model was disposed; load it again with loadModel()");
  auto* w = new LogitsWorker(env, state_, std::move(ids));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value Model::LogitsCached(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<int32_t> ids;
  int chunk = 1;
  try {
    ids = ReadInt32Array(env, info[0], "_logitsCached(ids, chunk): ids");
    chunk = (int)ReadInteger(env, info[1], "_logitsCached(ids, chunk): chunk", 1, 1 << 24);
  } catch (const Napi::Error& e) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(e.Value());
    return d.Promise();
  }
  auto* w = new CachedLogitsWorker(env, state_, std::move(ids), chunk);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value Model::CreateSession(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    if (!state_->model || state_->dispose_requested) fail("EDISPOSED", "this model was disposed; load it again with loadModel()");
    int max_len = (int)ReadInteger(env, info[0], "createSession(maxLength, seed): maxLength", 1, 1 << 24);
    double seed = info.Length() > 1 && !info[1].IsUndefined() ? info[1].As<Napi::Number>().DoubleValue() : 0;
    if (!(std::isfinite(seed) && seed >= 0 && seed == std::floor(seed) && seed <= 9007199254740991.0))
      fail("EINVAL", "createSession(maxLength, seed): seed must be a non-negative integer");
    auto s = std::make_shared<SessionState>((uint64_t)seed);
    s->model = state_;
#ifdef MIMIC_CUDA
    if (state_->on_gpu()) {
      // the GPU cache is allocated by the first next() (on its worker thread); the CPU struct
      // only counts (len, max_len) for the accessors
      s->gpu_kv = std::make_shared<cuda::DeviceKV>();
      s->cache.max_len = max_len;
      s->cache.len = 0;
    } else
#endif
      s->cache.init(state_->cfg, max_len);
    s->lora_version = state_->lora_version.load();
    return Session::NewInstance(env, s);
  });
}

// "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight" (PEFT; ".default" optional,
// the "base_model.model." prefix optional) → layer, projection, A/B.
static bool ParseLoraName(const std::string& name, int* layer, std::string* group, std::string* proj, char* ab) {
  static const std::regex re(R"(^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])(?:\.default)?\.weight$)");
  std::smatch m;
  if (!std::regex_match(name, m, re)) return false;
  *layer = std::stoi(m[1].str());
  *group = m[2].str();
  *proj = m[3].str();
  *ab = m[4].str()[0];
  return true;
}

static std::string PeftName(int layer, const std::string& proj, char ab) {
  return "base_model.model.model.layers." + std::to_string(layer) + "." + Group(proj) + "." + proj + ".lora_" + ab + ".weight";
}

Napi::Value Model::SetLora(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    MIMIC_CHECK(info.Length() >= 2 && info[0].IsObject() && info[1].IsObject(), "EINVAL",
                "setLora(spec, tensors): spec {r, alpha, targets} and tensors {name: Float32Array} are required");
    Napi::Object spec = info[0].As<Napi::Object>(), tensors = info[1].As<Napi::Object>();
    const int r = (int)ReadInteger(env, spec.Get("r"), "setLora: spec.r", 1, 65536);
    const double alpha = ReadNumber(env, spec, "alpha", "setLora: spec");
    Napi::Value tv = spec.Get("targets");
    MIMIC_CHECK(tv.IsArray(), "EINVAL", "setLora: spec.targets must be an array of projection names");
    Napi::Array ta = tv.As<Napi::Array>();
    std::vector<bool> targeted(7, false);
    for (uint32_t i = 0; i < ta.Length(); ++i) {
      Napi::Value t = ta.Get(i);
      std::string name = t.IsString() ? t.As<Napi::String>().Utf8Value() : "?";
      int k = -1;
      for (int p = 0; p < 7; ++p)
        if (name == kProjections[p]) k = p;
      MIMIC_CHECK(k >= 0, "EINVAL", "setLora: unknown target \"", name,
                  "\" (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj)");
      targeted[k] = true;
    }

    std::unique_lock<std::mutex> lock(state_->mu, std::try_to_lock);
    MIMIC_CHECK(lock.owns_lock(), "EBUSY", "setLora: the model is busy with a running call (logits, session.next or "
                "training); await it before changing adapters");
    LlamaModel& m = state_->weights();
    const int L = m.cfg.num_layers;
    // adapters[layer][proj]; built completely before anything is swapped in, so a bad tensor
    // leaves the current adapter untouched.
    std::vector<std::vector<std::unique_ptr<LoraAdapter>>> built((size_t)L);
    for (auto& row : built) row.resize(7);
    std::map<std::string, bool> seen;
    Napi::Array names = tensors.GetPropertyNames();
    for (uint32_t i = 0; i < names.Length(); ++i) {
      std::string name = names.Get(i).As<Napi::String>();
      int layer;
      std::string group, proj;
      char ab;
      MIMIC_CHECK(ParseLoraName(name, &layer, &group, &proj, &ab), "EINVAL", "setLora: tensor \"", name,
                  "\" is not a LoRA weight name (expected e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight)");
      int p = -1;
      for (int k = 0; k < 7; ++k)
        if (proj == kProjections[k]) p = k;
      MIMIC_CHECK(p >= 0 && group == Group(proj), "EINVAL", "setLora: tensor \"", name, "\" names no Llama projection");
      MIMIC_CHECK(layer < L, "ESHAPE", "setLora: tensor \"", name, "\" is for layer ", layer, " but the model has ", L,
                  " layers (0..", L - 1, "). Is the adapter for another base model?");
      MIMIC_CHECK(targeted[p], "EINVAL", "setLora: tensor \"", name, "\" is for ", proj,
                  ", which is not in spec.targets. Add it to targets or drop the tensor.");
      Napi::Value v = tensors.Get(name);
      MIMIC_CHECK(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array, "EINVAL",
                  "setLora: tensor \"", name, "\" must be a Float32Array");
      Napi::Float32Array a = v.As<Napi::Float32Array>();
      Linear* lin = m.layers[layer].projection(proj);
      const int64_t rows = ab == 'A' ? r : lin->M, cols = ab == 'A' ? lin->K : r;
      MIMIC_CHECK((int64_t)a.ElementLength() == rows * cols, "ESHAPE", "setLora: tensor \"", name, "\" has ",
                  a.ElementLength(), " values, but the model's ", proj, " is [", lin->M, ", ", lin->K, "] so lora_", ab,
                  " must be [", rows, ", ", cols, "] = ", rows * cols, " values (r = ", r, ")");
      auto& ad = built[layer][p];
      if (!ad) {
        ad = std::make_unique<LoraAdapter>();
        ad->r = r;
        ad->scale = (float)(alpha / r);
      }
      (ab == 'A' ? ad->A : ad->B).assign(a.Data(), a.Data() + a.ElementLength());
      seen[PeftName(layer, proj, ab)] = true;
    }
    for (int l = 0; l < L; ++l)
      for (int p = 0; p < 7; ++p) {
        if (!targeted[p]) continue;
        for (char ab : {'A', 'B'})
          MIMIC_CHECK(seen.count(PeftName(l, kProjections[p], ab)), "EINVAL", "setLora: tensor \"",
                      PeftName(l, kProjections[p], ab), "\" is missing (spec.targets includes ", kProjections[p],
                      ", so every layer needs its lora_A and lora_B)");
      }
    for (int l = 0; l < L; ++l)
      for (int p = 0; p < 7; ++p) m.layers[l].projection(kProjections[p])->lora = std::move(built[l][p]);
#ifdef MIMIC_CUDA
    state_->host_lora_stale = false;  // the CPU adapters are the truth now; the GPU re-uploads
#endif
    state_->lora_version++;
    return env.Undefined();
  });
}

Napi::Value Model::GetLora(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    std::unique_lock<std::mutex> lock(state_->mu, std::try_to_lock);
    MIMIC_CHECK(lock.owns_lock(), "EBUSY", "getLora: the model is busy with a running call; await it first");
    LlamaModel& m = state_->weights();
#ifdef MIMIC_CUDA
    state_->pull_lora();
#endif
    Napi::Object out = Napi::Object::New(env);
    for (int l = 0; l < m.cfg.num_layers; ++l)
      for (const char* p : kProjections) {
        const Linear* lin = m.layers[l].projection(p);
        if (!lin->lora) continue;
        for (char ab : {'A', 'B'}) {
          const std::vector<float>& src = ab == 'A' ? lin->lora->A : lin->lora->B;
          out.Set(PeftName(l, p, ab), ToFloat32Array(env, src));
        }
      }
    return out;
  });
}

Napi::Value Model::ClearLora(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    std::unique_lock<std::mutex> lock(state_->mu, std::try_to_lock);
    MIMIC_CHECK(lock.owns_lock(), "EBUSY", "clearLora: the model is busy with a running call; await it first");
    LlamaModel& m = state_->weights();
    for (auto& layer : m.layers)
      for (const char* p : kProjections) layer.projection(p)->lora.reset();
#ifdef MIMIC_CUDA
    state_->host_lora_stale = false;
#endif
    state_->lora_version++;
    return env.Undefined();
  });
}

Napi::Value Model::CreateTrainer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return MakeTrainer(env, state_, info.Length() > 0 ? info[0] : env.Undefined());
}

Napi::Value Model::Dispose(const Napi::CallbackInfo& info) {
  state_->dispose_requested = true;
  std::unique_lock<std::mutex> lock(state_->mu, std::try_to_lock);
  if (lock.owns_lock()) state_->free_weights();  // else the running call frees them when it ends
  return info.Env().Undefined();
}

}  // namespace mimic::addon
