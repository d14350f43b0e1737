// embedding — out[n, :] = table[ids[n], :]   ids[N] int32, table[V, C], out[N, C].
// A row copy per token; ids were validated by the caller (the engine names a bad id).
#include "ops/embedding.h"

#include <cstring>

namespace mimic::cpu {

void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N, int C) {
  for (int64_t n = 0; n < N; ++n)
    std::memcpy(out + n * C, table + (int64_t)ids[n] * C, sizeof(float) * (size_t)C);
}

}  // namespace mimic::cpu
