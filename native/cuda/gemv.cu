// gemv — fused small-N products for decode (N = 1..16 rows): the weight is read ONCE, 16 bytes a
// lane, and never written back dequantized. Part of the nf4/matmul twins (their CPU oracles are
// cpu::nf4_matmul_forward and cpu::matmul_forward); nf4_matmul_forward routes N <= 16 here.
// A launch whose jobs are all tile-shaped NF4 (gemv_tc.h) goes on to gemv_tc.cu, the tensor-core
// kernel; this file's kernel keeps the bf16 products (lm_head, LoRA A) and the NF4 shapes that do
// not fit a 16-row tile, and is the NF4 path again under MIMIC_GEMV_TC=0.
//
//   out[n, m] = res[n, m] + α · ( Σ_k x[n, k] · W[m, k]  +  s · Σ_j h[n, j] · B[m, j] ) + β · out[n, m]
//   W: NF4 (bitsandbytes layout, cuda_ops.h) or bf16; x bf16; h fp32 (LoRA x·Aᵀ), B bf16; out bf16 or fp32.
//   NF4: w[e] = NF4_CODE[nibble_e] · absmax_{e/64}, absmax_b = code2[u8_b] · absmax2_{b/256} + offset
//        (double quantization decoded on the fly: two dependent byte/float loads per 64 values).
// Work layout: one warp per output row m; lane ℓ takes the 16-byte chunks ℓ, ℓ+32, … of the row
// (NF4: 32 values a chunk, so one absmax per chunk; bf16: 8 values), so a warp's loads are one
// contiguous 512-byte segment. The 16 NF4 code values sit in shared memory: a nibble lookup is
// one conflict-free LDS (16 words in 16 banks). x is re-read from L1/L2 (it is tiny and shared by
// every warp). Products accumulate in fp32: Σ_i code_i·x_i per chunk, then × absmax.
// Several independent products (q, k, v; gate, up; the LoRA A's) go in one launch as "jobs".
// Shapes that break 16-byte alignment (K % 32 for NF4, K % 8 for bf16, or unaligned pointers)
// take a scalar path in the same kernel: correct, slower.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/env.h"
#include "cuda/bf16_row_dot.cuh"
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/gemv_tc.h"
#include "cuda/pdl.h"

namespace mimic::cuda {
namespace {

constexpr int kWarps = 8, kThreads = kWarps * 32, kGroup = kRowDotGroup;

using Params = GemvParams;

// acc[n] = Σ_k x[n, k]·W[m, k] (+ s·h[n, :]·B[m, :]), reduced over the warp (every lane holds it).
template <int NT>
__device__ __forceinline__ void row_dot(const GemvJob& J, int m, int lane, int N, const float* lut, const float* code2,
                                        float (&acc)[NT]) {
  const int K = J.K;
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n] = 0.f;

  if (J.packed) {
    if (J.fast) {
      const uint4* wrow = reinterpret_cast<const uint4*>(J.packed + (int64_t)m * (K / 2));
      const int nch = K / 32;
      const int64_t e_row = (int64_t)m * K;
      // kGroup chunks a lane: every load of the group is issued before the first is used (the
      // row is only K/32/32 chunks a lane, so latency, not bandwidth, bounds a naive loop)
      for (int c0 = lane; c0 < nch; c0 += 32 * kGroup) {
        uint4 w[kGroup];
        float a2[kGroup];
        uint32_t a8[kGroup];
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          const int c = c0 + 32 * g;
          if (c < nch) {
            w[g] = ldg_stream(wrow + c);
            const int64_t blk = (e_row + 32 * (int64_t)c) >> 6;
            if (J.absmax) { a2[g] = __ldg(J.absmax + blk); a8[g] = 256; }
            else { a8[g] = __ldg(J.am_u8 + blk); a2[g] = __ldg(J.absmax2 + (blk >> 8)); }
          }
        }
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          const int c = c0 + 32 * g;
          if (c < nch) {
            const float am = a8[g] == 256 ? a2[g] : fmaf(code2[a8[g]], a2[g], J.offset);
            const uint32_t ws[4] = {w[g].x, w[g].y, w[g].z, w[g].w};
#pragma unroll
            for (int n = 0; n < NT; ++n) {
              if (n < N) {
                const uint4* xr = reinterpret_cast<const uint4*>(J.x + (int64_t)n * K + 32 * (int64_t)c);
                float s = 0.f;
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                  const uint4 xv = __ldcg(xr + q);
                  const uint32_t xs[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                  for (int t = 0; t < 4; ++t) {
                    const uint32_t byte = (ws[q] >> (8 * t)) & 0xffu;  // the first element: HIGH nibble
                    s = fmaf(lut[byte >> 4], bf_lo(xs[t]), s);
                    s = fmaf(lut[byte & 15u], bf_hi(xs[t]), s);
                  }
                }
                acc[n] = fmaf(am, s, acc[n]);
              }
            }
          }
        }
      }
    } else {
      for (int k = lane; k < K; k += 32) {
        const int64_t e = (int64_t)m * K + k, blk = e >> 6;
        const uint8_t byte = J.packed[e >> 1];
        const float am = J.absmax ? J.absmax[blk] : J.code2[J.am_u8[blk]] * J.absmax2[blk >> 8] + J.offset;
        const float w = lut[(e & 1) ? (byte & 15u) : (byte >> 4)] * am;
#pragma unroll
        for (int n = 0; n < NT; ++n)
          if (n < N) acc[n] = fmaf(w, __bfloat162float(J.x[(int64_t)n * K + k]), acc[n]);
      }
    }
  } else {
    const bf16* wr = J.W + (int64_t)m * K;
    if (J.fast) {
      bf16_row_dot<NT, false>(reinterpret_cast<const uint4*>(wr), K / 8, lane, N, J.x, K, nullptr, acc);
    } else {
      for (int k = lane; k < K; k += 32) {
        const float w = __bfloat162float(wr[k]);
#pragma unroll
        for (int n = 0; n < NT; ++n)
          if (n < N) acc[n] = fmaf(w, __bfloat162float(J.x[(int64_t)n * K + k]), acc[n]);
      }
    }
  }

