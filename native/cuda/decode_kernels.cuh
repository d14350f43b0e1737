// decode_kernels — the per-row kernels of a decode step, shared by decode_step.cu (one sequence,
// its graph per KV cache) and decode_batch_cuda.cu (S sequences in one step). Both paths launch
// the SAME kernels, so a sequence's arithmetic does not depend on which path (or which batch) it
// runs in: stepping sessions together gives bit for bit the tokens of stepping them alone.
//
// Row s of a launch (blockIdx.y, or blockIdx.x for the norm) owns its own token: its position is
// pos[s] and its cache rows are ktab[s]/vtab[s] (batched: a device table filled before each step,
// so a captured graph replays for any set of sessions) or k1/v1 when the table is null (one sequence).
//
//   rmsnorm_rows:  out[s] = bf16(w ⊙ x[s] · rsqrt(mean(x[s]²) + eps))        x fp32 [S, C]
//   rope_append:   q[s] rotated in place; k[s] rotated and v[s] copied into the cache at pos[s]
//   decode_attn:   out[s, h] = softmax(q[s, h]·K[0..pos[s]]ᵀ/√D) · V[0..pos[s]]  (online softmax over
//                  chunks of 256 keys: no score scratch sized by the cache, so any length fits)
#pragma once
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "core/env.h"
#include "cuda/bf16_row_dot.cuh"
#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/gemv_tc.h"  // gemv_tc_lora_in
#include "cuda/llama_cuda.h"
#include "cuda/pdl.h"
#include "cuda/row_maths.cuh"

