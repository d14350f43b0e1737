// data (addon) — per-environment state of the addon (one per Node main thread / worker thread):
// the constructors of the classes it creates from C++. module.cpp owns the napi instance-data
// slot; other classes (the Trainer) keep their constructor in `extra` under their name.
#pragma once
#include <napi.h>

#include <map>
#include <string>

namespace mimic::addon {

struct AddonData {
  Napi::FunctionReference model, session;
  std::map<std::string, Napi::FunctionReference> extra;
};

inline AddonData& Data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

}  // namespace mimic::addon
