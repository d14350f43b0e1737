// batch (addon) — model.nextBatch(sessions, ids, sampling, history) → Promise<Int32Array>: one
// decoding step for several sessions of one model at once (engine/decode_batch.h), so that
// concurrent generations share each read of the weights instead of taking turns.
//
// The call holds the model's lock (ModelState::mu) like session.next, and marks every session
// busy until it settles: a session that is busy, belongs to another model, or appears twice is
// refused before anything runs. Model::NextBatch (declared in model.h) forwards here.
#pragma once
#include <napi.h>

#include <memory>

namespace mimic::addon {

struct ModelState;

Napi::Value NextBatch(const Napi::CallbackInfo& info, const std::shared_ptr<ModelState>& model);

}  // namespace mimic::addon
