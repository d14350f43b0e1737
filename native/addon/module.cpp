// module (addon) — the entry point: registers the NativeAddon of lib/native.ts
// (version, cudaAvailable, loadModel), the Model and Session classes (constructed from C++
// only), the Trainer (addon/trainer.cpp, via InitTrainer) and the internal test hooks
// _opCheck() and _sample().
#include <napi.h>

#include <cstring>
#include <memory>
#include <vector>

#include "addon/args.h"
#include "addon/data.h"
#include "addon/errors.h"
#include "addon/model.h"
#include "addon/session.h"
#include "addon/trainer.h"
#include "core/opcheck.h"
#include "ops/sampling.h"

#ifdef MIMIC_CUDA
#include <cuda_runtime.h>

#include "cuda/llama_cuda.h"
#endif

namespace mimic::addon {
namespace {

// Kept equal to package.json's version (test/native/addon-types.test.ts checks it).
constexpr const char* kVersion = "0.1.0";

Napi::Value CudaAvailable(const Napi::CallbackInfo& info) {
#ifdef MIMIC_CUDA
  int n = 0;
  bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();  // clear the sticky "no device" error
  return Napi::Boolean::New(info.Env(), ok);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

// _opCheck() → [{op, check, maxRelErr, tol, pass}] (internal: the op-check harness).
Napi::Value OpCheck(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    std::vector<OpCheckRow> rows = run_op_checks();
    Napi::Array out = Napi::Array::New(env, rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("op", rows[i].op);
      o.Set("check", rows[i].check);
      o.Set("maxRelErr", rows[i].max_rel_err);
      o.Set("tol", rows[i].tol);
      o.Set("pass", rows[i].pass);
      out.Set((uint32_t)i, o);
    }
    return out;
  });
}

// _sample(logits: Float32Array, sampling, history: Int32Array, seed, draws) → Int32Array of
// `draws` tokens, each from a fresh copy of logits with one RNG stream (internal: sampler tests).
Napi::Value Sample(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw MakeError(env, "EINVAL", "_sample: logits must be a Float32Array");
    Napi::Float32Array lg = info[0].As<Napi::Float32Array>();
    if (lg.ElementLength() == 0) throw MakeError(env, "EINVAL", "_sample: logits is empty");
    SamplingParams p = ReadSampling(env, info[1]);
    std::vector<int32_t> hist = ReadInt32Array(env, info[2], "_sample: history");
    uint64_t seed = (uint64_t)ReadInteger(env, info[3], "_sample: seed", 0, 9007199254740991LL);
    int draws = (int)ReadInteger(env, info[4], "_sample: draws", 1, 1 << 24);
    Rng rng(seed);
    std::vector<float> row(lg.ElementLength());
    Napi::Int32Array out = Napi::Int32Array::New(env, (size_t)draws);
    for (int d = 0; d < draws; ++d) {
      std::memcpy(row.data(), lg.Data(), row.size() * sizeof(float));
      out[d] = cpu::sample_token(row.data(), (int64_t)row.size(), p, hist.data(), (int64_t)hist.size(), rng);
    }
    return out;
  });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);
  data->model = Napi::Persistent(Model::Init(env));
  data->session = Napi::Persistent(Session::Init(env));

  exports.Set("version", Napi::String::New(env, kVersion));
  exports.Set("cudaAvailable", Napi::Function::New(env, CudaAvailable, "cudaAvailable"));
  exports.Set("loadModel", Napi::Function::New(env, LoadModel, "loadModel"));
  exports.Set("_opCheck", Napi::Function::New(env, OpCheck, "_opCheck"));
#ifdef MIMIC_CUDA
  // CUDA-vs-CPU rows (native/cuda/opcheck_cuda.cu), only where a GPU is present.
  static bool cuda_rows = false;
  if (!cuda_rows && mimic::cuda::available()) {
    add_op_checks("cuda", [] { return mimic::cuda::cuda_op_checks(); });
    cuda_rows = true;
  }
#endif
  exports.Set("_sample", Napi::Function::New(env, Sample, "_sample"));

  // ---- the Trainer (addon/trainer.cpp, the training engineer's) registers itself here ----
  InitTrainer(env, exports);
  return exports;
}

}  // namespace
}  // namespace mimic::addon

static Napi::Object InitMimic(Napi::Env env, Napi::Object exports) { return mimic::addon::Init(env, exports); }
NODE_API_MODULE(mimic, InitMimic)
