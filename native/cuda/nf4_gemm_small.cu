// nf4_gemm_small — y[S, M] = β·y + α · x[S, K] · dequant(W)[M, K]ᵀ for a few rows (S ≤ 64) on the
// tensor cores, the NF4 weight read ONCE as 4-bit codes and dequantized in registers: the batched
// decode step's products (decode_batch_cuda.cu's GEMM route), which before this wrote every weight
// out as bf16 (dequantize pass, 5.6 GB for the 3B) and read it back in cuBLAS (round 8 profile:
// 4.8 of the 8.6 ms of an S = 32 step were the dequantize kernels).
//
// The dequantized weight is bit for bit nf4_dequantize's (bf16_rn(NF4_CODE[nib] · absmax), absmax =
// code2[u8]·absmax2 + offset by one FMA; first element of a byte = HIGH nibble), and every product is
// bf16 × bf16 accumulated in fp32 by mma.sync.m16n8k16 — the same numbers as dequantize + cuBLAS up
// to the order of the fp32 sums.
//
// Work layout. A warp owns 16 output rows m (the mma's M) and all S columns (n-tiles of 8: the mma's
// N, NT = ceil(S/8)); the grid is (M/64 row blocks of 4 warps) × KSPLIT slices of K, each slice
// writing fp32 partials [KSPLIT, S, M] that a second kernel sums in a fixed order (deterministic,
// no atomics) into y with α, β. K is walked in chunks of 128.
//
// The k permutation (why every load is contiguous). Σ_k is order-free, so the mma's logical k of a
// 16-wide step need not be the actual k, as long as A and B use the same map. In a chunk, lane
// (g = lane/4, q = lane%4) holds the 32 consecutive codes k = 32q .. 32q+31 of rows g and g+8 (one
// 16-byte load each; the quad's 4 lanes read a row's 64 contiguous bytes; one absmax a lane a row);
// at step t (0..7) its A fragment slots (cols 2q, 2q+1 | 8+2q, 9+2q) take actual k = 32q+4t+{0,1} |
// 32q+4t+{2,3}. The B fragment (x, "col" layout: k = 2q+{0,1} | 8+2q+{0,1}, n = g) then needs x[n, 32q+4t
// .. +3] — 4 consecutive values — so one 16-byte shared-memory read serves steps 2t'' and 2t''+1.
// x's chunk [NT·8, 128] sits in shared memory (cp.async, double-buffered, rows ≥ S zero), rows
// padded to 288 bytes and the two 16-byte halves of each 32-byte piece swapped for q ≥ 2: a
// quarter-warp's 8 lanes (n ∈ {2i, 2i+1}, q = 0..3) then hit 8 distinct 16-byte bank groups.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/env.h"
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {

constexpr int kWarps = 4, kThreads = kWarps * 32, kRowsPerBlock = 16 * kWarps, kChunk = 128;
constexpr int kPitch = 288;  // bytes per x row in shared memory (256 + 32: the bank shift between rows)

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n"); }

// Byte offset of x[n, 32q + 8h .. +8] (h = 0..3, one 16-byte piece) in a chunk buffer.
__device__ __forceinline__ int x_off(int n, int q, int h) { return n * kPitch + 64 * q + 16 * (h ^ (q >> 1)); }

// The two bf16x2 A registers of one row for step t from the lane's 16 code bytes `w` (byte j =
// codes 2j (high nibble), 2j+1): actual k = 4t .. 4t+3 of the lane's 32 → (k0,k1), (k2,k3).
__device__ __forceinline__ void a_regs(const uint4& w, int t, float am, const float* lut, uint32_t& lo, uint32_t& hi) {
  const uint32_t word = t < 2 ? w.x : t < 4 ? w.y : t < 6 ? w.z : w.w;
  const uint32_t b = word >> (16 * (t & 1));  // bytes 2t, 2t+1 of the 16 (little-endian)
  const uint32_t b0 = b & 0xffu, b1 = (b >> 8) & 0xffu;
  lo = bf2_bits(lut[b0 >> 4] * am, lut[b0 & 15u] * am);
  hi = bf2_bits(lut[b1 >> 4] * am, lut[b1 & 15u] * am);
}

template <int NT>
__global__ void __launch_bounds__(kThreads)
    nf4_gemm_small_kernel(float* __restrict__ part, const bf16* __restrict__ x, const uint8_t* __restrict__ packed,
                          const float* __restrict__ absmax, const uint8_t* __restrict__ am_u8,
                          const float* __restrict__ absmax2, const float* __restrict__ code2, float offset, int S,
                          int M, int K, int chunks_per_split, NF4Lut lut_in) {
  extern __shared__ __align__(16) unsigned char smem[];  // [2][NT·8 rows][kPitch]
  __shared__ float lut[16];
  __shared__ float s_code2[256];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int i = 0; i < 16; ++i)  // static indices: a dynamic one would copy the parameter to the stack
    if (tid == i) lut[i] = lut_in.v[i];
  if (!absmax)
    for (int i = tid; i < 256; i += kThreads) s_code2[i] = code2[i];
  const int nchunks = K / kChunk;
  const int c_begin = blockIdx.y * chunks_per_split, c_end = min(nchunks, c_begin + chunks_per_split);
  const int m0 = blockIdx.x * kRowsPerBlock + warp * 16;
  const int rows = NT * 8, buf_bytes = rows * kPitch;
  // x chunk c → buffer: rows·16 pieces of 16 bytes, rows ≥ S zero-filled
  auto load_x = [&](int c, int buf) {
    unsigned char* base = smem + buf * buf_bytes;
    for (int i = tid; i < rows * 16; i += kThreads) {
      const int n = i >> 4, piece = i & 15, qq = piece >> 2, h = piece & 3;
      const bool valid = n < S;
      const bf16* src = x + (int64_t)(valid ? n : 0) * K + (int64_t)c * kChunk + 32 * qq + 8 * h;
      cp_async16(base + x_off(n, qq, h), src, valid);
    }
    cp_async_commit();
  };
  // the lane's codes and absmax of rows m0+g, m0+g+8 for chunk c
  const bool row_ok = m0 < M;  // M % 16 == 0: a warp's 16 rows are all in or all out
  const int64_t rowA = (int64_t)(m0 + g) * K, rowB = rowA + 8 * (int64_t)K;

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

  // chunk c's codes and absmax inputs (u8 + absmax2, or plain absmax) are fetched one chunk ahead
  uint4 wa{}, wb{};
  uint32_t ua = 0, ub = 0;
  float a2a = 0.f, a2b = 0.f;
  auto fetch = [&](int c) {
    const int64_t ka = rowA + (int64_t)c * kChunk + 32 * q, kb = rowB + (int64_t)c * kChunk + 32 * q;
    wa = __ldcs(reinterpret_cast<const uint4*>(packed + (ka >> 1)));
    wb = __ldcs(reinterpret_cast<const uint4*>(packed + (kb >> 1)));
    const int64_t ba = ka >> 6, bb = kb >> 6;
    if (absmax) { a2a = __ldg(absmax + ba); a2b = __ldg(absmax + bb); }
    else {
      ua = __ldg(am_u8 + ba); ub = __ldg(am_u8 + bb);
      a2a = __ldg(absmax2 + (ba >> 8)); a2b = __ldg(absmax2 + (bb >> 8));
    }
  };
  if (c_begin < c_end) {
    load_x(c_begin, 0);
    if (row_ok) fetch(c_begin);
  }
  __syncthreads();  // lut, code2 visible
  for (int c = c_begin; c < c_end; ++c) {
    const int buf = (c - c_begin) & 1;
    // this chunk's codes and absmax into registers, then the next chunk's loads in flight
    const uint4 ca = wa, cb = wb;
    const float ama = absmax ? a2a : fmaf(s_code2[ua], a2a, offset);
    const float amb = absmax ? a2b : fmaf(s_code2[ub], a2b, offset);
    if (c + 1 < c_end) {
      load_x(c + 1, buf ^ 1);
      if (row_ok) fetch(c + 1);
      asm volatile("cp.async.wait_group 1;\n");
    } else {
      cp_async_wait_all();
    }
    __syncthreads();  // chunk c's x is in buffer `buf`
    if (row_ok) {
      const unsigned char* xb = smem + buf * buf_bytes;
#pragma unroll
      for (int h = 0; h < 4; ++h) {  // steps 2h, 2h+1 share one 16-byte B read per n-tile
        uint4 bx[NT];
#pragma unroll
        for (int j = 0; j < NT; ++j) bx[j] = *reinterpret_cast<const uint4*>(xb + x_off(8 * j + g, q, h));
#pragma unroll
        for (int s2 = 0; s2 < 2; ++s2) {
          const int t = 2 * h + s2;
          uint32_t a[4];
          a_regs(ca, t, ama, lut, a[0], a[2]);  // row g: cols (2q,2q+1) → k 4t+{0,1}; (8+2q, 9+2q) → 4t+{2,3}
          a_regs(cb, t, amb, lut, a[1], a[3]);  // row g+8
#pragma unroll
          for (int j = 0; j < NT; ++j) mma_bf16(acc[j], a, s2 ? bx[j].z : bx[j].x, s2 ? bx[j].w : bx[j].y);
        }
      }
    }
    __syncthreads();  // buffer `buf` is reloaded two chunks on
  }
  if (!row_ok) return;
  // c0,c1: row g, cols 2q, 2q+1; c2,c3: row g+8 — rows are m, cols are the sequences s
  float* P = part + (int64_t)blockIdx.y * S * M;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int s0 = 8 * j + 2 * q;
    const int mA = m0 + g, mB = m0 + g + 8;
    if (s0 < S) { P[(int64_t)s0 * M + mA] = acc[j][0]; P[(int64_t)s0 * M + mB] = acc[j][2]; }
    if (s0 + 1 < S) { P[(int64_t)(s0 + 1) * M + mA] = acc[j][1]; P[(int64_t)(s0 + 1) * M + mB] = acc[j][3]; }
  }
}

