// embedding — token ids to rows of the embedding table.
//
//   forward: out[n, :] = table[ids[n], :]      ids[N] int32, table[V, C]
// No backward: the embedding table is frozen (LoRA never targets it here).
// Callers validate 0 <= ids[n] < V before calling (the engine does, with a clear error).
#pragma once
#include <cstdint>

namespace mimic::cpu {
void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N, int C);
}  // namespace mimic::cpu
