// sampling — the CUDA twin of ops/sampling.h: the next token from one row of logits[V] on the GPU.
//
// Same processors and order as cpu::sample_token (HF's): repetition penalty over the history ids
// (each id once: gather all, then scatter), greedy argmax (first index of the maximum) when
// temperature <= 0; otherwise top-k on the GPU — 128 blocks each keep the k best of their slice,
// one block merges them (value descending, index ascending) — and only those k (value, id) pairs
// come back to the host, where temperature, softmax (double), top-p and the single rng.uniform()
// draw run exactly as the CPU twin's tail. Top-k off or above kMaxK: the row comes back whole and
// the CPU twin samples it (correct, slower: PCIe copy of V floats).
// Difference from the CPU twin: top-k keeps exactly k tokens, the CPU keeps every tie of the k-th.
#include <algorithm>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {

constexpr int kMaxK = 64, kSlices = 128, kThreads = 256;

__global__ void penalty_gather(float* tmp, const float* logits, const int32_t* hist, int64_t n, int64_t V, float pen) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t id = hist[i];
  if (id < 0 || id >= V) return;
  const float l = logits[id];
  tmp[i] = l > 0 ? l / pen : l * pen;
}
__global__ void penalty_scatter(float* logits, const float* tmp, const int32_t* hist, int64_t n, int64_t V) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t id = hist[i];
  if (id < 0 || id >= V) return;
  logits[id] = tmp[i];
}

struct Cand { float v; int32_t id; };
__device__ inline bool better(Cand a, Cand b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

__device__ Cand block_best(Cand c) {
  __shared__ Cand sh[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    Cand x{__shfl_xor_sync(0xffffffffu, c.v, o), __shfl_xor_sync(0xffffffffu, c.id, o)};
    if (better(x, c)) c = x;
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = c;
  __syncthreads();
  Cand best = sh[0];
  for (int w = 1; w < kThreads / 32; ++w)
    if (better(sh[w], best)) best = sh[w];
  return best;
}

// Block b: the k best of src[b*per .. ) (values with ids; ids < 0 are padding), into dst[b*k ..].
__global__ void topk_kernel(Cand* dst, const float* vals, const Cand* cands, int64_t n, int64_t per, int k) {
  extern __shared__ unsigned char taken[];
  const int64_t lo = blockIdx.x * per, hi = min(n, lo + per);
  const int cnt = hi > lo ? (int)(hi - lo) : 0;
  for (int i = threadIdx.x; i < cnt; i += kThreads) taken[i] = 0;
  __syncthreads();
  for (int r = 0; r < k; ++r) {
    Cand c{-INFINITY, 0x7fffffff};
    int at = -1;
    for (int i = threadIdx.x; i < cnt; i += kThreads) {
      if (taken[i]) continue;
      Cand x = vals ? Cand{vals[lo + i], (int32_t)(lo + i)} : cands[lo + i];
      if (x.id < 0) continue;
      if (at < 0 || better(x, c)) { c = x; at = i; }
    }
    Cand best = block_best(c);
    if (at >= 0 && c.id == best.id && c.v == best.v) taken[at] = 1;
    if (threadIdx.x == 0) dst[blockIdx.x * k + r] = best.id == 0x7fffffff ? Cand{-INFINITY, -1} : best;
    __syncthreads();
  }
}

__global__ void argmax_kernel(int32_t* out, const float* logits, int64_t V) {
  Cand c{-INFINITY, 0x7fffffff};
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    Cand x{logits[i], (int32_t)i};
    if (c.id == 0x7fffffff || better(x, c)) c = x;
  }
  Cand best = block_best(c);
  if (threadIdx.x == 0) *out = best.id;
}

struct Scratch {
  DevBuf<int32_t> hist;
  DevBuf<float> tmp;
  DevBuf<Cand> c1, c2;
  DevBuf<int32_t> idx;
};
Scratch& scratch() { static Scratch s; return s; }

}  // namespace

int32_t sample_token(float* logits, int64_t V, const mimic::SamplingParams& p, const int32_t* history,
                     int64_t n_history, mimic::Rng& rng) {
  Context& ctx = Context::get();
  Scratch& S = scratch();
  cudaStream_t st = ctx.stream;
  if (p.repetition_penalty != 1.f && n_history > 0) {
    S.hist.reserve((size_t)n_history);
    S.tmp.reserve((size_t)n_history);
    MIMIC_CUDA_CHECK(cudaMemcpyAsync(S.hist.p, history, sizeof(int32_t) * n_history, cudaMemcpyHostToDevice, st));
    const int g = blocks_for(n_history, 256);
    penalty_gather<<<g, 256, 0, st>>>(S.tmp.p, logits, S.hist.p, n_history, V, p.repetition_penalty);
    penalty_scatter<<<g, 256, 0, st>>>(logits, S.tmp.p, S.hist.p, n_history, V);
    MIMIC_CUDA_LAUNCHED();
  }
  mimic::SamplingParams rest = p;
  rest.repetition_penalty = 1.f;
  if (!(p.temperature > 0)) {
    S.idx.reserve(1);
    argmax_kernel<<<1, kThreads, 0, st>>>(S.idx.p, logits, V);
    MIMIC_CUDA_LAUNCHED();
    int32_t id = 0;
    MIMIC_CUDA_CHECK(cudaMemcpyAsync(&id, S.idx.p, sizeof id, cudaMemcpyDeviceToHost, st));
    ctx.sync();
    return id;
  }
  if (p.top_k > 0 && p.top_k <= kMaxK && p.top_k < V) {
    const int k = p.top_k;
    const int64_t per = (V + kSlices - 1) / kSlices;
    S.c1.reserve((size_t)kSlices * k);
    S.c2.reserve((size_t)k);
    topk_kernel<<<kSlices, kThreads, per, st>>>(S.c1.p, logits, nullptr, V, per, k);
    MIMIC_CUDA_LAUNCHED();
    topk_kernel<<<1, kThreads, (size_t)kSlices * k, st>>>(S.c2.p, nullptr, S.c1.p, (int64_t)kSlices * k,
                                                          (int64_t)kSlices * k, k);
    MIMIC_CUDA_LAUNCHED();
    std::vector<Cand> top((size_t)k);
    MIMIC_CUDA_CHECK(cudaMemcpyAsync(top.data(), S.c2.p, sizeof(Cand) * k, cudaMemcpyDeviceToHost, st));
    ctx.sync();
    std::vector<float> vals;
    std::vector<int32_t> ids;
    for (const Cand& c : top)
      if (c.id >= 0) { vals.push_back(c.v); ids.push_back(c.id); }
    rest.top_k = 0;  // already applied; the candidates are sorted, so the CPU tail keeps their order
    const int32_t j = cpu::sample_token(vals.data(), (int64_t)vals.size(), rest, nullptr, 0, rng);
    return ids[(size_t)j];
  }
  std::vector<float> row((size_t)V);
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(row.data(), logits, sizeof(float) * V, cudaMemcpyDeviceToHost, st));
  ctx.sync();
  return cpu::sample_token(row.data(), V, rest, nullptr, 0, rng);
}

}  // namespace mimic::cuda
