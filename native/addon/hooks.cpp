// hooks (addon) — internal functions the tests and the data-parallel trainer call: NF4
// quantization and matmul, the masked cross-entropy op, and NCCL's availability and unique id.
// Underscore names: not part of the public API (lib/native.ts types them as internal).
#include "addon/hooks.h"

#include <cstdint>
#include <vector>

#include "addon/args.h"
#include "addon/errors.h"
#include "core/error.h"
#include "dist/nccl_comm.h"
#include "ops/cross_entropy.h"
#include "ops/nf4.h"

#ifdef MIMIC_CUDA
#include "cuda/llama_cuda.h"
#endif

namespace mimic::addon {
namespace {

NF4Weight quantize_arg(const Napi::CallbackInfo& info, int first) {
  std::vector<float> w = f32_copy(info[first], "w");
  const int M = int_arg(info[first + 1], "M", 1), K = int_arg(info[first + 2], "K", 1);
  MIMIC_CHECK((int64_t)w.size() == (int64_t)M * K, "ESHAPE", "w has ", w.size(), " values, M x K = ", (int64_t)M * K);
  const bool dq = info.Length() > (size_t)(first + 3) && info[first + 3].ToBoolean().Value();
  return nf4_quantize(w.data(), M, K, dq);
}

// _nf4Quantize(w, M, K, doubleQuant) → { packed, absmax, dequant, [absmaxU8, absmax2, code2, offset] }
Napi::Value Nf4Quantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    MIMIC_CHECK(info.Length() >= 3, "EINVAL", "_nf4Quantize(w, M, K, doubleQuant)");
    NF4Weight q = quantize_arg(info, 0);
    Napi::Object o = Napi::Object::New(env);
    o.Set("packed", ToUint8Array(env, q.packed));
    o.Set("absmax", ToFloat32Array(env, q.absmax));
    std::vector<float> deq((size_t)q.M * q.K);
    nf4_dequantize(deq.data(), q);
    o.Set("dequant", ToFloat32Array(env, deq));
    if (q.double_quant) {
      o.Set("absmaxU8", ToUint8Array(env, q.absmax_u8));
      o.Set("absmax2", ToFloat32Array(env, q.absmax2));
      o.Set("code2", ToFloat32Array(env, q.code2));
      o.Set("offset", Napi::Number::New(env, q.offset));
    }
    return o;
  });
}

// _nf4Matmul(w, M, K, doubleQuant, x, N, dout) → { out = x·dequant(w)ᵀ [N, M], dx = dout·dequant(w) [N, K] }
Napi::Value Nf4Matmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    MIMIC_CHECK(info.Length() >= 7, "EINVAL", "_nf4Matmul(w, M, K, doubleQuant, x, N, dout)");
    NF4Weight q = quantize_arg(info, 0);
    std::vector<float> x = f32_copy(info[4], "x");
    const int N = int_arg(info[5], "N", 1);
    std::vector<float> dout = f32_copy(info[6], "dout");
    MIMIC_CHECK((int64_t)x.size() == (int64_t)N * q.K && (int64_t)dout.size() == (int64_t)N * q.M, "ESHAPE",
                "x must be [N, K] and dout [N, M]");
    std::vector<float> out((size_t)N * q.M), dx((size_t)N * q.K, 0.f);
    cpu::nf4_matmul_forward(out.data(), x.data(), q, N);
    cpu::nf4_matmul_backward_input(dx.data(), dout.data(), q, N);
    Napi::Object o = Napi::Object::New(env);
    o.Set("out", ToFloat32Array(env, out));
    o.Set("dx", ToFloat32Array(env, dx));
    return o;
  });
}

// _ncclAvailable() → true when this build has NCCL and the CUDA backend sees a device.
Napi::Value NcclAvailable(const Napi::CallbackInfo& info) {
#ifdef MIMIC_CUDA
  const bool ok = dist::nccl_built() && cuda::available();
#else
  const bool ok = false;
#endif
  return Napi::Boolean::New(info.Env(), ok);
}

// _ncclUniqueId() → Uint8Array(128): rank 0's NCCL id for the rendezvous (ENOTSUP without NCCL).
Napi::Value NcclUniqueId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value { return ToUint8Array(env, dist::nccl_unique_id()); });
}

// _crossEntropy(logits, target, N, V, scale, inPlace) → { lossSum, dlogits }
Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    MIMIC_CHECK(info.Length() >= 6, "EINVAL", "_crossEntropy(logits, target, N, V, scale, inPlace)");
    std::vector<float> logits = f32_copy(info[0], "logits");
    std::vector<int32_t> target = i32_copy(info[1], "target");
    const int N = int_arg(info[2], "N", 1), V = int_arg(info[3], "V", 1);
    MIMIC_CHECK((int64_t)logits.size() == (int64_t)N * V && (int64_t)target.size() == N, "ESHAPE",
                "logits must be [N, V] and target [N]");
    for (int32_t y : target) MIMIC_CHECK(y == -100 || (y >= 0 && y < V), "ERANGE", "target ", y, " out of range");
    const float scale = (float)info[4].As<Napi::Number>().DoubleValue();
    const bool in_place = info[5].ToBoolean().Value();
    const double fwd = cpu::cross_entropy_forward(logits.data(), target.data(), N, V);
    std::vector<float> d(in_place ? 0 : logits.size());
    float* dl = in_place ? logits.data() : d.data();
    const double both = cpu::cross_entropy_forward_backward(dl, logits.data(), target.data(), N, V, scale);
    MIMIC_CHECK(fwd == both, "EINTERNAL", "cross_entropy forward and forward_backward disagree");
    Napi::Object o = Napi::Object::New(env);
    o.Set("lossSum", Napi::Number::New(env, fwd));
    o.Set("dlogits", ToFloat32Array(env, in_place ? logits : d));
    return o;
  });
}

}  // namespace

Napi::Object InitHooks(Napi::Env env, Napi::Object exports) {
  exports.Set("_nf4Quantize", Napi::Function::New(env, Nf4Quantize, "_nf4Quantize"));
  exports.Set("_nf4Matmul", Napi::Function::New(env, Nf4Matmul, "_nf4Matmul"));
  exports.Set("_crossEntropy", Napi::Function::New(env, CrossEntropy, "_crossEntropy"));
  // Data-parallel training's NCCL hooks (lib/train/distributed/nccl.ts).
  exports.Set("_ncclAvailable", Napi::Function::New(env, NcclAvailable, "_ncclAvailable"));
  exports.Set("_ncclUniqueId", Napi::Function::New(env, NcclUniqueId, "_ncclUniqueId"));
  return exports;
}

}  // namespace mimic::addon
