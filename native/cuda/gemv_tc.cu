// gemv_tc — the decode products of NF4 weights (N = 1..16 rows of x) on the tensor cores, with the
// 4-bit codes turned into bf16 PAIRS by one shared-memory lookup per byte. It replaces gemv.cu's
// NF4 path (one warp a row, one table lookup + one FFMA per weight) wherever the shape allows.
//
//   out[n, m] = res[n, m] + α · ( Σ_b absmax_{m,b} · Σ_{k∈b} bf16(NF4_CODE[c_{m,k}]) · x[n, k]
//                                 + s · Σ_j h[n, j] · B[m, j] ) + β · out[n, m]
//   b: the 64-wide absmax blocks of row m; absmax as gemv.cu (code2[u8]·absmax2 + offset, or plain).
//
// Why (bench/NOTES.md round 12/13): the batch-1 decode step is 2.8e9 NF4 values a token. gemv.cu
// spends per value a 4-byte LDS of the 16-entry code table, two ALU ops to cut the nibble, a bf16 →
// fp32 of x and an FFMA: ≈ 0.34 ms of shared-memory pipe and ≈ 0.45 ms of issue per token at 100 %,
// more than the 0.35 ms the NF4 bytes take at copy bandwidth — the kernel cannot reach the bound by
// hiding latency (round 12: PDL and more occupancy gave +3-4 %). Here a BYTE of codes (two values)
// costs two ALU ops + one conflict-free LDS that yields the bf16x2 pair ready for the MMA, and the
// products are mma.sync.m16n8k16 (one instruction per 256 weight values): ≈ 1.6 instructions a value.
//
// Numerics. The code value is rounded to bf16 (relative error ≤ 2⁻⁹, the same class as the
// prefill/training path's bf16(code·absmax)), x is bf16 as everywhere, products and sums are fp32
// (the MMA), and the absmax multiplies each 64-block's fp32 partial sum. Each output column n
// depends only on x[n] (the MMA's columns are independent and the reduction order is fixed by M and
// K alone), so a sequence's result does not depend on which other rows share the launch — the
// batched step's bit-for-bit property (decode_batch_cuda.cu) holds across N.
//
// Work layout. A block of 8 warps owns 16 rows m (one MMA M-tile) of one job; warp w takes the
// w-th eighth of the row's 64-blocks. In a block b, lane (g = lane/4, q = lane%4) loads bytes
// 8q..8q+7 (codes k = 16q..16q+15) of rows g and g+8 — one 8-byte load each; the quad reads a row's
// 32 bytes. MMA step t (0..3) takes the lane's bytes 2t, 2t+1: A cols (2q, 2q+1) ← actual k = 16q+4t
// +{0,1}, cols (8+2q, 9+2q) ← 16q+4t+{2,3}. B (x, "col" layout, n = g) then needs x[n, 16q+4t .. +3]:
// the lane's 16 values of x are two 16-byte loads a block. The four steps of a block accumulate into
// a zeroed fragment that is scaled by the rows' absmax and added to the running sum; the 8 warps'
// sums are added in warp order through shared memory, then the epilogue of gemv.cu (LoRA B, residual,
// α, β, bf16/fp32 out, or silu(gate)·up for a gate/up pair).
//
// The pair table: entry e (a code byte, first element = HIGH nibble) = bf16(code[e>>4]) in the low
// half, bf16(code[e&15]) in the high half, stored 32 times so that lane ℓ reads copy ℓ at word
// e·32 + ℓ: bank ℓ whatever the byte — conflict-free (32 KB, filled in ~0.1 µs, reused by the
// block's reduction afterwards).
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/gemv_tc.h"
#include "cuda/pdl.h"

