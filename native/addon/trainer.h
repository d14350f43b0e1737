// trainer (addon) — the JS face of the LoRA training engine (engine/train.h): NativeTrainer of
// lib/native.ts.
//
// InitTrainer registers on the module's exports:
//   - the Trainer class (constructed only through Model.createTrainer → MakeTrainer; its
//     constructor is kept in AddonData::extra["Trainer"]);
//   - through InitHooks (hooks.h): _nf4Quantize, _nf4Matmul, _crossEntropy, _ncclAvailable and
//     _ncclUniqueId, internal hooks for the tests and the data-parallel trainer.
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