namespace mimic::cuda {
namespace {

constexpr int kAttnThreads = 256;
constexpr int kVPre = 8;  // decode_attn: value rows a thread group requests with the key rows (128 keys at D = 128)
constexpr int kNormThreads = kRmsVirtual;  // one virtual thread a thread (row_maths.cuh): C <= 8192

// q [S, Hq, D], k/v [S, Hkv, D] of the new tokens (bf16). Block (b, s): b < Hq: query head b; else
// KV head b − Hq. Each thread takes dimension pairs (i, i + D/2) with the angle as rope.cu (fp32,
// double sincos).
template <bool PDL>
__global__ void rope_append_kernel(bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                                   bf16* const* __restrict__ ktab, bf16* const* __restrict__ vtab, bf16* k1, bf16* v1,
                                   const int32_t* __restrict__ pos, const float* __restrict__ inv_freq, int Hq, int Hkv,
                                   int D) {
  if constexpr (PDL) { pdl_trigger(); pdl_wait(); }  // q/k/v and pos come from the kernels before (pdl.h)
  const int half = D / 2, b = blockIdx.x, s = blockIdx.y;
  const int p = pos[s];
  q += (int64_t)s * Hq * D;
  k += (int64_t)s * Hkv * D;
  v += (int64_t)s * Hkv * D;
  bf16* kc = ktab ? ktab[s] : k1;
  bf16* vc = vtab ? vtab[s] : v1;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float c, sn;
    rope_cs(p, inv_freq[i], c, sn);
    if (b < Hq) {
      bf16* r = q + (int64_t)b * D;
      rope_rotate(__bfloat162float(r[i]), __bfloat162float(r[i + half]), c, sn, r[i], r[i + half]);
    } else {
      const int h = b - Hq;
      const bf16* r = k + (int64_t)h * D;
      bf16* o = kc + ((int64_t)p * Hkv + h) * D;
      rope_rotate(__bfloat162float(__ldcg(r + i)), __bfloat162float(__ldcg(r + i + half)), c, sn, o[i], o[i + half]);
      bf16* ov = vc + ((int64_t)p * Hkv + h) * D;
      ov[i] = __ldcg(v + (int64_t)h * D + i);  // (k, v: the product ahead's output, through L2)
      ov[i + half] = __ldcg(v + (int64_t)h * D + i + half);
    }
  }
}
void rope_append(bf16* q, const bf16* k, const bf16* v, bf16* const* ktab, bf16* const* vtab, bf16* k1, bf16* v1,
                 const int32_t* pos, const float* inv_freq, int S, int Hq, int Hkv, int D) {
  launch_pdl(rope_append_kernel<false>, rope_append_kernel<true>, dim3(Hq + Hkv, S), dim3(std::min(std::max(D / 2, 32), 128)), 0, Context::get().stream,
             q, k, v, ktab, vtab, k1, v1, pos, inv_freq, Hq, Hkv, D);
  MIMIC_CUDA_LAUNCHED();
}

// One row a block of RMSNorm (as rmsnorm.cu: fp32 maths, bf16 out) with every load issued up front
// (the generic kernel's strided loop costs a memory latency per iteration, which dominates at N = 1);
// the sum's order is row_maths.cuh's, which gemv_tc's folded norm shares bit for bit.
template <bool PDL, int T = kNormThreads>
__global__ void __launch_bounds__(T) rmsnorm_rows_kernel(bf16* __restrict__ out, const float* __restrict__ x,
                                                         const float* __restrict__ w, int C, float eps) {
  __shared__ float sh[32];
  x += (int64_t)blockIdx.x * C;
  out += (int64_t)blockIdx.x * C;
  RmsRow<T> row, wr;
  if constexpr (PDL) pdl_trigger();
  wr.load(w, C);  // the norm weight is no kernel's output: loaded before the wait
  if constexpr (PDL) pdl_wait();
  row.load(x, C);
  const float r = row.rms_rsqrt(C, eps, sh);
#pragma unroll
  for (int k = 0; k < RmsRow<T>::kNV; ++k)
#pragma unroll
    for (int i = 0; i < kRmsPer; ++i)
      if (const int c = row.col(k, i); c < C) out[c] = norm_out(wr.v[k][i], row.v[k][i], r);
}
// (Round 17: blocks of 256 threads, 4 virtual threads each — the same sums — 0.5-0.7 % slower.)
void rmsnorm_rows(bf16* out, const float* x, const float* w, int N, int C, float eps) {
  if (C > kRmsVirtual * kRmsPer) { rmsnorm_forward(out, nullptr, x, w, N, C, eps); return; }
  launch_pdl(rmsnorm_rows_kernel<false>, rmsnorm_rows_kernel<true>, dim3(N), dim3(kNormThreads), 0, Context::get().stream, out, x, w, C, eps);
  MIMIC_CUDA_LAUNCHED();
}

// The LoRA A products of a decode step, h_i[s] = A_i · x[s] (fp32 [S, r_i]) for up to 3 jobs of one
// input, with their weights staged BEFORE the PDL wait: block (b, s) copies A rows 8b..8b+7 of the
// jobs' rows listed end to end into shared memory (cp.async; lane ℓ copies exactly the 16-byte
// chunks it will read, so no barrier is needed for them) while the kernel ahead still runs; after the
// wait only x remains to fetch. The product is gemv.cu's bf16 path (bf16_row_dot from shared memory:
// h the same bits as the gemv launch it replaces).
//   NORM: x is the fp32 residual row and the block first normalizes it exactly as rmsnorm_rows_kernel
//   (all kNormThreads threads, the same sums: xn the same bits), block 0 writing xn out — the norm and
//   the A products of q/k/v (or gate/up) in one launch, a launch boundary (~2 µs) less twice a layer.
//   Otherwise x is bf16 (the attention's output for o, silu(gate)·up for down), copied through L2.
// Round 18 (H100, LoRA r = 16 on all seven): a layer's four A products as separate launches cost
// ~20 µs of a ~56 µs layer; NOTES.md.
constexpr int kLoraARows = 8;  // A rows a block (one warp each)
struct LoraAJobs {
  const bf16* A[3] = {};  // [r_i, K] bf16, 16-byte aligned
  float* h[3] = {};       // [S, r_i] fp32
  int r[3] = {};
  int n = 0, rows = 0;    // jobs, Σ r_i
};
template <bool NORM>
constexpr int lora_a_threads() { return NORM ? kNormThreads : kLoraARows * 32; }
template <bool NORM, bool PDL>
__global__ void __launch_bounds__(lora_a_threads<NORM>()) lora_a_kernel(bf16* __restrict__ xn, const void* __restrict__ xin,
                                                                        const float* __restrict__ w, int K, float eps,
                                                                        const __grid_constant__ LoraAJobs J) {
  __shared__ float sh[32];
  extern __shared__ __align__(16) uint4 sm4[];  // x [K] bf16 | A rows [kLoraARows][K] bf16
  const int s = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nch = K / 8;
  uint4* xs4 = sm4;
  uint4* arow = sm4 + nch + (int64_t)warp * nch;
  int ji = 0, ri = (int)blockIdx.x * kLoraARows + warp;  // → job ji, its row ri
  while (ji < J.n && ri >= J.r[ji]) ri -= J.r[ji++];
  const bool has_row = warp < kLoraARows && ji < J.n;
  if constexpr (PDL) pdl_trigger();
  if (has_row) stage_row_async(arow, J.A[ji] + (int64_t)ri * K, nch, lane);
  asm volatile("cp.async.commit_group;\n");
  if constexpr (NORM) {
    RmsRow<kNormThreads> row, wr;
    wr.load(w, K);  // the norm weight is no kernel's output: before the wait
    if constexpr (PDL) pdl_wait();
    row.load(static_cast<const float*>(xin) + (int64_t)s * K, K);
    const float r = row.rms_rsqrt(K, eps, sh);
    bf16* xs = reinterpret_cast<bf16*>(xs4);
#pragma unroll
    for (int k = 0; k < RmsRow<kNormThreads>::kNV; ++k)
#pragma unroll
      for (int i = 0; i < kRmsPer; ++i)
        if (const int c = row.col(k, i); c < K) {
          const bf16 v = norm_out(wr.v[k][i], row.v[k][i], r);
          xs[c] = v;
          if (blockIdx.x == 0) xn[(int64_t)s * K + c] = v;
        }
  } else {
    if constexpr (PDL) pdl_wait();
    stage_x_async(xs4, static_cast<const bf16*>(xin) + (int64_t)s * K, nch, threadIdx.x, blockDim.x);
    asm volatile("cp.async.commit_group;\n");
  }
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  __syncthreads();
  if (!has_row) return;
  const float h = staged_row_dot(arow, xs4, nch, lane);
  if (lane == 0) J.h[ji][(int64_t)s * J.r[ji] + ri] = h;
}
// false (nothing launched) where the jobs do not allow it: K % 8, unaligned A or x, the norm's row too long
template <bool NORM>
bool lora_a(bf16* xn, const void* x, const float* w, const LoraAJobs& J, int64_t S, int K, float eps) {
  if (!J.n || K % 8 || S > 65535 || ((uintptr_t)x & 15) || (NORM && K > kRmsVirtual * kRmsPer)) return false;
  for (int i = 0; i < J.n; ++i)
    if ((uintptr_t)J.A[i] & 15) return false;
  constexpr int kMaxSmem = 200 * 1024;
  const size_t smem = (size_t)(1 + kLoraARows) * K * 2;
  if (smem > (size_t)kMaxSmem) return false;
  static bool raised = false;  // opt in to > 48 KB (K = 8192: 144 KB)
  if (!raised) {
    MIMIC_CUDA_CHECK(cudaFuncSetAttribute(lora_a_kernel<NORM, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem));
    MIMIC_CUDA_CHECK(cudaFuncSetAttribute(lora_a_kernel<NORM, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem));
    raised = true;
  }
  const dim3 grid((J.rows + kLoraARows - 1) / kLoraARows, (unsigned)S);
  launch_pdl(lora_a_kernel<NORM, false>, lora_a_kernel<NORM, true>, grid, dim3(lora_a_threads<NORM>()), smem,
             Context::get().stream, xn, x, w, K, eps, J);
  MIMIC_CUDA_LAUNCHED();
  return true;
}

template <class Bar>
__device__ float attn_block_reduce(float v, float* sh, bool is_max, Bar bar) {
  for (int o = 16; o > 0; o >>= 1) {
    const float t = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, t) : v + t;
  }
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  bar();
  if (lane == 0) sh[w] = v;
  bar();
  float r = sh[0];
  for (int i = 1; i < kAttnThreads / 32; ++i) r = is_max ? fmaxf(r, sh[i]) : r + sh[i];
  return r;
}

