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
//  - a tile = 512 chunks of 16 packed bytes (8 KiB in, 32 KiB out) = 256 64-blocks = exactly one
//    absmax2 group, so a tile needs ONE absmax2 value and 256 absmax bytes;
//  - per tile each thread issues all its global loads at once (2 × 16-byte codes, 1 absmax byte,
//    the group's absmax2), decodes its one absmax through code2 held in shared memory, writes it
//    to shared memory; one barrier; then every thread reads its chunk's absmax from shared memory
//    (no chained global loads per element);
//  - the 16 NF4 code values sit in shared memory (16 words in 16 banks: conflict-free whatever the
//    nibbles), each chunk becomes 4 × 16-byte bf16x8 stores;
//  - grid = SMs × resident blocks, grid-stride over tiles; the absmax staging is double-buffered
//    so one barrier per tile suffices.
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
constexpr int kChunksPerThread = 2;                           // 16 packed bytes = 32 values each
constexpr int kTileChunks = kThreads * kChunksPerThread;      // 512 chunks = 8 KiB of codes
constexpr int kTileBlocks = kTileChunks / 2;                  // 64-blocks per tile
static_assert(kTileBlocks == 256, "a tile must be exactly one absmax2 group of 256 blocks");
static_assert(kTileBlocks == kThreads, "one absmax per thread per tile");

__global__ void __launch_bounds__(kThreads)
    dequant_fast_kernel(uint4* __restrict__ out, const uint4* __restrict__ packed, const float* __restrict__ absmax,
                        const uint8_t* __restrict__ am_u8, const float* __restrict__ absmax2,
                        const float* __restrict__ code2, float offset, int64_t n_chunks, NF4Lut lut) {
  __shared__ float s_code2[256];
  __shared__ float s_lut[16];
  __shared__ float s_am[2][kTileBlocks];
  const int t = threadIdx.x;
  if (!absmax) s_code2[t] = code2[t];
  if (t < 16) s_lut[t] = lut.v[t];
  __syncthreads();

  const int64_t n_blk = n_chunks >> 1;
  const int64_t n_tiles = (n_chunks + kTileChunks - 1) / kTileChunks;
  int buf = 0;
  for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x, buf ^= 1) {
    const int64_t c0 = tile * kTileChunks;
    const int64_t b = tile * kTileBlocks + t;
    // every global load of the tile in flight before any is used
    uint4 w[kChunksPerThread];
#pragma unroll
    for (int u = 0; u < kChunksPerThread; ++u) {
      const int64_t c = c0 + t + u * kThreads;
      w[u] = c < n_chunks ? __ldcs(packed + c) : make_uint4(0, 0, 0, 0);  // codes: read once
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
    for (int u = 0; u < kChunksPerThread; ++u) {
      const int ct = t + u * kThreads;  // chunk within the tile
      const int64_t c = c0 + ct;
      if (c < n_chunks) {
        const float a = s_am[buf][ct >> 1];
        const uint32_t ws[4] = {w[u].x, w[u].y, w[u].z, w[u].w};
        uint4* o = out + c * 4;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          uint32_t r[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const uint32_t byte = (ws[q] >> (8 * j)) & 0xffu;
            r[j] = bf2_bits(s_lut[byte >> 4] * a, s_lut[byte & 15u] * a);
          }
          o[q] = make_uint4(r[0], r[1], r[2], r[3]);
        }
      }
    }
  }
}

// The same tile, one 4-byte code word a lane instead of two 16-byte chunks (MIMIC_NF4_DEQUANT_WIDE):
// thread t takes words t, t + 256, …, t + 7·256 of the tile, so each of a warp's loads reads 128
// contiguous bytes and each of its stores — one bf16x8 of 16 bytes a lane — writes 512 contiguous
// bytes. dequant_fast_kernel's lanes store 16 bytes 64 bytes apart (a lane's chunk is 4 stores): a
// warp's store touches 32 half-written sectors instead of 16 whole ones (twice the L2 write requests
// for the same bytes). Same absmax, same products and roundings: the same bits.
constexpr int kWordsPerThread = 8;  // 8 × 256 words = 8 KiB of codes = the tile
static_assert(kWordsPerThread * kThreads * 4 == kTileChunks * 16, "the wide kernel's tile is the fast kernel's");

