// gemv_tc — the tensor-core NF4 decode product (gemv_tc.cu): gemv.cu hands it every launch whose
// jobs are all NF4 with M % 16 == 0, K % 64 == 0, 16-byte aligned codes, u8 absmax and x, and a
// tile that fits in shared memory (K <= ~22k), for N <= 16 rows of x. MIMIC_GEMV_TC=0 in the environment keeps gemv.cu's own NF4 path (the A/B leg).
#pragma once
#include <cstdint>

#include "cuda/cuda_ops.h"

namespace mimic::cuda {

// What a batch-1 decode launch of gemv_tc may fold around its products (decode_step.cu's fused
// graph; row_maths.cuh holds the arithmetic, shared with the kernels it replaces, so the tokens are
// the same bits either way):
//  norm_x set: x = rmsnorm(norm_x)·norm_w is computed by EVERY block into shared memory after the
//    wait (12 KB of fp32 from L2 per block for the 3B) instead of by an rmsnorm_rows launch; the
//    jobs' x is not read.
//  head_dim set: the launch is a layer's q, k, v (jobs 0, 1, 2): a q/k block's 16 rows are the rope
//    pairs (d, d + D/2) of 8 dims of one head, so its epilogue rotates them (rope_append's maths)
//    and writes q to its out, k and v straight into the cache rows at *pos; no rope launch.
struct GemvFuse {
  const float* norm_x = nullptr;
  const float* norm_w = nullptr;
  float norm_eps = 0.f;
  const int32_t* pos = nullptr;
  const float* inv_freq = nullptr;
  int head_dim = 0;
  bf16* kcache = nullptr;
  bf16* vcache = nullptr;
};

// What one launch of either gemv kernel reads (a __grid_constant__ parameter): the jobs, the first
// block of each (blocks never span jobs), and the 16 NF4 code values.
struct GemvParams {
  GemvJob j[kGemvMaxJobs];
  int first_block[kGemvMaxJobs + 1];
  int nj, N;
  int glu;  // 1: blocks walk job 0 (gate) and job 1 (up) over the same rows; out of job 0 = silu(gate)·up
  float lut[16];
  GemvFuse f;  // gemv_tc's fused decode launches only
  int ablate;  // gemv_tc, MIMIC_GEMV_TC_ABLATE (profiling only, wrong results): 1 no weight copy, 2 no products
};

// out[n, m] = α·v + res[n, m] + β·out[n, m] (bf16 or fp32 out): the common epilogue of a job's
// product v (LoRA B already added). Only .cu files include this header.
__device__ __forceinline__ void gemv_store(const GemvJob& J, int64_t n, int m, float v) {
  const int64_t o = n * J.M + m;
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

bool gemv_tc_enabled();
bool gemv_tc_fits(const GemvJob& j);
// Launches the product and returns true, or returns false (nothing launched) when a job does not
// fit or the path is switched off. glu: jobs[0], jobs[1] are gate and up (gemv_glu's contract).
bool gemv_tc(const GemvJob* jobs, int n_jobs, int64_t N, bool glu);
// One row of x with the folds of `f` (above): launches and returns true, or returns false having
// launched nothing (the path is off, a job does not fit, or the fold's shape conditions fail:
// q/k/v rows a multiple of head_dim, head_dim % 16 == 0, bf16 out, no residual or β) — the caller
// then runs the unfused kernels, which give the same bits.
bool gemv_tc_fused(const GemvJob* jobs, int n_jobs, bool glu, const GemvFuse& f);

}  // namespace mimic::cuda