// y[s, m] = α · Σ_ks part[ks, s, m] (ks ascending) + β · y[s, m]
template <class TO>
__global__ void reduce_kernel(TO* __restrict__ y, const float* __restrict__ part, int64_t n, int splits, float alpha,
                              float beta) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float v = 0.f;
  for (int k = 0; k < splits; ++k) v += part[(int64_t)k * n + i];
  v *= alpha;
  if (beta != 0.f) v += beta * to_f(y[i]);
  y[i] = from_f<TO>(v);
}

int g_sms = 0;

// KSPLIT: enough blocks to fill the card about twice, each slice at least 2 chunks.
int splits_for(int M, int K) {
  if (!g_sms) {
    int dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, dev);
    if (g_sms <= 0) g_sms = 100;
  }
  const int mblocks = (M + kRowsPerBlock - 1) / kRowsPerBlock, nchunks = K / kChunk;
  const int want = (2 * g_sms + mblocks - 1) / mblocks;
  return std::max(1, std::min(want, std::max(1, nchunks / 2)));
}

template <int NT>
void launch(float* part, const bf16* x, const NF4Device& W, int S, int splits, int cps) {
  const int smem = 2 * NT * 8 * kPitch;
  static bool attr = false;  // per NT instantiation
  if (!attr && smem > 48 * 1024) {
    MIMIC_CUDA_CHECK(cudaFuncSetAttribute(nf4_gemm_small_kernel<NT>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    attr = true;
  }
  NF4Lut lut;
  std::memcpy(lut.v, mimic::NF4_CODE, sizeof lut.v);
  const dim3 grid((unsigned)((W.M + kRowsPerBlock - 1) / kRowsPerBlock), (unsigned)splits);
  nf4_gemm_small_kernel<NT><<<grid, kThreads, smem, Context::get().stream>>>(
      part, x, W.packed.p, W.double_quant ? nullptr : W.absmax.p, W.absmax_u8.p, W.absmax2.p, W.code2.p, W.offset, S,
      W.M, W.K, cps, lut);
  MIMIC_CUDA_LAUNCHED();
}

}  // namespace

bool nf4_gemm_small_enabled() {
  static const bool on = env_switch_on("MIMIC_NF4_GEMM_SMALL");
  return on;
}

size_t nf4_gemm_small_workspace(int S, int M, int K) {
  if (K % kChunk != 0) return 0;
  return sizeof(float) * (size_t)splits_for(M, K) * (size_t)S * (size_t)M;
}

template <class TO>
bool nf4_gemm_small(TO* y, const bf16* x, const NF4Device& W, int S, float alpha, float beta, float* workspace,
                    size_t workspace_bytes) {
  if (S < 1 || S > kNF4GemmSmallMaxS || W.M % 16 != 0 || W.K % kChunk != 0 || !W.packed.p) return false;
  if (((uintptr_t)x & 15u) || ((uintptr_t)W.packed.p & 15u)) return false;
  if (W.double_quant ? !(W.absmax_u8.p && W.absmax2.p && W.code2.p) : !W.absmax.p) return false;
  const int splits = splits_for(W.M, W.K);
  if (!workspace || workspace_bytes < sizeof(float) * (size_t)splits * S * W.M) return false;
  const int nchunks = W.K / kChunk, cps = (nchunks + splits - 1) / splits;
  const int used = (nchunks + cps - 1) / cps;  // slices that hold a chunk
  if (S <= 8) launch<1>(workspace, x, W, S, used, cps);
  else if (S <= 16) launch<2>(workspace, x, W, S, used, cps);
  else if (S <= 32) launch<4>(workspace, x, W, S, used, cps);
  else launch<8>(workspace, x, W, S, used, cps);
  const int64_t n = (int64_t)S * W.M;
  reduce_kernel<TO><<<blocks_for(n, 256), 256, 0, Context::get().stream>>>(y, workspace, n, used, alpha, beta);
  MIMIC_CUDA_LAUNCHED();
  return true;
}

template bool nf4_gemm_small<bf16>(bf16*, const bf16*, const NF4Device&, int, float, float, float*, size_t);
template bool nf4_gemm_small<float>(float*, const bf16*, const NF4Device&, int, float, float, float*, size_t);

}  // namespace mimic::cuda