__global__ void __launch_bounds__(kThreads)
    dequant_wide_kernel(uint4* __restrict__ out, const uint32_t* __restrict__ packed, const float* __restrict__ absmax,
                        const uint8_t* __restrict__ am_u8, const float* __restrict__ absmax2,
                        const float* __restrict__ code2, float offset, int64_t n_words, NF4Lut lut) {
  __shared__ float s_code2[256];
  __shared__ float s_lut[16];
  __shared__ float s_am[2][kTileBlocks];
  const int t = threadIdx.x;
  if (!absmax) s_code2[t] = code2[t];
  if (t < 16) s_lut[t] = lut.v[t];
  __syncthreads();

  const int64_t n_blk = n_words >> 3;  // 8 words a 64-block
  constexpr int kTileWords = kWordsPerThread * kThreads;
  const int64_t n_tiles = (n_words + kTileWords - 1) / kTileWords;
  int buf = 0;
  for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x, buf ^= 1) {
    const int64_t w0 = tile * kTileWords;
    const int64_t b = tile * kTileBlocks + t;
    uint32_t w[kWordsPerThread];
#pragma unroll
    for (int u = 0; u < kWordsPerThread; ++u) {
      const int64_t i = w0 + t + u * kThreads;
      w[u] = i < n_words ? __ldcs(packed + i) : 0u;
    }
    float am;
    if (absmax) {
      am = b < n_blk ? __ldg(absmax + b) : 0.f;
    } else {
      const uint32_t u8 = b < n_blk ? (uint32_t)__ldg(am_u8 + b) : 0u;
      const float a2 = __ldg(absmax2 + tile);  // tile == its absmax2 group
      am = s_code2[u8] * a2 + offset;          // one FMA, exactly as dequant_kernel
    }
    s_am[buf][t] = am;
    __syncthreads();
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
        out[i] = make_uint4(r[0], r[1], r[2], r[3]);
      }
    }
  }
}

bool aligned16(const void* p) { return ((uintptr_t)p & 15u) == 0; }

// SMs × resident blocks of `kernel` (one of the two above), asked once per device and kernel
template <class Kernel>
int resident_grid(Kernel kernel, int which) {
  int dev = 0;
  MIMIC_CUDA_CHECK(cudaGetDevice(&dev));
  static int cache[2][64] = {};
  if (dev >= 0 && dev < 64 && cache[which][dev] > 0) return cache[which][dev];
  int sms = 0, per_sm = 0;
  MIMIC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  MIMIC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  const int g = std::max(1, sms * std::max(1, per_sm));
  if (dev >= 0 && dev < 64) cache[which][dev] = g;
  return g;
}

}  // namespace

bool nf4_dequant_fast_enabled() {
  static const bool on = env_switch_on("MIMIC_NF4_DEQUANT_FAST");  // round 7: the default
  return on;
}

bool nf4_dequant_wide_enabled() {
  static const bool on = env_is("MIMIC_NF4_DEQUANT_WIDE", "1");  // (measured before it becomes the default)
  return on;
}

bool nf4_dequantize_fast(bf16* out, const NF4Device& W, int max_blocks, int wide, cudaStream_t stream) {
  const int64_t n_bytes = (int64_t)W.M * W.K / 2;
  if (W.M <= 0 || W.K <= 0 || n_bytes % 32 != 0) return false;
  if (!out || !W.packed.p || !aligned16(out) || !aligned16(W.packed.p)) return false;
  if (W.double_quant ? !(W.absmax_u8.p && W.absmax2.p && W.code2.p) : !W.absmax.p) return false;
  const int64_t n_chunks = n_bytes / 16;
  const int64_t n_tiles = (n_chunks + kTileChunks - 1) / kTileChunks;
  const bool use_wide = wide < 0 ? nf4_dequant_wide_enabled() : wide > 0;
  int64_t grid = std::min<int64_t>(n_tiles, use_wide ? resident_grid(dequant_wide_kernel, 1) : resident_grid(dequant_fast_kernel, 0));
  if (max_blocks > 0) grid = std::min<int64_t>(grid, max_blocks);
  if (max_blocks < 0) grid = n_tiles;  // one tile a block: short-lived blocks that other work can interleave with
  if (!stream) stream = Context::get().stream;
  NF4Lut lut;
  std::memcpy(lut.v, mimic::NF4_CODE, sizeof lut.v);
  const float* am = W.double_quant ? nullptr : W.absmax.p;
  if (use_wide)
    dequant_wide_kernel<<<(unsigned)grid, kThreads, 0, stream>>>(
        reinterpret_cast<uint4*>(out), reinterpret_cast<const uint32_t*>(W.packed.p), am, W.absmax_u8.p, W.absmax2.p,
        W.code2.p, W.offset, n_bytes / 4, lut);
  else
    dequant_fast_kernel<<<(unsigned)grid, kThreads, 0, stream>>>(
        reinterpret_cast<uint4*>(out), reinterpret_cast<const uint4*>(W.packed.p), am, W.absmax_u8.p, W.absmax2.p,
        W.code2.p, W.offset, n_chunks, lut);
  MIMIC_CUDA_LAUNCHED();
  return true;
}

}  // namespace mimic::cuda
