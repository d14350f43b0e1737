// decode_batch_cuda — one decoding step for S sequences of one model on the GPU (continuous
// batching; the CUDA twin of engine/decode_batch.cpp, which says why batching pays: decode is
// bound by reading the weights, and here every NF4/bf16 weight is read once per 16 rows instead
// of once per sequence).
//
//   rows s = 0 .. S−1, one new token each, row s at position pos_s = kv_s.len of its own cache
//   x = embed[ids]                                                          fp32 [S, C]
//   per layer:  xn = rmsnorm(x);  q, k, v = gemv(xn)   (one launch per 16 rows, LoRA B epilogue)
//               rope(q, k) at pos_s;  k, v → kv_s rows pos_s;  att_s = attention(q_s, kv_s)
//               h = x + o(att);  xn = rmsnorm(h);  act = silu(gate(xn))·up(xn);  x' = h + down(act)
//   logits[s] = rmsnorm(x[s]) · lm_headᵀ                                      fp32 [S, V]
//   token_s  = sample_token(logits[s], params_s, history_s, rng_s)
//
// Exactness: every kernel here is the one the single-sequence graph (decode_step.cu) launches
// (decode_kernels.cuh; gemv.cu's per-row sums are independent of the number of rows), so each
// row's arithmetic is identical to stepping that session alone: same logits bit for bit, same
// tokens, greedy or sampled.
//
// The step is one CUDA graph per batch size S, captured once per model/adapter layout: the ids,
// positions and every session's per-layer cache pointers sit in a device table that one
// host→device copy refreshes before each launch, so the same graph serves any set of sessions.
// Sequences bringing a chunk of prompt (n_ids > 1) take the per-session prefill path
// (llama_forward, cuBLAS GEMMs) before the batched rows: a prefill chunk is compute-shaped and
// would not share much with one-token rows in a GEMV. A step with a single one-token row takes
// that session's own decode graph (decode_step.cu): the same kernels, no table copy.
// MIMIC_BATCH_GRAPH=0 launches the batched step eagerly (same kernels, for checks).
#include <cstdlib>
#include <cstring>
#include <map>

#include "cuda/common.cuh"
#include "cuda/decode_kernels.cuh"
#include "cuda/llama_cuda.h"

