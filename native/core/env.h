// env — the GPU switches' one reading of the environment (README, "GPU switches"): a switch is on
// unless its variable is exactly "0" (env_is names a switch whose other leg is another value). Callers that read it at every launch (graph recordings) let one
// process alternate A/B legs; callers that cache it read it once.
#pragma once
#include <cstdlib>
#include <cstring>

namespace mimic {

inline bool env_is(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e && std::strcmp(e, value) == 0;
}

inline bool env_switch_on(const char* name) { return !env_is(name, "0"); }

}  // namespace mimic