#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n] = warp_sum(acc[n]);
  if (J.lora_B) {
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      if (n < N) {
        float t = 0.f;
        for (int j = lane; j < J.r; j += 32)
          t = fmaf(__ldcg(J.lora_h + (int64_t)n * J.r + j), __bfloat162float(J.lora_B[(int64_t)m * J.r + j]), t);
        acc[n] = fmaf(J.scale, warp_sum(t), acc[n]);
      }
    }
  }
}

// The lane's 16-byte chunks of row m requested into L2 (prefetch: no register, no wait).
__device__ __forceinline__ void prefetch_row_l2(const GemvJob& J, int m, int lane) {
  if (m >= J.M || !J.fast) return;
  const char* row = J.packed ? reinterpret_cast<const char*>(J.packed) + (int64_t)m * (J.K / 2)
                             : reinterpret_cast<const char*>(J.W) + (int64_t)m * J.K * 2;
  const int bytes = J.packed ? J.K / 2 : J.K * 2;
  for (int off = lane * 16; off < bytes; off += 32 * 16) asm volatile("prefetch.global.L2 [%0];" ::"l"(row + off));
}

// 3 resident blocks an SM (<= 80 registers). Round 12 tried 4 for N = 1 (64 registers, no spill):
// +3 %, and nothing on top of PDL — removed; the NF4 decode products now run in gemv_tc.cu.
template <int NT, bool PDL>
__global__ void __launch_bounds__(kThreads, NT >= 8 ? 1 : 3) gemv_kernel(const __grid_constant__ Params P) {
  __shared__ float lut[16];
  __shared__ float code2[2][256];  // the double-quant codes of this block's job(s) (blocks never span jobs)
  int ji = 0;
#pragma unroll
  for (int i = 1; i < kGemvMaxJobs; ++i)
    if (i < P.nj && (int)blockIdx.x >= P.first_block[i]) ji = i;
  const GemvJob& J = P.j[ji];
  if constexpr (PDL) pdl_trigger();
  // weights only before pdl_wait (pdl.h): the tables, and with PDL the warp's row(s) into L2 while
  // the kernel before still runs
  if (threadIdx.x < 16) lut[threadIdx.x] = P.lut[threadIdx.x];
  if (J.packed && !J.absmax) code2[0][threadIdx.x] = J.code2[threadIdx.x];
  if (P.glu && P.j[1].packed && !P.j[1].absmax) code2[1][threadIdx.x] = P.j[1].code2[threadIdx.x];
  const int m = ((int)blockIdx.x - P.first_block[ji]) * kWarps + (int)(threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if constexpr (PDL) {
    prefetch_row_l2(J, m, lane);
    if (P.glu) prefetch_row_l2(P.j[1], m, lane);
    pdl_wait();
  }
  __syncthreads();
  if (m >= J.M) return;  // no barrier follows
  const int N = P.N;
  float acc[NT];
  row_dot<NT>(J, m, lane, N, lut, code2[0], acc);
  if (P.glu) {  // out = silu(gate)·up, gate = job 0, up = job 1 (as swiglu.cu, without rounding gate/up to bf16)
    float up[NT];
    row_dot<NT>(P.j[1], m, lane, N, lut, code2[1], up);
    if (lane == 0) {
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        if (n < N) {
          const float g = acc[n], sg = 1.f / (1.f + __expf(-g));
          static_cast<bf16*>(J.out)[(int64_t)n * J.M + m] = __float2bfloat16(g * sg * up[n]);
        }
      }
    }
    return;
  }
  if (lane == 0) {
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      if (n < N) gemv_store(J, n, m, acc[n]);
    }
  }
}

