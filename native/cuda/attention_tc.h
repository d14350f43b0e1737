// attention_tc.h — switch and entry points of the tensor-core attention (native/cuda/attention_tc.cu).
// attention.cu calls these first; each returns false (having done nothing) when the TC path is off or
// the shape/pointers/device are unsupported, and the caller then runs the CUDA-core kernels.
#pragma once
#include "cuda/buffer.h"

namespace mimic::cuda {

// True when the TC path is on: unless MIMIC_ATTN_TC=0 in the environment (read once) or overridden.
bool attention_tc_enabled();
// Override for tests: 1 forces the TC path on, 0 off, -1 back to the environment's choice.
void attention_tc_override(int mode);

bool attention_forward_tc(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int Tq, int Tk,
                          int q_offset, int Hq, int Hkv, int D);
bool attention_backward_tc(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                           const bf16* v, const bf16* out, const float* lse, int B, int T, int Hq, int Hkv, int D);

}  // namespace mimic::cuda