namespace mimic::cuda {
namespace {

constexpr int kWarps = 8, kThreads = kWarps * 32, kRows = 16;

struct Params {
  GemvJob j[kGemvMaxJobs];
  int first_block[kGemvMaxJobs + 1];
  int nj, N;
  int glu;  // 1: blocks walk job 0 (gate) and job 1 (up) over the same rows; out = silu(gate)·up
  float lut[16];
};

struct __align__(16) Smem {
  union {
    uint32_t pair[256 * 32];                   // the replicated pair table (main loop)
    float red[2][kWarps][kRows][16];           // the warps' partial sums (epilogue)
  };
  float code2[2][256];
};

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The pair of byte i (0..3) of word w, from the lane's copy: byte offset (byte·32 + lane)·4.
__device__ __forceinline__ uint32_t pair_of(const char* tab_lane, uint32_t w, int i) {
  const uint32_t off = i == 0 ? (w << 7) & 0x7f80u : (w >> (8 * i - 7)) & 0x7f80u;
  return *reinterpret_cast<const uint32_t*>(tab_lane + off);
}

__device__ __forceinline__ uint2 ld_stream8(const uint8_t* p) { return __ldcs(reinterpret_cast<const uint2*>(p)); }

// Σ over the warp's 64-blocks [b_lo, b_hi) of rows m0+g, m0+g+8 into acc (the C fragments of the NT
// n-tiles; zero on entry).
template <int NT>
__device__ __forceinline__ void tile_dot(const GemvJob& J, const float* code2, const char* tab_lane, int m0, int b_lo,
                                         int b_hi, int lane, int N, float (&acc)[NT][4]) {
  const int g = lane >> 2, q = lane & 3, K = J.K, nb = K >> 6;
  const int rowA = m0 + g, rowB = rowA + 8;
  const uint8_t* wA = J.packed + (int64_t)rowA * (K >> 1) + 8 * q;
  const uint8_t* wB = J.packed + (int64_t)rowB * (K >> 1) + 8 * q;
  const int64_t iA = (int64_t)rowA * nb, iB = (int64_t)rowB * nb;  // absmax index of the row's block 0
  const bf16* xr[NT];
  bool xon[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int n = 8 * j + g;
    xon[j] = n < N;
    xr[j] = J.x + (int64_t)(xon[j] ? n : 0) * K + 16 * q;
  }
  constexpr int P = NT == 1 ? 2 : 1;  // blocks whose loads are in flight together (2 n-tiles: registers)
  for (int b0 = b_lo; b0 < b_hi; b0 += P) {
    uint2 wa[P], wb[P];
    float ama[P], amb[P];
    uint4 xv[P][NT][2];
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int b = b0 + i;
      if (b < b_hi) {
        wa[i] = ld_stream8(wA + 32 * b);
        wb[i] = ld_stream8(wB + 32 * b);
        if (J.absmax) {
          ama[i] = __ldg(J.absmax + iA + b);
          amb[i] = __ldg(J.absmax + iB + b);
        } else {
          ama[i] = fmaf(code2[__ldg(J.am_u8 + iA + b)], __ldg(J.absmax2 + ((iA + b) >> 8)), J.offset);
          amb[i] = fmaf(code2[__ldg(J.am_u8 + iB + b)], __ldg(J.absmax2 + ((iB + b) >> 8)), J.offset);
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          if (xon[j]) {
            const uint4* xp = reinterpret_cast<const uint4*>(xr[j] + 64 * b);
            xv[i][j][0] = __ldg(xp);
            xv[i][j][1] = __ldg(xp + 1);
          } else {
            xv[i][j][0] = xv[i][j][1] = make_uint4(0, 0, 0, 0);
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < P; ++i) {
      if (b0 + i < b_hi) {
        float t[NT][4];
#pragma unroll
        for (int j = 0; j < NT; ++j) t[j][0] = t[j][1] = t[j][2] = t[j][3] = 0.f;
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          const uint32_t la = s < 2 ? wa[i].x : wa[i].y, lb = s < 2 ? wb[i].x : wb[i].y;
          const int bi = 2 * (s & 1);  // bytes 2s, 2s+1 of the 8: word s/2, bytes bi, bi+1
          uint32_t a[4];
          a[0] = pair_of(tab_lane, la, bi);
          a[2] = pair_of(tab_lane, la, bi + 1);
          a[1] = pair_of(tab_lane, lb, bi);
          a[3] = pair_of(tab_lane, lb, bi + 1);
#pragma unroll
          for (int j = 0; j < NT; ++j) {
            const uint4& xh = xv[i][j][s >> 1];  // x words 2s, 2s+1 of the lane's 8
            const uint32_t b0w = (s & 1) ? xh.z : xh.x, b1w = (s & 1) ? xh.w : xh.y;
            mma_bf16(t[j], a, b0w, b1w);
          }
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          acc[j][0] = fmaf(ama[i], t[j][0], acc[j][0]);
          acc[j][1] = fmaf(ama[i], t[j][1], acc[j][1]);
          acc[j][2] = fmaf(amb[i], t[j][2], acc[j][2]);
          acc[j][3] = fmaf(amb[i], t[j][3], acc[j][3]);
        }
      }
    }
  }
}

// The warp's fragments into red[w][row][col] (row 0..15, col = the x row n).
template <int NT>
__device__ __forceinline__ void store_partial(float (*red)[16], const float (&acc)[NT][4], int lane) {
  const int g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int n = 8 * j + 2 * q;
    red[g][n] = acc[j][0];
    red[g][n + 1] = acc[j][1];
    red[g + 8][n] = acc[j][2];
    red[g + 8][n + 1] = acc[j][3];
  }
}

template <int NT, bool PDL>
__global__ void __launch_bounds__(kThreads, 3) gemv_tc_kernel(const __grid_constant__ Params P) {
  __shared__ Smem sm;
  int ji = 0;
#pragma unroll
  for (int i = 1; i < kGemvMaxJobs; ++i)
    if (i < P.nj && (int)blockIdx.x >= P.first_block[i]) ji = i;
  const GemvJob& J = P.j[ji];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int m0 = ((int)blockIdx.x - P.first_block[ji]) * kRows;
  const int nb = J.K >> 6, b_lo = warp * nb / kWarps, b_hi = (warp + 1) * nb / kWarps;
  if constexpr (PDL) pdl_trigger();
  {  // the pair table: thread e writes entry e's 32 copies, 16 bytes at a time, rotated by e so
     // that the 8 lanes of a quarter-warp hit 8 different bank quads
    const int e = tid;
    const uint32_t v = bf2_bits(P.lut[e >> 4], P.lut[e & 15]);
    const uint4 v4 = make_uint4(v, v, v, v);
#pragma unroll
    for (int i = 0; i < 8; ++i) *reinterpret_cast<uint4*>(&sm.pair[e * 32 + 4 * ((i + e) & 7)]) = v4;
  }
  if (J.packed && !J.absmax) sm.code2[0][tid] = J.code2[tid];
  if (P.glu && !P.j[1].absmax) sm.code2[1][tid] = P.j[1].code2[tid];
  if constexpr (PDL) {
    // the warp's weight rows into L2 while the kernel before still runs (no register, no wait)
    for (int jj = 0; jj <= P.glu; ++jj) {
      const GemvJob& Jp = P.j[ji + jj];
      const int rows = lane >> 1, half = lane & 1;
      const char* row = reinterpret_cast<const char*>(Jp.packed) + (int64_t)(m0 + rows) * (Jp.K >> 1);
      for (int off = 32 * b_lo + 128 * half; off < 32 * b_hi; off += 256) asm volatile("prefetch.global.L2 [%0];" ::"l"(row + off));
    }
    pdl_wait();
  }
  __syncthreads();
  const char* tab_lane = reinterpret_cast<const char*>(sm.pair) + 4 * lane;
  const int N = P.N;
  float acc[2][NT][4];
#pragma unroll
  for (int u = 0; u < 2; ++u)
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[u][j][0] = acc[u][j][1] = acc[u][j][2] = acc[u][j][3] = 0.f;
  tile_dot<NT>(J, sm.code2[0], tab_lane, m0, b_lo, b_hi, lane, N, acc[0]);
  if (P.glu) tile_dot<NT>(P.j[1], sm.code2[1], tab_lane, m0, b_lo, b_hi, lane, N, acc[1]);
  __syncthreads();  // the table is done with: its space takes the partial sums
  store_partial<NT>(sm.red[0][warp], acc[0], lane);
  if (P.glu) store_partial<NT>(sm.red[1][warp], acc[1], lane);
  __syncthreads();
  if (tid >= kRows * 8 * NT) return;
  const int r = tid / (8 * NT), n = tid % (8 * NT), m = m0 + r;
  if (n >= N) return;
  float v = 0.f, u = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) v += sm.red[0][w][r][n];
  if (P.glu) {
#pragma unroll
    for (int w = 0; w < kWarps; ++w) u += sm.red[1][w][r][n];
    // out = silu(gate)·up (LoRA B of gate/up in their epilogues first, as gemv.cu)
    const GemvJob& U = P.j[1];
    if (J.lora_B) {
      float t = 0.f;
      for (int i = 0; i < J.r; ++i) t = fmaf(J.lora_h[(int64_t)n * J.r + i], __bfloat162float(J.lora_B[(int64_t)m * J.r + i]), t);
      v = fmaf(J.scale, t, v);
    }
    if (U.lora_B) {
      float t = 0.f;
      for (int i = 0; i < U.r; ++i) t = fmaf(U.lora_h[(int64_t)n * U.r + i], __bfloat162float(U.lora_B[(int64_t)m * U.r + i]), t);
      u = fmaf(U.scale, t, u);
    }
    const float sg = 1.f / (1.f + __expf(-v));
    static_cast<bf16*>(J.out)[(int64_t)n * J.M + m] = __float2bfloat16(v * sg * u);
    return;
  }
  if (J.lora_B) {
    float t = 0.f;
    for (int i = 0; i < J.r; ++i) t = fmaf(J.lora_h[(int64_t)n * J.r + i], __bfloat162float(J.lora_B[(int64_t)m * J.r + i]), t);
    v = fmaf(J.scale, t, v);
  }
  const int64_t o = (int64_t)n * J.M + m;
  v *= J.alpha;
  if (J.res) v += J.res[o];
  if (J.out_f32) {
    float* out = static_cast<float*>(J.out);
    if (J.beta != 0.f) v += J.beta * out[o];
    out[o] = v;
  } else {
    bf16* out = static_cast<bf16*>(J.out);
    if (J.beta != 0.f) v += J.beta * __bfloat162float(out[o]);
    out[o] = __float2bfloat16(v);
  }
}

bool aligned(const void* p, uintptr_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

}  // namespace

bool gemv_tc_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("MIMIC_GEMV_TC");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return on;
}