namespace mimic::cuda {

struct BatchDecode {
  int cap = 0;                       // rows the buffers hold
  uint64_t lora_version = 0;
  int R = 0;                         // largest LoRA rank at capture
  DevBuf<uint8_t> meta;              // [k tables L·cap][v tables L·cap] pointers, then ids[cap], pos[cap]
  uint8_t* host = nullptr;           // pinned mirror of meta
  size_t meta_bytes = 0;
  DevBuf<float> x0, x1, h, lh, logits;
  DevBuf<bf16> xn, q, k, v, att, up, act;
  struct Graph {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
  };
  std::map<int, Graph> graphs;       // by S
  void clear_graphs() {
    for (auto& [s, g] : graphs) {
      if (g.exec) cudaGraphExecDestroy(g.exec);
      if (g.graph) cudaGraphDestroy(g.graph);
    }
    graphs.clear();
  }
  ~BatchDecode() {
    clear_graphs();
    if (host) cudaFreeHost(host);
  }
  bf16** ktab() const { return reinterpret_cast<bf16**>(meta.p); }
  int32_t* ids(int L) const { return reinterpret_cast<int32_t*>(meta.p + sizeof(void*) * 2 * L * cap); }
  int32_t* pos(int L) const { return ids(L) + cap; }
};

namespace {

bool batch_graph_enabled() {
  const char* e = std::getenv("MIMIC_BATCH_GRAPH");
  return !(e && std::strcmp(e, "0") == 0);
}

int max_lora_rank(const DeviceModel& d) {
  int R = 0;
  for (auto& l : d.layers)
    for (auto& p : l.proj) if (p.src) R = std::max(R, p.r);
  return R;
}

// Buffers for at least S rows (rounded up to kGemvMaxN); a new size drops the captured graphs.
BatchDecode& ensure(DeviceModel& d, int S) {
  if (!d.batch) d.batch = std::make_shared<BatchDecode>();
  BatchDecode& b = *d.batch;
  const int R = max_lora_rank(d);
  if (b.lora_version != d.lora_version) { b.clear_graphs(); b.lora_version = d.lora_version; }  // adapter layout moved
  if (S <= b.cap && R <= b.R) return b;
  b.clear_graphs();
  const LlamaConfig& c = d.cfg;
  const int cap = (S + kGemvMaxN - 1) / kGemvMaxN * kGemvMaxN, L = c.num_layers;
  const int64_t C = c.hidden_size, QD = (int64_t)c.num_heads * c.head_dim, KD = (int64_t)c.num_kv_heads * c.head_dim,
                I = c.intermediate_size;
  b.cap = cap;
  b.R = R;
  b.meta_bytes = sizeof(void*) * 2 * L * cap + sizeof(int32_t) * 2 * cap;
  if (b.host) { cudaFreeHost(b.host); b.host = nullptr; }
  MIMIC_CUDA_CHECK(cudaMallocHost((void**)&b.host, b.meta_bytes));
  b.meta.alloc(b.meta_bytes);
  b.x0.alloc(cap * C); b.x1.alloc(cap * C); b.h.alloc(cap * C);
  if (R) b.lh.alloc((size_t)7 * cap * R); else b.lh.release();
  b.logits.alloc((size_t)cap * c.vocab_size);
  b.xn.alloc(cap * std::max(C, QD)); b.q.alloc(cap * QD); b.k.alloc(cap * KD); b.v.alloc(cap * KD);
  b.att.alloc(cap * QD); b.up.alloc(cap * I); b.act.alloc(cap * I);
  return b;
}

// Records the step for S rows on the stream (captured, or run eagerly).
void record(DeviceModel& d, BatchDecode& b, int S) {
  const LlamaConfig& c = d.cfg;
  const int C = c.hidden_size, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim, L = c.num_layers;
  const int cap = b.cap, R = b.R;
  bf16** ktab = b.ktab();
  bf16** vtab = ktab + (size_t)L * cap;
  const int32_t* pos = b.pos(L);
  embedding_forward(b.x0.p, b.ids(L), d.embed.p, S, C);
  float* x = b.x0.p;
  float* xo = b.x1.p;
  auto lora = [&](const DLinear& P) { return P.src && P.r > 0; };
  float* lh = b.lh.p;
  auto lora_a = [&](const DLayer& Ly, std::initializer_list<int> which, const bf16* xin) {
    GemvJob js[kGemvMaxJobs];
    int n = 0;
    for (int i : which) {
      const DLinear& P = Ly.proj[i];
      if (!lora(P)) continue;
      GemvJob j;
      j.W = d.lb.p + P.offA; j.M = P.r; j.K = P.K; j.x = xin;
      j.out = lh + (size_t)i * cap * R; j.out_f32 = true;
      js[n++] = j;
    }
    if (n) gemv_rows(js, n, S);
  };
  auto with_b = [&](GemvJob j, const DLinear& P, int i) {
    if (lora(P)) { j.lora_B = d.lb.p + P.offB; j.lora_h = lh + (size_t)i * cap * R; j.r = P.r; j.scale = P.scale; }
    return j;
  };
  for (int l = 0; l < L; ++l) {
    const DLayer& Ly = d.layers[l];
    rmsnorm_rows(b.xn.p, x, Ly.in_norm.p, S, C, c.rms_norm_eps);
    lora_a(Ly, {0, 1, 2}, b.xn.p);
    {
      GemvJob js[3];
      bf16* outs[3] = {b.q.p, b.k.p, b.v.p};
      for (int i = 0; i < 3; ++i) {
        js[i] = with_b(base_job(Ly.proj[i]), Ly.proj[i], i);
        js[i].x = b.xn.p; js[i].out = outs[i];
      }
      gemv_rows(js, 3, S);
    }
    rope_append(b.q.p, b.k.p, b.v.p, ktab + (size_t)l * cap, vtab + (size_t)l * cap, nullptr, nullptr, pos,
                d.inv_freq.p, S, Hq, Hkv, D);
    decode_attn(b.att.p, b.q.p, ktab + (size_t)l * cap, vtab + (size_t)l * cap, nullptr, nullptr, pos, S, Hq, Hkv, D);
    lora_a(Ly, {3}, b.att.p);
    {
      GemvJob j = with_b(base_job(Ly.proj[3]), Ly.proj[3], 3);
      j.x = b.att.p; j.out = b.h.p; j.out_f32 = true; j.res = x;   // h = x + o(att)
      gemv_rows(&j, 1, S);
    }
    rmsnorm_rows(b.xn.p, b.h.p, Ly.post_norm.p, S, C, c.rms_norm_eps);
    lora_a(Ly, {4, 5}, b.xn.p);
    {
      GemvJob js[2];
      js[0] = with_b(base_job(Ly.proj[4]), Ly.proj[4], 4); js[0].x = b.xn.p; js[0].out = b.act.p;
      js[1] = with_b(base_job(Ly.proj[5]), Ly.proj[5], 5); js[1].x = b.xn.p; js[1].out = b.up.p;
      gemv_rows(js, 2, S, /*glu=*/true);  // act = silu(gate)·up
    }
    lora_a(Ly, {6}, b.act.p);
    {
      GemvJob j = with_b(base_job(Ly.proj[6]), Ly.proj[6], 6);
      j.x = b.act.p; j.out = xo; j.out_f32 = true; j.res = b.h.p;  // x' = h + down(act)
      gemv_rows(&j, 1, S);
    }
    std::swap(x, xo);
  }
  rmsnorm_rows(b.xn.p, x, d.final_norm.p, S, C, c.rms_norm_eps);
  GemvJob j;
  j.W = d.head(); j.M = c.vocab_size; j.K = C; j.x = b.xn.p; j.out = b.logits.p; j.out_f32 = true;
  gemv_rows(&j, 1, S);
}

bool graphs_broken = false;  // a capture failed once in this process: run eagerly from then on

}  // namespace

const float* decode_batch_logits(DeviceModel& d, DeviceKV* const* kvs, const int32_t* ids, int S) {
  const LlamaConfig& c = d.cfg;
  MIMIC_CHECK(S >= 1, "EINVAL", "a batched decoding step needs at least one sequence");
  MIMIC_CHECK(gemv_enabled() && c.head_dim % 8 == 0 && c.head_dim <= 256 && c.num_heads % c.num_kv_heads == 0,
              "ENOTSUP", "batched decoding on the GPU needs the fused GEMV (MIMIC_NF4_GEMV unset) and head_dim % 8 == 0, <= 256");
  BatchDecode& b = ensure(d, S);
  const int L = c.num_layers, cap = b.cap;
  // the table: per layer the S sessions' K then V cache pointers, then ids and positions
  bf16** kt = reinterpret_cast<bf16**>(b.host);
  bf16** vt = kt + (size_t)L * cap;
  int32_t* hid = reinterpret_cast<int32_t*>(b.host + sizeof(void*) * 2 * L * cap);
  int32_t* hpos = hid + cap;
  for (int s = 0; s < S; ++s) {
    DeviceKV& kv = *kvs[s];
    for (int l = 0; l < L; ++l) {
      kt[(size_t)l * cap + s] = kv.k[l].p;
      vt[(size_t)l * cap + s] = kv.v[l].p;
    }
    hid[s] = ids[s];
    hpos[s] = kv.len;
  }
  cudaStream_t st = Context::get().stream;
  // the previous step's copy has finished: every step ends with a sync (sampling reads back)
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(b.meta.p, b.host, b.meta_bytes, cudaMemcpyHostToDevice, st));
  bool ran = false;
  if (batch_graph_enabled() && !graphs_broken) {
    auto it = b.graphs.find(S);
    if (it == b.graphs.end()) {
      BatchDecode::Graph g;
      bool ok = cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
      if (ok) {
        try {
          record(d, b, S);
        } catch (...) {
          ok = false;
        }
        cudaGraph_t gr = nullptr;
        if (cudaStreamEndCapture(st, &gr) != cudaSuccess || !ok) {
          ok = false;
          if (gr) cudaGraphDestroy(gr);
        } else {
          g.graph = gr;
          ok = cudaGraphInstantiate(&g.exec, g.graph, 0) == cudaSuccess;
          if (!ok) cudaGraphDestroy(g.graph);
        }
      }
      cudaGetLastError();
      if (ok) it = b.graphs.emplace(S, g).first;
      else graphs_broken = true;  // eager below; the meta copy above is still queued
    }
    if (!graphs_broken) {
      MIMIC_CUDA_CHECK(cudaGraphLaunch(it->second.exec, st));
      ran = true;
    }
  }
  if (!ran) record(d, b, S);
  for (int s = 0; s < S; ++s) kvs[s]->len += 1;
  return b.logits.p;
}