// The lm_head of a decode step (one bf16 job, x [N, K] small): one wave of blocks, each copying x
// into shared memory once (cp.async: L2, pdl.h) and looping over row groups (warp w: rows
// (g·kWarps + w) for g = blockIdx.x, + gridDim.x, …). With one warp a row, gemv_kernel's warps each
// read the 6 KB x from L2 for their one row: ~16k rows moved as many bytes through L2 as the 788 MB
// weight itself once round 14's rule took x off the read-only path. Same products, same order as
// gemv_kernel's bf16 path: the same bits.
template <int NT, bool PDL>
__global__ void __launch_bounds__(kThreads, 3) gemv_rows_kernel(const __grid_constant__ Params P) {
  extern __shared__ __align__(16) uint4 xs[];  // x [N, K]
  const GemvJob& J = P.j[0];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, K = J.K, nch = K / 8, N = P.N;
  if constexpr (PDL) {
    pdl_trigger();
    const int m = blockIdx.x * kWarps + warp;
    if (m < J.M)  // the first row into L2 while the kernel before finishes
      for (int c = lane; c < nch; c += 32) asm volatile("prefetch.global.L2 [%0];" ::"l"(J.W + (int64_t)m * K + 8 * c));
    pdl_wait();
  }
  for (int i = threadIdx.x; i < N * nch; i += kThreads) cp_async16(xs + i, J.x + 8 * (int64_t)i);
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
  __syncthreads();
  for (int m = blockIdx.x * kWarps + warp; m < J.M; m += gridDim.x * kWarps) {
    const uint4* wrow = reinterpret_cast<const uint4*>(J.W + (int64_t)m * K);
    float acc[NT];
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[n] = 0.f;
    bf16_row_dot<NT, true>(wrow, nch, lane, N, J.x, K, xs, acc);
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[n] = warp_sum(acc[n]);
    if (lane == 0) {
#pragma unroll
      for (int n = 0; n < NT; ++n)
        if (n < N) gemv_store(J, n, m, acc[n]);
    }
  }
}

bool aligned16(const void* p) { return ((uintptr_t)p & 15u) == 0; }

template <int NT>
void launch(const Params& P, int blocks) {
  launch_pdl(gemv_kernel<NT, false>, gemv_kernel<NT, true>, dim3(blocks), dim3(kThreads), 0, Context::get().stream, P);
  MIMIC_CUDA_LAUNCHED();
}

constexpr int kXsMaxBytes = 32 * 1024;  // gemv_rows_kernel's x at most (N·K·2 bytes; < 48 KB: no opt-in)

// One bf16 job without LoRA, x small: gemv_rows_kernel, one wave; false (nothing launched) otherwise,
// or when MIMIC_GEMV_ROWS=0 (read at every launch, i.e. every graph recording: the A/B leg).
template <int NT>
bool launch_rows(const Params& P) {
  const GemvJob& J = P.j[0];
  const int xs_bytes = P.N * J.K * 2;
  if (P.nj != 1 || P.glu || !J.W || !J.fast || J.lora_B || xs_bytes > kXsMaxBytes || !env_switch_on("MIMIC_GEMV_ROWS"))
    return false;
  static const int slots = [] {
    int n = 0;
    MIMIC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gemv_rows_kernel<NT, true>, kThreads, kXsMaxBytes));
    return std::max(1, n) * Context::get().sm_count;
  }();
  const int groups = (J.M + kWarps - 1) / kWarps;
  launch_pdl(gemv_rows_kernel<NT, false>, gemv_rows_kernel<NT, true>, dim3(std::min(groups, slots)), dim3(kThreads),
             (size_t)xs_bytes, Context::get().stream, P);
  MIMIC_CUDA_LAUNCHED();
  return true;
}

}  // namespace

