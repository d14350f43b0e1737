// nf4_dequant_fast — a bandwidth-shaped NF4 → bf16 dequantize (native/cuda/nf4_dequant_fast.cu),
// the default since round 7 (H200: batched 3B step S = 32 15.5 → 10.0 ms): nf4_dequantize (nf4.cu)
// takes it wherever the shape and alignment allow, unless MIMIC_NF4_DEQUANT_FAST=0 (read once per
// process); otherwise the original kernel (nf4_dequantize_legacy) runs. Output is bit for bit the legacy kernel's: the same
// fp32 absmax (code2[u8]·absmax2 + offset, one FMA), the same fp32 product NF4_CODE·absmax
// rounded to nearest bf16.
#pragma once
#include "cuda/cuda_ops.h"

namespace mimic::cuda {

// True unless the environment sets MIMIC_NF4_DEQUANT_FAST=0 (read on the first call).
bool nf4_dequant_fast_enabled();
// out[M, K] = dequant(W) with the fast kernel. Returns false (and launches nothing) when it
// cannot: M·K/2 not a multiple of 32 bytes, `out` or the packed codes not 16-byte aligned, or
// the block statistics missing. max_blocks > 0 caps the grid (the checks use it to exercise
// the grid-stride loop); 0 = SM count × resident blocks per SM; < 0 one block a tile of 8 KiB of
// codes (blocks that live ~1 µs, so that a GEMM on another stream can take SMs as they retire:
// dequant_ahead.cu). stream: null = Context::get().stream. ld > 0: out's rows are ld values apart
// (ld >= K, K and ld multiples of 8; else false) — the training forward's [W | B] rows (llama_cuda.cu).
bool nf4_dequantize_fast(bf16* out, const NF4Device& W, int max_blocks = 0, cudaStream_t stream = nullptr, int64_t ld = 0);
// The original kernel (8 bytes a thread), whatever the switch says — the checks' reference.
void nf4_dequantize_legacy(bf16* out, const NF4Device& W);

}  // namespace mimic::cuda
