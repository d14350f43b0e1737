// nf4_dequant_fast — NF4 (bitsandbytes layout, double-quantized absmax) → bf16 shaped for memory
// bandwidth. Same maths as nf4.cu's dequant_kernel, bit for bit:
//   w[i] = bf16_rn( NF4_CODE[nibble_i] · absmax_{i/64} )      (first element of a byte: HIGH nibble)
//   absmax_b = code2[u8_b] · absmax2_{b/256} + offset            (one fp32 FMA, as nvcc contracts it there)
//
// Why the legacy kernel is slow (bench/NOTES.md round 5/6b): per thread 8 bytes in, and before any
// store three dependent global loads (u8 → code2[u8] → absmax2), plus 16 constant-memory lookups
// c_nf4[nibble] with per-lane indices (the constant cache serializes distinct addresses of a warp).
//
// Here:
//  - a tile = 2,048 code words of 4 bytes (8 KiB in, 32 KiB out) = 256 64-blocks = exactly one
//    absmax2 group, so a tile needs ONE absmax2 value and 256 absmax bytes;
//  - thread t takes words t, t + 256, …, t + 7·256 of the tile: each warp load reads 128 contiguous
//    bytes and each warp store — one bf16x8 (16 bytes) a lane — writes 512 contiguous bytes. (Round
//    6b's version gave a lane two 16-byte chunks whose four stores landed 64 bytes apart: a warp store
//    touched 32 half-written sectors instead of 16 whole ones. Round 20, H100, prefill 512: this
//    layout took the pass from 13.8 to 10.5 ms; ncu had put that version at 5-31 % of DRAM.)
//  - per tile each thread issues all its global loads at once (8 code words, 1 absmax byte, the
//    group's absmax2), decodes its one absmax through code2 held in shared memory, writes it to
//    shared memory; one barrier; then every thread reads its words' absmax from shared memory (no
//    chained global loads per element);
//  - the 16 NF4 code values sit in shared memory (16 words in 16 banks: conflict-free whatever the
//    nibbles);
//  - grid = SMs × resident blocks, grid-stride over tiles (or one tile a block: max_blocks < 0);
//    the absmax staging is double-buffered so one barrier per tile suffices.
// Shapes: any M·K with M·K/2 % 32 == 0 (every NF4Device: nf4_upload requires M·K % 64 == 0); a
// partial last tile is guarded. Unaligned out/packed pointers: the caller falls back to legacy.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/env.h"
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/nf4_dequant_fast.h"

namespace mimic::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWordsPerThread = 8;                          // 4 packed bytes = 8 values each
constexpr int kTileWords = kThreads * kWordsPerThread;      // 2,048 words = 8 KiB of codes
constexpr int kTileBlocks = kTileWords / 8;                 // 64-blocks per tile (8 words a block)
static_assert(kTileBlocks == 256, "a tile must be exactly one absmax2 group of 256 blocks");
static_assert(kTileBlocks == kThreads, "one absmax per thread per tile");

