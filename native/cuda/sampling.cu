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
// sample_tokens does S rows [S, V] in one pass of launches (continuous batching's step);
// sample_token is its one-row case.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace mimic::cuda {
namespace {

constexpr int kMaxK = 64, kSlices = 128, kThreads = 256;

// Penalty over a flat list of (row, id) entries of many rows at once: gather every entry from the
// original logits, then scatter — an id repeated in one row's history is penalized once.
__global__ void penalty_gather(float* tmp, const float* logits, int64_t V, const int32_t* row_of, const int32_t* hist,
                               const float* pen, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t id = hist[i];
  if (id < 0 || id >= V) return;
  const float l = logits[(int64_t)row_of[i] * V + id], p = pen[row_of[i]];
  tmp[i] = l > 0 ? l / p : l * p;
}
__global__ void penalty_scatter(float* logits, int64_t V, const float* tmp, const int32_t* row_of, const int32_t* hist,
                                int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t id = hist[i];
  if (id < 0 || id >= V) return;
  logits[(int64_t)row_of[i] * V + id] = tmp[i];
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

// Block (b, y): the k best of row y's src[b*per .. ) (values with ids; ids < 0 are padding) into
// dst[y][b*k ..]. Row y reads vals + rows[y]·V (first stage) or cands + y·n (merge stage).
__global__ void topk_kernel(Cand* dst, const float* vals, const int32_t* rows, int64_t V, const Cand* cands, int64_t n,
                            int64_t per, int k) {
  extern __shared__ unsigned char taken[];
  const int y = blockIdx.y;
  if (vals) vals += (int64_t)rows[y] * V;
  else cands += (int64_t)y * n;
  dst += (int64_t)y * gridDim.x * k;
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

// Block y: the first index of the maximum of row rows[y].
__global__ void argmax_kernel(int32_t* out, const float* logits, const int32_t* rows, int64_t V) {
  const float* row = logits + (int64_t)rows[blockIdx.x] * V;
  Cand c{-INFINITY, 0x7fffffff};
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    Cand x{row[i], (int32_t)i};
    if (c.id == 0x7fffffff || better(x, c)) c = x;
  }
  Cand best = block_best(c);
  if (threadIdx.x == 0) out[blockIdx.x] = best.id;
}

struct Scratch {
  DevBuf<int32_t> meta;  // [greedy rows][top-k rows by group][penalty row_of][penalty ids][penalty factors]
  DevBuf<float> tmp;
  DevBuf<Cand> c1, c2;
  DevBuf<int32_t> idx;
};
Scratch& scratch() { static Scratch s; return s; }

bool topk_on_device(const mimic::SamplingParams& p, int64_t V) { return p.top_k > 0 && p.top_k <= kMaxK && p.top_k < V; }

}  // namespace

// Every row of one batch in a fixed number of launches whatever S is: one penalty gather/scatter
// pair over all histories, one argmax launch for the greedy rows (a block each), one top-k pair
// per distinct k (a grid row per sequence), one upload of the row tables, one sync; then each
// row's CPU tail with its own rng, in row order. Each row runs the very kernels sample_token ran
// alone, so the tokens are the same bit for bit.
void sample_tokens(float* logits, int64_t V, int S, const SampleRow* rq, int32_t* out) {
  if (S <= 0) return;
  Context& ctx = Context::get();
  Scratch& B = scratch();
  cudaStream_t st = ctx.stream;
  std::vector<int32_t> greedy, full;            // row indices
  std::vector<std::pair<int, std::vector<int32_t>>> groups;  // (k, rows)
  std::vector<int32_t> pen_row, pen_id;
  std::vector<float> pen_f((size_t)S, 1.f);
  for (int s = 0; s < S; ++s) {
    const mimic::SamplingParams& p = *rq[s].params;
    if (p.repetition_penalty != 1.f && rq[s].n_history > 0) {
      pen_f[(size_t)s] = p.repetition_penalty;
      for (int64_t i = 0; i < rq[s].n_history; ++i) { pen_row.push_back(s); pen_id.push_back(rq[s].history[i]); }
    }
    if (!(p.temperature > 0)) greedy.push_back(s);
    else if (topk_on_device(p, V)) {
      auto g = std::find_if(groups.begin(), groups.end(), [&](const auto& x) { return x.first == p.top_k; });
      if (g == groups.end()) groups.push_back({p.top_k, {s}});
      else g->second.push_back(s);
    } else full.push_back(s);
  }
  // one upload: the row tables, then the penalty entries and factors (floats as their bits)
  std::vector<int32_t> meta(greedy);
  for (const auto& g : groups) meta.insert(meta.end(), g.second.begin(), g.second.end());
  const size_t at_pen = meta.size(), n_pen = pen_row.size();
  meta.insert(meta.end(), pen_row.begin(), pen_row.end());
  meta.insert(meta.end(), pen_id.begin(), pen_id.end());
  if (n_pen) {
    const size_t f = meta.size();
    meta.resize(f + (size_t)S);
    std::memcpy(meta.data() + f, pen_f.data(), sizeof(float) * (size_t)S);
  }
  if (!meta.empty()) {
    B.meta.reserve(meta.size());
    MIMIC_CUDA_CHECK(cudaMemcpyAsync(B.meta.p, meta.data(), sizeof(int32_t) * meta.size(), cudaMemcpyHostToDevice, st));
  }
  if (n_pen) {
    B.tmp.reserve(n_pen);
    const int32_t* row_of = B.meta.p + at_pen;
    const int32_t* ids = row_of + n_pen;
    const float* pen = reinterpret_cast<const float*>(ids + n_pen);
    const int g = blocks_for((int64_t)n_pen, 256);
    penalty_gather<<<g, 256, 0, st>>>(B.tmp.p, logits, V, row_of, ids, pen, (int64_t)n_pen);
    penalty_scatter<<<g, 256, 0, st>>>(logits, V, B.tmp.p, row_of, ids, (int64_t)n_pen);
    MIMIC_CUDA_LAUNCHED();
  }
  std::vector<int32_t> greedy_ids(greedy.size());
  if (!greedy.empty()) {
    B.idx.reserve(greedy.size());
    argmax_kernel<<<(int)greedy.size(), kThreads, 0, st>>>(B.idx.p, logits, B.meta.p, V);
    MIMIC_CUDA_LAUNCHED();
    MIMIC_CUDA_CHECK(cudaMemcpyAsync(greedy_ids.data(), B.idx.p, sizeof(int32_t) * greedy.size(), cudaMemcpyDeviceToHost, st));
  }
  // top-k: stage 1 over kSlices slices of each row, stage 2 merges each row's kSlices·k candidates
  const int64_t per = (V + kSlices - 1) / kSlices;
  size_t n1 = 0, n2 = 0;
  for (const auto& g : groups) { n1 = std::max(n1, (size_t)kSlices * g.first * g.second.size()); n2 += (size_t)g.first * g.second.size(); }
  std::vector<Cand> top(n2);
  if (!groups.empty()) {
    B.c1.reserve(n1);
    B.c2.reserve(n2);
    size_t row_at = greedy.size(), c2_at = 0;
    for (const auto& g : groups) {
      const int k = g.first, n = (int)g.second.size();
      topk_kernel<<<dim3(kSlices, n), kThreads, per, st>>>(B.c1.p, logits, B.meta.p + row_at, V, nullptr, V, per, k);
      MIMIC_CUDA_LAUNCHED();
      const int64_t nc = (int64_t)kSlices * k;
      topk_kernel<<<dim3(1, n), kThreads, (size_t)nc, st>>>(B.c2.p + c2_at, nullptr, nullptr, V, B.c1.p, nc, nc, k);
      MIMIC_CUDA_LAUNCHED();
      row_at += (size_t)n;
      c2_at += (size_t)k * n;
    }
    MIMIC_CUDA_CHECK(cudaMemcpyAsync(top.data(), B.c2.p, sizeof(Cand) * n2, cudaMemcpyDeviceToHost, st));
  }
  std::vector<std::vector<float>> rows(full.size());
  for (size_t i = 0; i < full.size(); ++i) {  // top-k off or above kMaxK: the whole row, sampled on the CPU
    rows[i].resize((size_t)V);
    MIMIC_CUDA_CHECK(cudaMemcpyAsync(rows[i].data(), logits + (int64_t)full[i] * V, sizeof(float) * V,
                                     cudaMemcpyDeviceToHost, st));
  }
  ctx.sync();
  for (size_t i = 0; i < greedy.size(); ++i) out[greedy[i]] = greedy_ids[i];
  size_t c2_at = 0;
  for (const auto& g : groups) {
    for (int32_t s : g.second) {
      mimic::SamplingParams rest = *rq[s].params;
      rest.repetition_penalty = 1.f;
      rest.top_k = 0;  // already applied; the candidates are sorted, so the CPU tail keeps their order
      std::vector<float> vals;
      std::vector<int32_t> ids;
      for (int j = 0; j < g.first; ++j) {
        const Cand& c = top[c2_at + (size_t)j];
        if (c.id >= 0) { vals.push_back(c.v); ids.push_back(c.id); }
      }
      c2_at += (size_t)g.first;
      out[s] = ids[(size_t)cpu::sample_token(vals.data(), (int64_t)vals.size(), rest, nullptr, 0, *rq[s].rng)];
    }
  }
  for (size_t i = 0; i < full.size(); ++i) {
    mimic::SamplingParams rest = *rq[full[i]].params;
    rest.repetition_penalty = 1.f;
    out[full[i]] = cpu::sample_token(rows[i].data(), V, rest, nullptr, 0, *rq[full[i]].rng);
  }
}

int32_t sample_token(float* logits, int64_t V, const mimic::SamplingParams& p, const int32_t* history,
                     int64_t n_history, mimic::Rng& rng) {
  const SampleRow r{&p, history, n_history, &rng};
  int32_t id = 0;
  sample_tokens(logits, V, 1, &r, &id);
  return id;
}

}  // namespace mimic::cuda
