// trainer (addon) — the JS face of the LoRA training engine (engine/train.h): NativeTrainer of
// lib/native.ts.
//
// InitTrainer registers on the module's exports:
//   - the Trainer class (constructed only through Model.createTrainer → MakeTrainer; its
//     constructor is kept in AddonData::extra["Trainer"]);
//   - _nf4Quantize(w: Float32Array, M, K, doubleQuant), _nf4Matmul(...) and _crossEntropy(...):
//     internal hooks that expose NF4 and the masked cross-entropy op to the tests (not part of
//     the public API).
// Concurrency: accumulate/evaluate/step run on libuv threads holding ModelState::mu, like the
// model's own async calls, so training and generation on one model never interleave. The
// synchronous methods throw EBUSY while a call of this trainer is in flight, except dispose(),
// which then takes effect when that call settles. One trainer per
// model at a time (EBUSY otherwise); the adapters it trains stay attached to the model.
#pragma once
#include <napi.h>

#include <memory>

namespace mimic::addon {

struct ModelState;

Napi::Object InitTrainer(Napi::Env env, Napi::Object exports);

// Model.createTrainer(options): options as NativeTrainerOptions in lib/native.ts. Throws a JS
// Error (EINVAL, ESHAPE, EBUSY, EDISPOSED) on bad options or an unavailable model.
Napi::Value MakeTrainer(Napi::Env env, std::shared_ptr<ModelState> state, Napi::Value options);

}  // namespace mimic::addon