// One query head h (KV head hk) of one row against keys [0, len) of its cache rows kc/vc: the body of
// decode_attn_kernel, run by kAttnThreads threads (tid) that `bar` synchronizes (BlockBar, or in
// decode_persist.cu a named barrier of a bigger block's first 8 warps). S: the scratch
// (vsh only with vpre).
struct AttnSmem {
  float* qs;    // [256]
  float* red;   // [32]
  float* sc;    // [kAttnThreads]
  float* part;  // [kAttnThreads * 8]
  uint4 (*vsh)[kAttnThreads];  // [kVPre][kAttnThreads]
};
template <int DT, class Bar>
__device__ __forceinline__ void attn_head(bf16* __restrict__ out, const bf16* __restrict__ q, const bf16* kc, const bf16* vc,
                                          int len, int h, int hk, int Hkv, int Drt, bool vpre, const AttnSmem& S, int tid,
                                          Bar bar) {
  const int D = DT ? DT : Drt;
  float* qs = S.qs;
  float* red = S.red;
  float* sc = S.sc;
  float* part = S.part;
  uint4 (*vsh)[kAttnThreads] = S.vsh;
  const float sm_scale = rsqrtf((float)D);
  // q and the cache rows through L2 (__ldcg): under PDL they are the output of the kernels ahead
  for (int d = tid; d < D; d += kAttnThreads) qs[d] = __bfloat162float(__ldcg(q + (int64_t)h * D + d)) * sm_scale;
  bar();
  const int G = D / 8, groups = kAttnThreads / G, g = tid / G, d0 = (tid % G) * 8;
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  float m = -INFINITY, l = 0.f;
  for (int j0 = 0; j0 < len; j0 += kAttnThreads) {
    const int j = j0 + tid, n = min(kAttnThreads, len - j0);
    // the thread's 16 bytes of the group's first kVPre value rows of the chunk, copied into shared
    // memory (cp.async: L2, no register) while the key rows load — they do not depend on the scores:
    // one L2 round trip for both instead of one after the other (vpre). Each thread reads back only
    // its own copies: no barrier.
    if (vpre && g < groups) {
#pragma unroll
      for (int i = 0; i < kVPre; ++i) {
        const int jj = g + i * groups;
        cp_async16(&vsh[i][tid], vc + ((int64_t)(j0 + min(jj, n - 1)) * Hkv + hk) * D + d0, jj < n);
      }
      asm volatile("cp.async.commit_group;\n" ::: "memory");
    }
    float sj = -INFINITY;
    if (j < len) {
      const uint4* kr = reinterpret_cast<const uint4*>(kc + ((int64_t)j * Hkv + hk) * D);
      float a = 0.f;
      auto dot8 = [&](int c) {
        const uint4 kv = __ldcg(kr + c);
        const uint32_t u[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          a = fmaf(qs[c * 8 + 2 * t], __uint_as_float(u[t] << 16), a);
          a = fmaf(qs[c * 8 + 2 * t + 1], __uint_as_float(u[t] & 0xffff0000u), a);
        }
      };
      if constexpr (DT > 0) {
#pragma unroll
        for (int c = 0; c < DT / 8; ++c) dot8(c);  // every load of the key row in flight at once
      } else {
        for (int c = 0; c < D / 8; ++c) dot8(c);
      }
      sj = a;
    }
    const float mn = fmaxf(m, attn_block_reduce(sj, red, true, bar));
    const float corr = __expf(m - mn);  // first chunk: exp(−inf) = 0
    const float p = j < len ? __expf(sj - mn) : 0.f;
    sc[tid] = p;
    l = l * corr + attn_block_reduce(p, red, false, bar);  // its barriers also publish sc[] to the block
    m = mn;
    if (g < groups) {
#pragma unroll
      for (int t = 0; t < 8; ++t) acc[t] *= corr;
      int jj = g;
      if (vpre) {  // the same order of products as the loop below: bit for bit either way
        asm volatile("cp.async.wait_group 0;\n" ::: "memory");
#pragma unroll
        for (int i = 0; i < kVPre; ++i, jj += groups) {
          if (jj < n) {
            const float pj = sc[jj];
            const uint4 vv = vsh[i][tid];
            const uint32_t u[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
            for (int t = 0; t < 4; ++t) {
              acc[2 * t] = fmaf(pj, __uint_as_float(u[t] << 16), acc[2 * t]);
              acc[2 * t + 1] = fmaf(pj, __uint_as_float(u[t] & 0xffff0000u), acc[2 * t + 1]);
            }
          }
        }
      }
#pragma unroll 4
      for (; jj < n; jj += groups) {
        const float pj = sc[jj];
        const uint4 vv = __ldcg(reinterpret_cast<const uint4*>(vc + ((int64_t)(j0 + jj) * Hkv + hk) * D + d0));
        const uint32_t u[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          acc[2 * t] = fmaf(pj, __uint_as_float(u[t] << 16), acc[2 * t]);
          acc[2 * t + 1] = fmaf(pj, __uint_as_float(u[t] & 0xffff0000u), acc[2 * t + 1]);
        }
      }
    }
    bar();  // sc[] is rewritten by the next chunk
  }
  if (g < groups) {
#pragma unroll
    for (int t = 0; t < 8; ++t) part[g * D + d0 + t] = acc[t];
  }
  bar();
  const float inv = 1.f / l;
  for (int d = tid; d < D; d += kAttnThreads) {
    float a = 0.f;
    for (int i = 0; i < groups; ++i) a += part[i * D + d];
    out[(int64_t)h * D + d] = __float2bfloat16(a * inv);
  }
}

// KV head hk's cache rows [0, n) of k and v ([rows][Hkv][D] bf16) asked of L2, 128-byte lines, by
// threads tid, tid + nthreads, … (no register, no wait): the decode attention's prefetch before its
// PDL wait — those rows were written by earlier steps — here and in decode_persist.cu.
__device__ __forceinline__ void prefetch_kv_rows(const bf16* k, const bf16* v, int hk, int64_t n, int Hkv, int D, int tid,
                                                 int nthreads) {
  const char* kb = reinterpret_cast<const char*>(k + (int64_t)hk * D);
  const char* vb = reinterpret_cast<const char*>(v + (int64_t)hk * D);
  const int64_t pitch = (int64_t)Hkv * D * 2, lines = (2 * D + 127) / 128;
  for (int64_t i = tid; i < n * lines; i += nthreads) {
    const int64_t j = i / lines, o = (i - j * lines) * 128;
    prefetch_l2(kb + j * pitch + o);
    prefetch_l2(vb + j * pitch + o);
  }
}

// Block (h, s): the new token of row s, query head h, against keys [0, pos[s]] of its cache.
// Keys go 256 at a time (one thread a key, 16-byte loads of the key row, fp32 dot): the chunk's
// max updates the running max m, the running sum l and the accumulators are rescaled by
// exp(m_old − m_new), then Σ p_j v_j with D/8 threads a key (8 dims each), 256/(D/8) keys at a time;
// the groups' partial sums are reduced in shared memory at the end. D % 8 == 0, D <= 256.
template <int DT, bool PDL>
__global__ void __launch_bounds__(kAttnThreads) decode_attn_kernel(bf16* __restrict__ out, const bf16* __restrict__ q,
                                                                   const bf16* const* __restrict__ ktab,
                                                                   const bf16* const* __restrict__ vtab,
                                                                   const bf16* k1, const bf16* v1,
                                                                   const int32_t* __restrict__ pos, int Hq, int Hkv,
                                                                   int Drt, bool prefetch, bool vpre) {
  const int D = DT ? DT : Drt;
  if constexpr (PDL) {
    pdl_trigger();
    // The cache rows before this token's were written by earlier steps (and pos by the copy before
    // the graph), so while the q/k/v product ahead still runs, the group's first query head asks L2
    // for its KV head's old rows: after the wait the scores and the values read L2, not DRAM.
    const int group = Hq / Hkv;
    if (prefetch && blockIdx.x % group == 0)
      prefetch_kv_rows(ktab ? ktab[blockIdx.y] : k1, vtab ? vtab[blockIdx.y] : v1, blockIdx.x / group, pos[blockIdx.y], Hkv, D,
                       threadIdx.x, kAttnThreads);
    pdl_wait();
  }
  __shared__ float qs[256];
  __shared__ float red[32];
  __shared__ float sc[kAttnThreads];
  __shared__ float part[kAttnThreads * 8];
  __shared__ uint4 vsh[kVPre][kAttnThreads];  // vpre: each thread's value pieces of the chunk
  const int h = blockIdx.x, s = blockIdx.y;
  attn_head<DT>(out + (int64_t)s * Hq * D, q + (int64_t)s * Hq * D, ktab ? ktab[s] : k1, vtab ? vtab[s] : v1, pos[s] + 1, h,
                h / (Hq / Hkv), Hkv, D, vpre, AttnSmem{qs, red, sc, part, vsh}, threadIdx.x, BlockBar{});
}

// MIMIC_ATTN_PREFETCH=0: no L2 prefetch of the old cache rows before the PDL wait; MIMIC_ATTN_VPRE=0:
// value rows loaded after the scores (the A/B legs). Read at each launch (recording): one process may
// alternate A/B legs.
bool attn_prefetch_enabled() { return env_switch_on("MIMIC_ATTN_PREFETCH"); }
bool attn_vpre_enabled() { return env_switch_on("MIMIC_ATTN_VPRE"); }
void decode_attn(bf16* out, const bf16* q, const bf16* const* ktab, const bf16* const* vtab, const bf16* k1,
                 const bf16* v1, const int32_t* pos, int S, int Hq, int Hkv, int D) {
  const dim3 grid(Hq, S);
  const bool pf = attn_prefetch_enabled(), vp = attn_vpre_enabled();
  cudaStream_t st = Context::get().stream;
  if (D == 128)
    launch_pdl(decode_attn_kernel<128, false>, decode_attn_kernel<128, true>, grid, dim3(kAttnThreads), 0, st, out, q,
               ktab, vtab, k1, v1, pos, Hq, Hkv, D, pf, vp);
  else
    launch_pdl(decode_attn_kernel<0, false>, decode_attn_kernel<0, true>, grid, dim3(kAttnThreads), 0, st, out, q, ktab,
               vtab, k1, v1, pos, Hq, Hkv, D, pf, vp);
  MIMIC_CUDA_LAUNCHED();
}

// The weight fields of a projection's gemv job.
GemvJob base_job(const DLinear& L) {
  GemvJob j;
  if (L.is_nf4) j = gemv_job_nf4(L.nf4);
  else { j.W = L.W.p; j.M = L.M; j.K = L.K; }
  return j;
}

// gemv over any number of rows: blocks of kGemvMaxN rows, each a launch that reads the weights
// once (per-row arithmetic is the same whatever the block, so results do not depend on N).
inline void gemv_rows(const GemvJob* jobs, int n_jobs, int64_t N, bool glu = false) {
  for (int64_t r0 = 0; r0 < N; r0 += kGemvMaxN) {
    const int64_t nr = std::min<int64_t>(kGemvMaxN, N - r0);
    GemvJob js[kGemvMaxJobs];
    for (int i = 0; i < n_jobs; ++i) {
      GemvJob j = jobs[i];
      j.x += r0 * j.K;
      j.out = static_cast<char*>(j.out) + r0 * j.M * (j.out_f32 ? 4 : 2);
      if (j.res) j.res += r0 * j.M;
      if (j.lora_h) j.lora_h += r0 * j.r;
      js[i] = j;
    }
    if (glu) gemv_glu(js[0], js[1], nr);
    else gemv(js, n_jobs, nr);
  }
}

// The LoRA halves of the decode gemvs, for one layout of the fp32 h buffers: projection i's
// h = x·A_iᵀ [N, r] sits at lh + i·stride. a(): the A products of `which` in one launch over N rows;
// with_b(): a projection's job with its B product in the epilogue; product(): o or down with both.
// Used by the per-cache graph (decode_step.cu, N = 1) and the batched step (decode_batch_cuda.cu), so
// both run the same jobs. With lil (lh sized lora_h_floats(L, rows, R)), a projection whose A product
// runs inside its own launch (gemv_tc.h: gemv_tc_lora_in for o and down; q/k/v and gate/up with
// their norm folded in) keeps its h at its layer's own region lh + (7 + 7l + i)·stride, set to
// kLoraHPending by begin_step() — the products poll it.
inline size_t lora_h_floats(int L, int64_t rows, int R) { return (size_t)(7 + 7 * L) * rows * R; }
// The A products inside the products' launches unless MIMIC_DECODE_LORA_IN=0 (round 19, H100: the
// LoRA r = 16 step 2.016 → 1.874 ms for o and down alone, the same bits). Read at each recording.
inline bool lora_in_wanted() { return env_switch_on("MIMIC_DECODE_LORA_IN"); }
struct LoraGemv {
  const DeviceModel& d;
  float* lh;
  size_t stride;
  bool lil = false;
  // the step's first operation: layer-own h regions pending (gemv_tc_lora_in's readers poll them)
  void begin_step() const {
    if (lil) MIMIC_CUDA_CHECK(cudaMemsetAsync(lh + 7 * stride, 0xff, sizeof(float) * 7 * d.cfg.num_layers * stride, Context::get().stream));
  }
  float* lil_h(int l, int i) const { return lh + (size_t)(7 + 7 * l + i) * stride; }
  // js[k] (the job of which[k]) with its A product inside the launch: lora_A and the layer's own h
  // region set where projection which[k] carries an adapter (nothing without lil)
  void in_launch(const DLayer& Ly, int l, std::initializer_list<int> which, GemvJob* js) const {
    if (!lil) return;
    int k = 0;
    for (int i : which) {
      const DLinear& P = Ly.proj[i];
      if (on(P)) { js[k].lora_A = d.lb.p + P.offA; js[k].lora_h = lil_h(l, i); }
      ++k;
    }
  }
  // Projection i (o = 3 or down = 6) of layer l: j (weights, x, out, res set) with its LoRA — the A
  // product inside the product's launch (gemv_tc_lora_in: one launch, ~4 µs a launch less on the
  // 3B's step) where it can, else an A launch and the product's. The same bits either way.
  void product(const DLayer& Ly, int l, int i, GemvJob j, int64_t N) const {
    const DLinear& P = Ly.proj[i];
    if (on(P) && lil) {
      GemvJob k = with_b(j, P, i);
      k.lora_h = lil_h(l, i);
      k.lora_A = d.lb.p + P.offA;
      if (gemv_tc_lora_in(k, N)) return;
    }
    a(Ly, {i}, j.x, N);
    j = with_b(j, P, i);
    gemv_rows(&j, 1, N);
  }
  static bool on(const DLinear& P) { return P.src && P.r > 0; }
  // The A products of `which` (h_i = xin·A_iᵀ): lora_a_kernel (weights staged before the wait) unless
  // MIMIC_DECODE_LORA_A=0 (read at each recording: the A/B leg) or the shapes do not allow it, then one
  // gemv launch — the same bits either way.
  LoraAJobs jobs(const DLayer& Ly, std::initializer_list<int> which) const {
    LoraAJobs J;
    for (int i : which) {
      const DLinear& P = Ly.proj[i];
      if (!on(P)) continue;
      J.A[J.n] = d.lb.p + P.offA; J.h[J.n] = lh + (size_t)i * stride; J.r[J.n] = P.r;
      J.rows += P.r;
      ++J.n;
    }
    return J;
  }
  static bool fused() { return env_switch_on("MIMIC_DECODE_LORA_A"); }
  void a(const DLayer& Ly, std::initializer_list<int> which, const bf16* xin, int64_t N) const {
    const LoraAJobs J = jobs(Ly, which);
    if (!J.n) return;
    const int K = Ly.proj[*which.begin()].K;
    if (fused() && lora_a<false>(nullptr, xin, nullptr, J, N, K, 0.f)) return;
    GemvJob js[kGemvMaxJobs];
    for (int t = 0; t < J.n; ++t) {
      js[t].W = J.A[t]; js[t].M = J.r[t]; js[t].K = K; js[t].x = xin;
      js[t].out = J.h[t]; js[t].out_f32 = true;
    }
    gemv_rows(js, J.n, N);
  }
  // xn = RMSNorm(x)·w over N rows, then a(which, xn): one launch (lora_a_kernel<NORM>, the same bits)
  // where the adapters and the switch allow it, else the two.
  void norm_a(const DLayer& Ly, std::initializer_list<int> which, bf16* xn, const float* x, const float* w, int64_t N,
              int C, float eps) const {
    const LoraAJobs J = jobs(Ly, which);
    if (J.n && fused() && lora_a<true>(xn, x, w, J, N, C, eps)) return;
    rmsnorm_rows(xn, x, w, (int)N, C, eps);
    a(Ly, which, xn, N);
  }
  GemvJob with_b(GemvJob j, const DLinear& P, int i) const {
    if (on(P)) { j.lora_B = d.lb.p + P.offB; j.lora_h = lh + (size_t)i * stride; j.r = P.r; j.scale = P.scale; }
    return j;
  }
};

}  // namespace
}  // namespace mimic::cuda
