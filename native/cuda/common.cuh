// common.cuh — device helpers every CUDA twin shares (bf16 conversions, warp reductions).
#pragma once
#include "cuda/buffer.h"

namespace mimic::cuda {

inline int blocks_for(int64_t n, int threads) { return (int)((n + threads - 1) / threads); }

__host__ __device__ inline float to_f(float x) { return x; }
__device__ inline float to_f(bf16 x) { return __bfloat162float(x); }
template <class T> __device__ inline T from_f(float x);
template <> __device__ inline float from_f<float>(float x) { return x; }
template <> __device__ inline bf16 from_f<bf16>(float x) { return __float2bfloat16(x); }

// Two floats → one bf16x2 word, each rounded to nearest even; lo in the low 16 bits (the lower address).
__device__ __forceinline__ uint32_t bf2_bits(float lo, float hi) {
  const __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);  // .x = lo
  uint32_t u;
  memcpy(&u, &p, sizeof u);
  return u;
}

// The 16 NF4 code values by value (a kernel parameter; stage them to shared memory with static indices).
struct NF4Lut {
  float v[16];
};

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// D[16×8] += A[16×16]·B[16×8] on the tensor cores, bf16 in, fp32 accumulate (mma.sync.m16n8k16; the
// fragment layouts are in the PTX ISA: a0 (row g, k 2q..2q+1), a1 (row g+8), a2/a3 the same at k+8;
// b0 (k 2q..2q+1, col g), b1 (k+8); c0,c1 (row g, cols 2q, 2q+1), c2,c3 (row g+8) — g = lane/4, q = lane%4).
// Not volatile: a pure function of its registers, so the compiler may interleave independent chains
// (gemv_tc's consecutive 64-blocks; round 14).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Barriers as functors, for device code that some kernels run with the whole block and others with
// a subset of a bigger block's warps: __syncthreads, or named barrier ID of the first N threads.
struct BlockBar {
  __device__ void operator()() const { __syncthreads(); }
};
template <int ID, int N>
struct NamedBar {
  static_assert(ID > 0 && ID < 16 && N % 32 == 0, "barrier 0 is __syncthreads; whole warps");
  __device__ void operator()() const { asm volatile("bar.sync %0, %1;" ::"n"(ID), "n"(N) : "memory"); }
};

// The GPU's nanosecond clock (%globaltimer: one clock for every SM).
__device__ __forceinline__ unsigned long long globaltimer_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
// The watchdog of a spin loop that waits on another block's write (a counter, an mbarrier's bytes, a
// polled word): such a wait that lasts 2 s is a bug (a block never ran), and the loop gives up —
// wrong results and an error word or a NaN, never a hung process. expired() reads the clock; call
// it every few dozen spins. The clock starts at the first call.
struct SpinWatchdog {
  unsigned long long t0 = 0;
  __device__ __forceinline__ bool expired() {
    const unsigned long long t = globaltimer_ns();
    if (!t0) { t0 = t; return false; }
    return t - t0 > 2000000000ull;
  }
};

// Element i of a dense [rows, cols] array, written into rows ld apart (ld == cols: i itself) — the
// strided outputs of the training's grouped passes (llama_cuda.cu: swiglu, the NF4 dequantize)
__device__ __forceinline__ int64_t row_strided(int64_t i, int64_t cols, int64_t ld) {
  return ld == cols ? i : (i / cols) * ld + i % cols;
}
// Asks L2 for the 128-byte line holding p (no register, no wait; sm_80+).
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p)); }

// 16 bytes global → shared without a register (sm_80+); valid == false zero-fills them without reading.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid = true) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
// 4 bytes global → shared without a register. cp.async.ca (the 4-byte size has no .cg form) may be
// served from L1: for weights only — another kernel's output comes by cp_async16 (L2; pdl.h).
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}

}  // namespace mimic::cuda
