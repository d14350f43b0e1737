// gemv_tc — the tensor-core NF4 decode product (gemv_tc.cu): gemv.cu hands it every launch whose
// jobs are all NF4 with M % 16 == 0, K % 64 == 0, 16-byte aligned codes, u8 absmax and x, and a
// tile that fits in shared memory (K <= ~22k), for N <= 16 rows of x. MIMIC_GEMV_TC=0 in the environment keeps gemv.cu's own NF4 path (the A/B leg).
#pragma once
#include <cstdint>

#include "cuda/cuda_ops.h"

namespace mimic::cuda {

// What one launch of either gemv kernel reads (a __grid_constant__ parameter): the jobs, the first
// block of each (blocks never span jobs), and the 16 NF4 code values.
struct GemvParams {
  GemvJob j[kGemvMaxJobs];
  int first_block[kGemvMaxJobs + 1];
  int nj, N;
  int glu;  // 1: blocks walk job 0 (gate) and job 1 (up) over the same rows; out of job 0 = silu(gate)·up
  float lut[16];
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

}  // namespace mimic::cuda