__global__ void __launch_bounds__(kThreads)
    dequant_fast_kernel(uint4* __restrict__ out, const uint32_t* __restrict__ packed, const float* __restrict__ absmax,
                        const uint8_t* __restrict__ am_u8, const float* __restrict__ absmax2,
                        const float* __restrict__ code2, float offset, int64_t n_words, NF4Lut lut, int64_t wpr, int64_t ld16) {
  __shared__ float s_code2[256];
  __shared__ float s_lut[16];
  __shared__ float s_am[2][kTileBlocks];
  const int t = threadIdx.x;
  if (!absmax) s_code2[t] = code2[t];
  if (t < 16) s_lut[t] = lut.v[t];
  __syncthreads();

  const int64_t n_blk = n_words >> 3;
  const int64_t n_tiles = (n_words + kTileWords - 1) / kTileWords;
  int buf = 0;
  for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x, buf ^= 1) {
    const int64_t w0 = tile * kTileWords;
    const int64_t b = tile * kTileBlocks + t;
    // every global load of the tile in flight before any is used
    uint32_t w[kWordsPerThread];
#pragma unroll
    for (int u = 0; u < kWordsPerThread; ++u) {
      const int64_t i = w0 + t + u * kThreads;
      w[u] = i < n_words ? __ldcs(packed + i) : 0u;  // codes: read once
    }
    float am;
    if (absmax) {
      am = b < n_blk ? __ldg(absmax + b) : 0.f;
    } else {
      const uint32_t u8 = b < n_blk ? (uint32_t)__ldg(am_u8 + b) : 0u;
      const float a2 = __ldg(absmax2 + tile);  // tile == its absmax2 group (kTileBlocks == 256)
      am = s_code2[u8] * a2 + offset;          // contracted to one FMA, exactly as dequant_kernel
    }
    s_am[buf][t] = am;
    __syncthreads();  // s_am[buf] complete; s_am[buf ^ 1] is free (everyone passed the last tile)

#pragma unroll
    for (int u = 0; u < kWordsPerThread; ++u) {
      const int wt = t + u * kThreads;  // word within the tile
      const int64_t i = w0 + wt;
      if (i < n_words) {
        const float a = s_am[buf][wt >> 3];
        uint32_t r[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint32_t byte = (w[u] >> (8 * j)) & 0xffu;
          r[j] = bf2_bits(s_lut[byte >> 4] * a, s_lut[byte & 15u] * a);
        }
        // values 8i .. 8i + 7; rows of ld16 pieces where the caller asked for a row stride (wpr a row)
        out[row_strided(i, wpr, ld16)] = make_uint4(r[0], r[1], r[2], r[3]);
      }
    }
  }
}

bool aligned16(const void* p) { return ((uintptr_t)p & 15u) == 0; }

int resident_grid() {
  int dev = 0;
  MIMIC_CUDA_CHECK(cudaGetDevice(&dev));
  static int cache[64] = {0};
  if (dev >= 0 && dev < 64 && cache[dev] > 0) return cache[dev];
  int sms = 0, per_sm = 0;
  MIMIC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  MIMIC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, dequant_fast_kernel, kThreads, 0));
  const int g = std::max(1, sms * std::max(1, per_sm));
  if (dev >= 0 && dev < 64) cache[dev] = g;
  return g;
}

}  // namespace

bool nf4_dequant_fast_enabled() {
  static const bool on = env_switch_on("MIMIC_NF4_DEQUANT_FAST");  // round 7: the default
  return on;
}

bool nf4_dequantize_fast(bf16* out, const NF4Device& W, int max_blocks, cudaStream_t stream, int64_t ld) {
  const int64_t n_bytes = (int64_t)W.M * W.K / 2;
  if (W.M <= 0 || W.K <= 0 || n_bytes % 32 != 0) return false;
  if (ld == 0) ld = W.K;
  if (ld != W.K && (ld < W.K || W.K % 8 != 0 || ld % 8 != 0)) return false;
  if (!out || !W.packed.p || !aligned16(out) || !aligned16(W.packed.p)) return false;
  if (W.double_quant ? !(W.absmax_u8.p && W.absmax2.p && W.code2.p) : !W.absmax.p) return false;
  const int64_t n_words = n_bytes / 4;
  const int64_t n_tiles = (n_words + kTileWords - 1) / kTileWords;
  int64_t grid = std::min<int64_t>(n_tiles, resident_grid());
  if (max_blocks > 0) grid = std::min<int64_t>(grid, max_blocks);
  if (max_blocks < 0) grid = n_tiles;  // one tile a block: short-lived blocks that other work can interleave with
  NF4Lut lut;
  std::memcpy(lut.v, mimic::NF4_CODE, sizeof lut.v);
  dequant_fast_kernel<<<(unsigned)grid, kThreads, 0, stream ? stream : Context::get().stream>>>(
      reinterpret_cast<uint4*>(out), reinterpret_cast<const uint32_t*>(W.packed.p),
      W.double_quant ? nullptr : W.absmax.p, W.absmax_u8.p, W.absmax2.p, W.code2.p, W.offset, n_words, lut, W.K / 8, ld / 8);
  MIMIC_CUDA_LAUNCHED();
  return true;
}

}  // namespace mimic::cuda