void gemv_launch(const GemvJob* jobs, int n_jobs, int64_t N, bool glu);
void gemv(const GemvJob* jobs, int n_jobs, int64_t N) { gemv_launch(jobs, n_jobs, N, false); }

bool gemv_enabled() { return env_switch_on("MIMIC_NF4_GEMV"); }

void gemv_launch(const GemvJob* jobs, int n_jobs, int64_t N, bool glu) {
  MIMIC_CHECK(n_jobs >= 1 && n_jobs <= kGemvMaxJobs, "EINVAL", "gemv: 1..", kGemvMaxJobs, " jobs, got ", n_jobs);
  MIMIC_CHECK(N >= 1 && N <= kGemvMaxN, "EINVAL", "gemv: 1..", kGemvMaxN, " rows, got ", N);
  Params P{};
  std::memcpy(P.lut, mimic::NF4_CODE, sizeof P.lut);
  int blocks = 0;
  for (int i = 0; i < n_jobs; ++i) {
    GemvJob j = jobs[i];
    MIMIC_CHECK(j.M > 0 && j.K > 0 && (j.packed || j.W) && j.x && j.out, "EINVAL", "gemv: job ", i, " is incomplete");
    MIMIC_CHECK(!j.lora_B || (j.lora_h && j.r > 0), "EINVAL", "gemv: job ", i, " has LoRA B without h or rank");
    MIMIC_CHECK(!j.lora_A, "EINVAL", "gemv: job ", i, " has LoRA A (only gemv_tc's A blocks compute h themselves: gemv_tc_lora_in, gemv_tc with a folded norm)");
    if (j.packed)
      j.fast = j.K % 32 == 0 && aligned16(j.packed) && aligned16(j.x);
    else
      j.fast = j.K % 8 == 0 && aligned16(j.W) && aligned16(j.x);
    P.j[i] = j;
    P.first_block[i] = blocks;
    if (!glu || i == 0) blocks += (j.M + kWarps - 1) / kWarps;
  }
  P.first_block[n_jobs] = blocks;
  if (gemv_tc(P.j, n_jobs, N, glu)) return;  // all NF4, tile-shaped: the tensor-core path
  P.nj = glu ? 1 : n_jobs;  // glu: the blocks walk job 0's rows and compute job 1's alongside
  P.glu = glu ? 1 : 0;
  P.N = (int)N;
  if (N == 1 && launch_rows<1>(P)) return;
  if (N == 1) launch<1>(P, blocks);
  else if (N == 2) launch<2>(P, blocks);
  else if (N <= 4) launch<4>(P, blocks);
  else if (N <= 8) launch<8>(P, blocks);
  else launch<16>(P, blocks);
}

void gemv_glu(const GemvJob& gate, const GemvJob& up, int64_t N) {
  MIMIC_CHECK(gate.M == up.M && gate.K == up.K && gate.x == up.x, "EINVAL", "gemv_glu: gate and up differ in shape");
  GemvJob js[2] = {gate, up};
  gemv_launch(js, 2, N, true);
}

bool gemv_job_rows(GemvJob& out, const GemvJob& J, int m0, int rows) {
  const int64_t e0 = (int64_t)m0 * J.K;  // the slice's first weight
  if (m0 < 0 || rows <= 0 || m0 + rows > J.M || e0 % 64) return false;
  GemvJob s = J;
  s.M = rows;
  if (J.packed) {
    const int64_t b0 = e0 / 64;  // its first scale block
    if (!J.absmax && b0 % 256) return false;
    s.packed = J.packed + e0 / 2;
    if (J.absmax) s.absmax = J.absmax + b0;
    else { s.am_u8 = J.am_u8 + b0; s.absmax2 = J.absmax2 + b0 / 256; }
  } else {
    s.W = J.W + e0;
  }
  s.out = J.out_f32 ? static_cast<void*>(static_cast<float*>(J.out) + m0) : static_cast<void*>(static_cast<bf16*>(J.out) + m0);
  if (J.res) s.res = J.res + m0;
  if (J.lora_B) s.lora_B = J.lora_B + (int64_t)m0 * J.r;
  out = s;
  return true;
}

GemvJob gemv_job_nf4(const NF4Device& W) {
  GemvJob j;
  j.packed = W.packed.p;
  j.absmax = W.double_quant ? nullptr : W.absmax.p;
  j.am_u8 = W.absmax_u8.p;
  j.absmax2 = W.absmax2.p;
  j.code2 = W.code2.p;
  j.offset = W.offset;
  j.M = W.M;
  j.K = W.K;
  return j;
}

}  // namespace mimic::cuda
