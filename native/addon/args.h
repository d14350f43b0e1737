// args (addon) — reading JS arguments into C++ values with errors that name the argument, and
// copying C++ buffers back out as typed arrays.
#pragma once
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "addon/errors.h"
#include "core/error.h"

namespace mimic::addon {

inline std::vector<int32_t> ReadInt32Array(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw MakeError(env, "EINVAL", std::string(what) + " must be an Int32Array");
  auto a = v.As<Napi::Int32Array>();
  return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

// A JS typed array holding a copy of v (JS owns its memory; the C++ buffer may go away).
inline Napi::Float32Array ToFloat32Array(Napi::Env env, const std::vector<float>& v) {
  Napi::Float32Array a = Napi::Float32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(float));
  return a;
}

inline Napi::Uint8Array ToUint8Array(Napi::Env env, const std::vector<uint8_t>& v) {
  Napi::Uint8Array a = Napi::Uint8Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size());
  return a;
}

inline double ReadNumber(Napi::Env env, Napi::Object o, const char* key, const char* what) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber() || !std::isfinite(v.As<Napi::Number>().DoubleValue()))
    throw MakeError(env, "EINVAL", std::string(what) + "." + key + " must be a finite number");
  return v.As<Napi::Number>().DoubleValue();
}

inline int64_t ReadInteger(Napi::Env env, Napi::Value v, const std::string& what, int64_t lo, int64_t hi) {
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(std::isfinite(d) && d == std::floor(d) && d >= (double)lo && d <= (double)hi))
    throw MakeError(env, "EINVAL", what + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return (int64_t)d;
}

// ---- the same checks throwing mimic::Error ---------------------------------------------------
// For code inside Guard() or an AsyncWorker's argument parsing (trainer, hooks), where a
// mimic::Error becomes a rejected promise or a JS Error with its code, instead of a Napi::Error
// thrown at once.

inline double number_field(const Napi::Object& o, const char* key, const char* where) {
  Napi::Value v = o.Get(key);
  MIMIC_CHECK(v.IsNumber(), "EINVAL", where, ".", key, " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  MIMIC_CHECK(std::isfinite(d), "EINVAL", where, ".", key, " must be finite (got ", d, ")");
  return d;
}

inline int int_arg(const Napi::Value& v, const char* what, int lo) {
  MIMIC_CHECK(v.IsNumber(), "EINVAL", what, " must be an integer");
  const double d = v.As<Napi::Number>().DoubleValue();
  MIMIC_CHECK(std::isfinite(d) && d == std::floor(d) && d >= lo && d <= 2147483647.0, "EINVAL", what,
              " must be an integer >= ", lo, " (got ", d, ")");
  return static_cast<int>(d);
}

inline std::vector<float> f32_copy(const Napi::Value& v, const std::string& what) {
  MIMIC_CHECK(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array, "EINVAL", what,
              " must be a Float32Array");
  Napi::Float32Array a = v.As<Napi::Float32Array>();
  return std::vector<float>(a.Data(), a.Data() + a.ElementLength());
}

// Like args.h's ReadInt32Array, but throws mimic::Error so that the async methods reject their
// promise (EINVAL) instead of throwing synchronously.
inline std::vector<int32_t> i32_copy(const Napi::Value& v, const char* what) {
  MIMIC_CHECK(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array, "EINVAL", what,
              " must be an Int32Array");
  Napi::Int32Array a = v.As<Napi::Int32Array>();
  return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

}  // namespace mimic::addon
