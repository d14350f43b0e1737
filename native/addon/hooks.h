// hooks (addon) — registers the internal test and data-parallel hooks (see hooks.cpp).
#pragma once
#include <napi.h>

namespace mimic::addon {

Napi::Object InitHooks(Napi::Env env, Napi::Object exports);

}  // namespace mimic::addon
