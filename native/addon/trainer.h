// trainer (addon) — the JS face of the LoRA training engine (engine/train.h).
//
// InitTrainer registers on the module's exports:
//   - the Trainer class (constructed only through Model.createTrainer, see MakeTrainer);
//   - _nf4Quantize(w: Float32Array, M, K, doubleQuant) and _nf4Matmul(...): internal hooks that
//     expose NF4 quantization and its matmuls to the tests (not part of the public API).
// The Model class (model.cpp, another file) implements `createTrainer(options)` by calling
// MakeTrainer with its LlamaModel and its own JS object (kept referenced so that the weights
// outlive the trainer).
#pragma once
#include <napi.h>

namespace mimic {
struct LlamaModel;
}

namespace mimic::addon {

Napi::Object InitTrainer(Napi::Env env, Napi::Object exports);

// Model.createTrainer(options): `model_object` is the JS Model (held by the trainer), `model`
// its weights; options as NativeTrainerOptions in lib/native.ts. Throws a JS Error on bad options.
Napi::Value MakeTrainer(Napi::Env env, Napi::Object model_object, LlamaModel& model, Napi::Value options);

}  // namespace mimic::addon
