// errors (addon) — turns native failures into JS exceptions with a `.code`.
//
// mimic::Error keeps its code (ENOENT, EBADFILE, ESHAPE, ...); std::bad_alloc becomes EOOM;
// anything else EINTERNAL. Synchronous methods wrap their body in Guard(); AsyncWorkers derive
// from Worker, which does the same across the thread hop and settles a Promise.
#pragma once
#include <napi.h>

#include <functional>
#include <string>

namespace mimic::addon {

Napi::Error MakeError(Napi::Env env, const std::string& code, const std::string& message);
// The JS code and message for a caught C++ exception.
void Classify(const std::exception& e, std::string* code, std::string* msg);

// Runs fn; a C++ exception becomes a thrown JS Error with .code.
template <class F>
auto Guard(Napi::Env env, F&& fn) -> decltype(fn()) {
  std::string code, msg;
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    Classify(e, &code, &msg);
  }
  throw MakeError(env, code, msg);
}

// A Promise-returning AsyncWorker: Run() on a libuv thread, Resolve() on the JS thread.
class Worker : public Napi::AsyncWorker {
 public:
  explicit Worker(Napi::Env env, const char* name)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  virtual void Run() = 0;                           // worker thread: no JS here
  virtual Napi::Value Resolve(Napi::Env env) = 0;   // JS thread
  virtual void Finally() {}                         // JS thread, after success or failure

 private:
  void Execute() override;
  void OnOK() override;
  void OnError(const Napi::Error& e) override;
  Napi::Promise::Deferred deferred_;
  std::string code_, msg_;
};

// Rejects a fresh promise (argument errors of async methods reject instead of throwing).
Napi::Promise Rejected(Napi::Env env, const std::string& code, const std::string& message);

}  // namespace mimic::addon
