// errors (addon) — see errors.h.
#include "addon/errors.h"

#include <new>

#include "core/error.h"

namespace mimic::addon {

Napi::Error MakeError(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, "mimic: " + message);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

void Classify(const std::exception& e, std::string* code, std::string* msg) {
  if (auto* m = dynamic_cast<const mimic::Error*>(&e)) {
    *code = m->code;
    *msg = m->what();
  } else if (dynamic_cast<const std::bad_alloc*>(&e)) {
    *code = "EOOM";
    *msg = "out of memory. Close other programs, use quant 'nf4', or a smaller model / maxLength.";
  } else {
    *code = "EINTERNAL";
    *msg = std::string("internal error: ") + e.what() + " (please report this)";
  }
}

void Worker::Execute() {
  try {
    Run();
  } catch (const std::exception& e) {
    Classify(e, &code_, &msg_);
    SetError(msg_);
  }
}

void Worker::OnOK() {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  try {
    Napi::Value v = Resolve(env);
    Finally();
    deferred_.Resolve(v);
  } catch (const Napi::Error& e) {
    Finally();
    deferred_.Reject(e.Value());
  } catch (const std::exception& e) {
    Finally();
    Classify(e, &code_, &msg_);
    deferred_.Reject(MakeError(env, code_, msg_).Value());
  }
}

void Worker::OnError(const Napi::Error&) {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  Finally();
  deferred_.Reject(MakeError(env, code_.empty() ? "EINTERNAL" : code_, msg_).Value());
}

Napi::Promise Rejected(Napi::Env env, const std::string& code, const std::string& message) {
  auto d = Napi::Promise::Deferred::New(env);
  d.Reject(MakeError(env, code, message).Value());
  return d.Promise();
}

}  // namespace mimic::addon
