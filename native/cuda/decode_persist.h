// decode_persist — the layers of a batch-1 decode step as one persistent kernel (decode_persist.cu),
// recorded into decode_step.cu's graph in place of the ~7 launches a layer when
// MIMIC_DECODE_PERSIST=1 and the model fits (no LoRA; NF4 with double-quantized absmax everywhere;
// every product on gemv_tc's warp-slice path). Same bits as the per-launch graph.
#pragma once
#include <cstdint>
#include <string>

#include "cuda/buffer.h"
#include "cuda/cuda_ops.h"
#include "cuda/llama_cuda.h"

namespace mimic::cuda {

// One layer as the kernel reads it (device memory): q k v o gate up down, the two norms, the cache.
struct PersistLayer {
  GemvJob j[7];
  const float* in_norm;
  const float* post_norm;
  bf16* kcache;
  bf16* vcache;
};

// A stage's work item: a 16-row tile of one projection (gate/up: of both), as staged in the ring.
struct PersistGeo {
  int K, nj, job_bytes, bytes;
  int pair;  // 1: the item's two units are two tiles of one projection (else gate and up, or one tile)
};

enum PersistStage { kStageQ, kStageA, kStageO, kStageG, kStageD, kPersistStages };

struct PersistParams {
  const PersistLayer* layers;
  int L;
  float* x;          // the residual stream [C] fp32: the embedding in, the last layer's out
  float* h;          // x + o(att) [C] fp32
  bf16 *q, *att, *act;
  const int32_t* pos;
  const float* inv_freq;
  unsigned* cnt;     // [L][kPersistStages] items finished, zeroed before each step
  unsigned* err;     // set when a wait timed out (the step's results are then wrong)
  unsigned long long* stamps;  // MIMIC_DECODE_PERSIST_STAMPS=1: [grid][L][stage][4] %globaltimer, else null
  int C, QD, KD, I, Hq, Hkv, D;
  float eps;
  int w[kPersistStages];      // warps splitting K (gemv_tc_warps), Q O G D
  int items[kPersistStages];  // tiles of Q O G D, heads of A
  PersistGeo geo[kPersistStages];
  int ring_bytes, red_off, am_off, xs_off, sh_off, code2_off, jobs_off, mbar_off, ring_off;
  float lut[16];
  float code2[256];  // the double-quant code table every projection shares (checked by prepare)
};

struct PersistStep {
  DevBuf<PersistLayer> layers;
  DevBuf<unsigned> cnt;  // L·kPersistStages counters, then the error word
  DevBuf<unsigned long long> stamps;
  PersistParams P{};
  int smem = 0, grid = 0;
};

struct PersistIO {
  float *x, *h;
  bf16 *q, *att, *act;
  const int32_t* pos;
};

// MIMIC_DECODE_PERSIST=1 (read at every graph build, so that one process can alternate A/B legs).
bool decode_persist_wanted();
// Fills st for this model, cache and buffers (synchronous uploads: call it before a capture).
// False, with the reason in *why, when the persistent path does not apply.
bool decode_persist_prepare(const DeviceModel& d, const DeviceKV& kv, const PersistIO& io, PersistStep& st, std::string* why);
// Zeroes the counters and launches the kernel on the (capturing) stream.
void decode_persist_launch(const PersistStep& st, cudaStream_t stream);
// MIMIC_DECODE_PERSIST_STAMPS=1: the last step's timeline of the middle layer, by stage (lines of
// text; empty without stamps). For the check harness's trace.
std::string decode_persist_profile(const PersistStep& st);
// The same for the graph of this cache (decode_step.cu), or "".
std::string decode_persist_profile(const DeviceKV& kv);
// The error word of the last step (a copy: synchronizes). Non-zero: a wait timed out.
unsigned decode_persist_error(const PersistStep& st);
// For the graph of this cache (decode_step.cu): -1 when its layers are not one persistent kernel.
int64_t decode_persist_error(const DeviceKV& kv);

}  // namespace mimic::cuda