bool gemv_tc_fits(const GemvJob& j) {
  return j.packed && j.M % kRows == 0 && j.K % 64 == 0 && aligned(j.packed, 8) && aligned(j.x, 16);
}

bool gemv_tc(const GemvJob* jobs, int n_jobs, int64_t N, bool glu) {
  if (!gemv_tc_enabled() || N < 1 || N > 16 || n_jobs < 1 || n_jobs > kGemvMaxJobs) return false;
  for (int i = 0; i < n_jobs; ++i)
    if (!gemv_tc_fits(jobs[i])) return false;
  Params P{};
  std::memcpy(P.lut, mimic::NF4_CODE, sizeof P.lut);
  int blocks = 0;
  for (int i = 0; i < n_jobs; ++i) {
    P.j[i] = jobs[i];
    P.first_block[i] = blocks;
    if (!glu || i == 0) blocks += jobs[i].M / kRows;
  }
  P.first_block[n_jobs] = blocks;
  P.nj = glu ? 1 : n_jobs;
  P.glu = glu ? 1 : 0;
  P.N = (int)N;
  cudaStream_t st = Context::get().stream;
  if (N <= 8) launch_pdl(gemv_tc_kernel<1, false>, gemv_tc_kernel<1, true>, dim3(blocks), dim3(kThreads), 0, st, P);
  else launch_pdl(gemv_tc_kernel<2, false>, gemv_tc_kernel<2, true>, dim3(blocks), dim3(kThreads), 0, st, P);
  MIMIC_CUDA_LAUNCHED();
  return true;
}

}  // namespace mimic::cuda
