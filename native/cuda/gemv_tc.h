// gemv_tc — the tensor-core NF4 decode product (gemv_tc.cu): gemv.cu hands it every launch whose
// jobs are all NF4 with M % 16 == 0, K % 64 == 0, 16-byte aligned codes, u8 absmax and x, and a
// tile that fits in shared memory (K <= ~22k), for N <= 16 rows of x. MIMIC_GEMV_TC=0 in the environment keeps gemv.cu's own NF4 path (the A/B leg).
#pragma once
#include <cstdint>

#include "cuda/cuda_ops.h"

namespace mimic::cuda {

// RoPE and the KV append folded into a batch-1 decode step's q/k/v launch (decode_step.cu): a q/k
// block's 16 rows are the rope pairs (d, d + D/2) of 8 dims of one head, so its epilogue rotates them
// with rope_append's arithmetic (row_maths.cuh: the same bits) and writes q to its out, k and v
// straight into the cache rows at *pos — no rope_append launch (round 14: +1 %).
struct GemvRope {
  const int32_t* pos = nullptr;
  const float* inv_freq = nullptr;
  int head_dim = 0;
  bf16* kcache = nullptr;
  bf16* vcache = nullptr;
};

// The RMSNorm of a batch-1 decode step folded into the product that consumes it (decode_step.cu:
// q/k/v and gate/up; a LoRA'd job only with its A product in the same launch, lora_A set). Since
// RMSNorm's scale r = rsqrt(mean(x²) + eps) is one scalar per row, W·(w ⊙ x · r) = r · (W·(w ⊙ x)):
// the products take x' = bf16(w ⊙ x) straight from the fp32
// residual x, each warp sums the squares of the x slice it loads anyway, and the block's epilogue —
// after the warps' partial sums, which it waits for in any case — forms r from the warps' sums and
// scales the row totals. No norm launch and nothing serial before the products (round 14's fold
// normalized the row first: 3 % slower than the norm launch). Not the bits of rmsnorm_rows + the
// product (rmsnorm rounds w·(x·r) to bf16; here bf16(w·x) and r in fp32 after the sums): the same
// error class, checked against the unfolded step with a tolerance.
struct GemvNorm {
  const float* x = nullptr;  // fp32 [K]: the residual row (another kernel's output)
  const float* w = nullptr;  // fp32 [K]: the norm's weight
  float eps = 0.f;
};

// What one launch of either gemv kernel reads (a __grid_constant__ parameter): the jobs, the first
// block of each (blocks never span jobs), and the 16 NF4 code values.
struct GemvParams {
  GemvJob j[kGemvMaxJobs];
  int first_block[kGemvMaxJobs + 1];
  int nj, N;
  int glu;  // 1: blocks walk job 0 (gate) and job 1 (up) over the same rows; out of job 0 = silu(gate)·up
  float lut[16];
  GemvRope rope;  // gemv_tc_qkv_rope only
  GemvNorm norm;  // norm.x set: the RMSNorm folded into this launch (N = 1; x of the jobs unused)
  int tiles, tile_stride;  // 16-row tiles a block takes (gemv_tc), tile_stride blocks apart (one job)
  int x_warp;  // gemv_tc, N = 1: each warp loads its x slice at once (MIMIC_GEMV_TC_XWARP=0: a block ahead)
  int res_pre;  // gemv_tc, one tile a block: the residual loaded right after the wait (MIMIC_GEMV_TC_RESPRE=0: in the epilogue)
  int la_blocks;  // gemv_tc_lora_in: blocks 0..la_blocks-1 compute job 0's h = x·Aᵀ (LoRA A), the rest the products
  int lora_off, lora_unit;  // gemv_tc: LoRA B rows and h staged in shared memory at lora_off, lora_unit bytes a job of the block (0: read from global)
  int ablate;  // gemv_tc, MIMIC_GEMV_TC_ABLATE (profiling only, wrong results): 1 no weight copy, 2 no products, 4 no x loads, 8 a release (fence + atomic) a block,
              // 16 no pair lookups (the code words as A), 32 no weight loads from shared memory either
};

// out[n, m] = α·v + res[n, m] + β·out[n, m] (bf16 or fp32 out): the common epilogue of a job's
// product v (LoRA B already added). Only .cu files include this header.
// pre: res[n, m] was loaded already, into res_v (gemv_tc: before the products).
__device__ __forceinline__ void gemv_store(const GemvJob& J, int64_t n, int m, float v, bool pre = false, float res_v = 0.f) {
  const int64_t o = n * J.M + m;
  v *= J.alpha;
  if (J.res) v += pre ? res_v : __ldcg(J.res + o);
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
// norm (optional): the RMSNorm of the jobs' input folded in (GemvNorm; one row of x; a job with LoRA B
// needs lora_A: its A product then runs in the launch) — returns false, having launched nothing,
// where the launch cannot take it. Jobs with lora_A (and a folded norm) get A blocks (gemv_tc_lora_in).
bool gemv_tc(const GemvJob* jobs, int n_jobs, int64_t N, bool glu, const GemvNorm* norm = nullptr);
// jobs[0..2] = q, k, v of one layer, one row of x, with GemvRope's epilogue: launches and returns
// true, or returns false having launched nothing (the path is off, a job does not fit, or q/k rows
// are not whole heads of head_dim % 16 == 0, or an out is fp32 / has a residual or β) — the caller
// then runs gemv + rope_append, which give the same bits.
bool gemv_tc_qkv_rope(const GemvJob* jobs, const GemvRope& rope, const GemvNorm* norm = nullptr);
// The warps (8 or 12) a launch of these jobs with one row of x splits K over — gemv_tc (rope false) or
// gemv_tc_qkv_rope (true) — or 0 when they would not run on the tensor cores. A sum's order depends
// on it: decode_persist.cu asks it so that its products give the launches' bits.
int gemv_tc_warps(const GemvJob* jobs, int n_jobs, bool glu, bool rope);
// One LoRA'd job (j.lora_A, lora_B, lora_h set; N <= kGemvMaxN) whose A product h = x·Aᵀ runs in the
// same launch: blocks of its own at the front of the grid write h — which must hold the sentinel
// kLoraHPending (every bit set: a NaN no product yields) when the launch starts — and each product
// block polls h before its epilogue. The same bits as an A launch followed by gemv_tc. Launches and
// returns true, or returns false having launched nothing (the job does not fit, B not stageable, or
// the grid would not be resident in one wave — the poll needs every A block running). gemv_tc and
// gemv_tc_qkv_rope take jobs with lora_A the same way when their norm is folded in (the A blocks
// then read the residual row like the products). Round 19 (H100): the LoRA r = 16 step 2.02 → 1.87
// ms for o and down, → 1.82 with q/k/v and gate/up too (bench/NOTES.md); the first version, A rows
// streamed from L2 after the wait, had been 19 % slower (round 18).
constexpr uint32_t kLoraHPending = 0xffffffffu;
bool gemv_tc_lora_in(const GemvJob& j, int64_t N);

}  // namespace mimic::cuda