void decode_batch(DeviceModel& d, const DeviceDecodeSeq* seqs, int S, int32_t* tokens) {
  const int64_t V = d.cfg.vocab_size;
  std::vector<int> one;  // sequences with a single new token
  for (int s = 0; s < S; ++s) {
    const DeviceDecodeSeq& q = seqs[s];
    if (q.n_ids == 1) { one.push_back(s); continue; }
    // a chunk of prompt: the per-session prefill path, sampled at once (its logits row lives in
    // the shared workspace until the next forward)
    float* last = llama_forward(d, q.ids, q.n_ids, q.kv, nullptr, 1);
    tokens[s] = sample_token(last, V, q.params, q.history, q.n_history, *q.rng);
  }
  if (one.empty()) return;
  if (one.size() == 1) {  // the session's own decode graph: the same kernels, no table
    const DeviceDecodeSeq& q = seqs[one[0]];
    float* last = llama_forward(d, q.ids, 1, q.kv, nullptr, 1);
    tokens[one[0]] = sample_token(last, V, q.params, q.history, q.n_history, *q.rng);
    return;
  }
  std::vector<DeviceKV*> kvs(one.size());
  std::vector<int32_t> ids(one.size());
  for (size_t i = 0; i < one.size(); ++i) { kvs[i] = seqs[one[i]].kv; ids[i] = seqs[one[i]].ids[0]; }
  const float* logits = decode_batch_logits(d, kvs.data(), ids.data(), (int)one.size());
  for (size_t i = 0; i < one.size(); ++i) {
    const DeviceDecodeSeq& q = seqs[one[i]];
    // sample_token edits the row in place (penalty): each row is its own
    tokens[one[i]] = sample_token(const_cast<float*>(logits) + (size_t)i * V, V, q.params, q.history, q.n_history, *q.rng);
  }
}

}  // namespace mimic::cuda
