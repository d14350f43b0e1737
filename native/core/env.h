// env — the GPU switches' one reading of the environment (README, "GPU switches"): a switch is on
// unless its variable is exactly "0". Callers that read it at every launch (graph recordings) let one
// process alternate A/B legs; callers that cache it read it once.
#pragma once
#include <cstdlib>
#include <cstring>

namespace mimic {

inline bool env_switch_on(const char* name) {
  const char* e = std::getenv(name);
  return !(e && std::strcmp(e, "0") == 0);
}

}  // namespace mimic
