// gemv_tc — the tensor-core NF4 decode product (gemv_tc.cu): gemv.cu hands it every launch whose
// jobs are all NF4 with M % 16 == 0, K % 64 == 0, 16-byte aligned codes, u8 absmax and x, and a
// tile that fits in shared memory (K <= ~22k), for N <= 16 rows of x. MIMIC_GEMV_TC=0 in the environment keeps gemv.cu's own NF4 path (the A/B leg).
#pragma once
#include <cstdint>

#include "cuda/cuda_ops.h"

namespace mimic::cuda {

bool gemv_tc_enabled();
bool gemv_tc_fits(const GemvJob& j);
// Launches the product and returns true, or returns false (nothing launched) when a job does not
// fit or the path is switched off. glu: jobs[0], jobs[1] are gate and up (gemv_glu's contract).
bool gemv_tc(const GemvJob* jobs, int n_jobs, int64_t N, bool glu);

}  // namespace mimic::cuda
