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
//
// Wide steps (S >= kBatchGemmMinRows = 9 one-token rows) take another route for the projections:
// nf4_gemm_small (tensor cores, the NF4 codes read once for all S rows and dequantized in registers to
// nf4_dequantize's bf16 values; S <= 64), else each weight dequantized ONCE into a bf16 scratch
// [M, K] and one cuBLAS GEMM for all S rows (MIMIC_NF4_GEMM_SMALL=0, or S > 64); LoRA as two small
// GEMMs, lm_head one bf16 GEMM. The fused GEMV's cost grows with its rows (~1.5 ms a row on the 3B
// step), the fused GEMM's hardly (round 8: 3.4 ms forward at S = 2..8, 4.4 at 32). Rounding the
// dequantized weights to bf16 makes these rows differ from the GEMV's in the last bits: tokens equal
// a session alone where the top-2 logit margin allows, not bit for bit. Steps of fewer rows keep the
// GEMV and stay bit-exact. Its graph is captured on the second step of a width (the first runs
// eagerly, so cuBLAS has picked and loaded its kernels); a capture that fails sends that route eager
// for the rest of the process.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <type_traits>

#include "core/env.h"
#include "cuda/common.cuh"
#include "cuda/decode_kernels.cuh"
#include "cuda/llama_cuda.h"

namespace mimic::cuda {

// Rows from which a batched step runs the GEMM route (nf4_gemm_small) instead of the fused GEMV.
// Measured (bench/NOTES.md, H200, 3B NF4, one call each): the fused-GEMM forward is nearly flat,
// 3.43 / 3.45 / 3.48 / 4.41 ms at S = 2 / 4 / 8 / 32 (round 8). gemv.cu's forward grew ~1.1-1.5 ms a
// row (crossing at S ≈ 2: the old threshold 3); gemv_tc.cu's tensor-core GEMV costs about the same
// for 1-8 rows (one MMA n-tile): 1.96 ms at S = 1, 2.62 at S = 8 (round 13), so S <= 8 stays on the
// GEMV — also bit-exact with stepping each session alone. MIMIC_BATCH_GEMM_MIN=<rows> overrides
// (the checks force either route with it).
constexpr int kBatchGemmMinRows = 9;

int batch_gemm_min_rows() {
  const char* e = std::getenv("MIMIC_BATCH_GEMM_MIN");
  if (e && *e) {
    const int v = std::atoi(e);
    if (v >= 1) return v;
  }
  return kBatchGemmMinRows;
}

struct BatchDecode {
  int cap = 0;                       // rows the buffers hold
  uint64_t lora_version = 0;
  int R = 0;                         // largest LoRA rank at capture
  DevBuf<uint8_t> meta;              // [k tables L·cap][v tables L·cap] pointers, then ids[cap], pos[cap]
  uint8_t* host = nullptr;           // pinned mirror of meta
  size_t meta_bytes = 0;
  DevBuf<float> x0, x1, h, lh, logits;
  DevBuf<bf16> xn, q, k, v, att, up, act;
  // the GEMM route (S >= kBatchGemmMinRows): one projection's bf16 weight, fp32 gate/up, bf16 LoRA h
  DevBuf<bf16> wdq, lh16;
  DevBuf<float> gate_f, up_f;
  DevBuf<float> gws;                 // nf4_gemm_small's K-slice partials
  int gemm_cap = 0, gemm_R = -1;
  struct Graph {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
  };
  std::map<int, Graph> graphs;       // by graph_key(S, route)
  static int graph_key(int S, bool gemm) { return 2 * S + (gemm ? 1 : 0); }
  static bool is_gemm_key(int key) { return key & 1; }
  std::map<int, int> seen;           // GEMM route: steps run per width (captured from the second on)
  // The last batched forward's ticket (decode_batch_ticket): logits hold its rows until the next one.
  uint64_t ticket = 0;
  int ticket_rows = 0;
  // Recorded after each copy of `host` to `meta`: a step run ahead (decode_batch_ahead) returns before
  // its copy ran, so the next step waits for this before it rewrites the pinned table.
  cudaEvent_t meta_copied = nullptr;
  void wait_meta() const {
    if (meta_copied) MIMIC_CUDA_CHECK(cudaEventSynchronize(meta_copied));
  }
  void clear_graphs() {
    for (auto& [s, g] : graphs) {
      if (g.exec) cudaGraphExecDestroy(g.exec);
      if (g.graph) cudaGraphDestroy(g.graph);
    }
    graphs.clear();
    seen.clear();
  }
  ~BatchDecode() {
    clear_graphs();
    if (host) cudaFreeHost(host);
    if (meta_copied) cudaEventDestroy(meta_copied);
  }
  bf16** ktab() const { return reinterpret_cast<bf16**>(meta.p); }
  int32_t* ids(int L) const { return reinterpret_cast<int32_t*>(meta.p + sizeof(void*) * 2 * L * cap); }
  int32_t* pos(int L) const { return ids(L) + cap; }
};

namespace {

// What both recordings of a step (record, record_gemm) start with: the per-layer cache tables and
// positions refreshed before each launch, and the S rows' embeddings in x (xo: the other residual
// buffer, swapped with x after each layer).
struct StepStart {
  bf16** ktab;
  bf16** vtab;
  const int32_t* pos;
  float* x;
  float* xo;
  StepStart(const DeviceModel& d, BatchDecode& b, int S)
      : ktab(b.ktab()), vtab(ktab + (size_t)d.cfg.num_layers * b.cap), pos(b.pos(d.cfg.num_layers)), x(b.x0.p),
        xo(b.x1.p) {
    embedding_forward(x, b.ids(d.cfg.num_layers), d.embed.p, S, d.cfg.hidden_size);
  }
};

bool batch_graph_enabled() { return env_switch_on("MIMIC_BATCH_GRAPH"); }

int max_lora_rank(const DeviceModel& d) {
  int R = 0;
  for (auto& l : d.layers)
    for (auto& p : l.proj) if (p.src) R = std::max(R, p.r);
  return R;
}

// Buffers for at least S rows (rounded up to kGemvMaxN); a new size drops the captured graphs.
BatchDecode& ensure_rows(DeviceModel& d, int S);
BatchDecode& ensure(DeviceModel& d, int S, bool gemm) {
  BatchDecode& b = ensure_rows(d, S);
  if (gemm && (b.gemm_cap != b.cap || b.gemm_R != b.R)) {  // fresh buffers: no GEMM graph refers to the old ones
    const LlamaConfig& c = d.cfg;
    size_t mk = 0;
    for (auto& l : d.layers)
      for (auto& p : l.proj)
        if (p.is_nf4) mk = std::max(mk, (size_t)p.M * p.K);
    if (mk) b.wdq.reserve(mk);
    size_t ws = 0;
    for (auto& l : d.layers)
      for (auto& p : l.proj)
        if (p.is_nf4) ws = std::max(ws, nf4_gemm_small_workspace(std::min(b.cap, kNF4GemmSmallMaxS), p.M, p.K));
    if (ws) b.gws.alloc(ws / sizeof(float)); else b.gws.release();
    b.gate_f.alloc((size_t)b.cap * c.intermediate_size);
    b.up_f.alloc((size_t)b.cap * c.intermediate_size);
    if (b.R) b.lh16.alloc((size_t)b.cap * b.R); else b.lh16.release();
    b.gemm_cap = b.cap;
    b.gemm_R = b.R;
    for (auto it = b.graphs.begin(); it != b.graphs.end();) {
      if (BatchDecode::is_gemm_key(it->first)) {
        if (it->second.exec) cudaGraphExecDestroy(it->second.exec);
        if (it->second.graph) cudaGraphDestroy(it->second.graph);
        it = b.graphs.erase(it);
      } else {
        ++it;
      }
    }
  }
  return b;
}
BatchDecode& ensure_rows(DeviceModel& d, int S) {
  if (!d.batch) d.batch = std::make_shared<BatchDecode>();
  BatchDecode& b = *d.batch;
  const int R = max_lora_rank(d);
  if (b.lora_version != d.lora_version) { b.clear_graphs(); b.lora_version = d.lora_version; }  // adapter layout moved
  if (S <= b.cap && R <= b.R) return b;
  b.clear_graphs();
  b.gemm_cap = 0;  // the GEMM route's buffers follow cap and R
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
  if (R) b.lh.alloc(lora_h_floats(d.cfg.num_layers, cap, R)); else b.lh.release();
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
  LoraGemv lg{d, b.lh.p, (size_t)cap * R};
  lg.lil = R > 0 && lora_in_wanted();
  lg.begin_step();  // (a memset: before StepStart's embedding, a plain launch — no PDL edge to break)
  StepStart st0(d, b, S);
  auto& [ktab, vtab, pos, x, xo] = st0;
  for (int l = 0; l < L; ++l) {
    const DLayer& Ly = d.layers[l];
    lg.norm_a(Ly, {0, 1, 2}, b.xn.p, x, Ly.in_norm.p, S, C, c.rms_norm_eps);
    {
      GemvJob js[3];
      bf16* outs[3] = {b.q.p, b.k.p, b.v.p};
      for (int i = 0; i < 3; ++i) {
        js[i] = lg.with_b(base_job(Ly.proj[i]), Ly.proj[i], i);
        js[i].x = b.xn.p; js[i].out = outs[i];
      }
      gemv_rows(js, 3, S);
    }
    rope_append(b.q.p, b.k.p, b.v.p, ktab + (size_t)l * cap, vtab + (size_t)l * cap, nullptr, nullptr, pos,
                d.inv_freq.p, S, Hq, Hkv, D);
    decode_attn(b.att.p, b.q.p, ktab + (size_t)l * cap, vtab + (size_t)l * cap, nullptr, nullptr, pos, S, Hq, Hkv, D);
    {
      GemvJob j = base_job(Ly.proj[3]);
      j.x = b.att.p; j.out = b.h.p; j.out_f32 = true; j.res = x;   // h = x + o(att)
      lg.product(Ly, l, 3, j, S);
    }
    lg.norm_a(Ly, {4, 5}, b.xn.p, b.h.p, Ly.post_norm.p, S, C, c.rms_norm_eps);
    {
      GemvJob js[2];
      js[0] = lg.with_b(base_job(Ly.proj[4]), Ly.proj[4], 4); js[0].x = b.xn.p; js[0].out = b.act.p;
      js[1] = lg.with_b(base_job(Ly.proj[5]), Ly.proj[5], 5); js[1].x = b.xn.p; js[1].out = b.up.p;
      gemv_rows(js, 2, S, /*glu=*/true);  // act = silu(gate)·up
    }
    {
      GemvJob j = base_job(Ly.proj[6]);
      j.x = b.act.p; j.out = xo; j.out_f32 = true; j.res = b.h.p;  // x' = h + down(act)
      lg.product(Ly, l, 6, j, S);
    }
    std::swap(x, xo);
  }
  rmsnorm_rows(b.xn.p, x, d.final_norm.p, S, C, c.rms_norm_eps);
  GemvJob j;
  j.W = d.head(); j.M = c.vocab_size; j.K = C; j.x = b.xn.p; j.out = b.logits.p; j.out_f32 = true;
  gemv_rows(&j, 1, S);
}

// act = bf16(silu(gate)·up), gate/up fp32 (as gemv_glu's epilogue: no bf16 rounding of gate/up)
__global__ void glu_f32_kernel(bf16* __restrict__ act, const float* __restrict__ gate, const float* __restrict__ up,
                               int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float g = gate[i], sg = 1.f / (1.f + __expf(-g));
    act[i] = __float2bfloat16(g * sg * up[i]);
  }
}

// The step for S rows with every projection as dequantize-once + cuBLAS GEMM (S >= kBatchGemmMinRows).
// Same norms, rope, cache append and attention kernels as record(); only the products differ.
void record_gemm(DeviceModel& d, BatchDecode& b, int S) {
  const LlamaConfig& c = d.cfg;
  const int C = c.hidden_size, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim, L = c.num_layers;
  const int64_t I = c.intermediate_size;
  const int cap = b.cap;
  cudaStream_t st = Context::get().stream;
  StepStart st0(d, b, S);
  auto& [ktab, vtab, pos, x, xo] = st0;
  // y = β·y + x·Wᵀ (+ s·(x·Aᵀ)·Bᵀ): NF4 through nf4_gemm_small (the codes read once, dequantized in
  // registers) where it applies, else dequantized into b.wdq for one cuBLAS GEMM
  const bool small = nf4_gemm_small_enabled() && S <= kNF4GemmSmallMaxS;
  auto proj = [&](const DLinear& P, const bf16* xin, auto* y, float beta) {
    using TO = std::remove_pointer_t<decltype(y)>;
    if (!P.is_nf4) matmul_forward<TO>(y, xin, P.W.p, S, P.K, P.M, 1.f, beta);
    else if (!(small && nf4_gemm_small<TO>(y, xin, P.nf4, S, 1.f, beta, b.gws.p, b.gws.bytes()))) {
      nf4_dequantize(b.wdq.p, P.nf4);
      matmul_forward<TO>(y, xin, b.wdq.p, S, P.K, P.M, 1.f, beta);
    }
    if (P.src && P.r > 0) {
      matmul_forward<bf16>(b.lh16.p, xin, d.lb.p + P.offA, S, P.K, P.r, 1.f, 0.f);
      matmul_forward<TO>(y, b.lh16.p, d.lb.p + P.offB, S, P.r, P.M, P.scale, 1.f);
    }
  };
  for (int l = 0; l < L; ++l) {
    const DLayer& Ly = d.layers[l];
    rmsnorm_rows(b.xn.p, x, Ly.in_norm.p, S, C, c.rms_norm_eps);
    proj(Ly.proj[0], b.xn.p, b.q.p, 0.f);
    proj(Ly.proj[1], b.xn.p, b.k.p, 0.f);
    proj(Ly.proj[2], b.xn.p, b.v.p, 0.f);
    rope_append(b.q.p, b.k.p, b.v.p, ktab + (size_t)l * cap, vtab + (size_t)l * cap, nullptr, nullptr, pos,
                d.inv_freq.p, S, Hq, Hkv, D);
    decode_attn(b.att.p, b.q.p, ktab + (size_t)l * cap, vtab + (size_t)l * cap, nullptr, nullptr, pos, S, Hq, Hkv, D);
    MIMIC_CUDA_CHECK(cudaMemcpyAsync(b.h.p, x, sizeof(float) * S * C, cudaMemcpyDeviceToDevice, st));
    proj(Ly.proj[3], b.att.p, b.h.p, 1.f);  // h = x + o(att)
    rmsnorm_rows(b.xn.p, b.h.p, Ly.post_norm.p, S, C, c.rms_norm_eps);
    proj(Ly.proj[4], b.xn.p, b.gate_f.p, 0.f);
    proj(Ly.proj[5], b.xn.p, b.up_f.p, 0.f);
    const int64_t n = (int64_t)S * I;
    glu_f32_kernel<<<(unsigned)std::min<int64_t>((n + 255) / 256, 4096), 256, 0, st>>>(b.act.p, b.gate_f.p, b.up_f.p, n);
    MIMIC_CUDA_LAUNCHED();
    MIMIC_CUDA_CHECK(cudaMemcpyAsync(xo, b.h.p, sizeof(float) * S * C, cudaMemcpyDeviceToDevice, st));
    proj(Ly.proj[6], b.act.p, xo, 1.f);  // x' = h + down(act)
    std::swap(x, xo);
  }
  rmsnorm_rows(b.xn.p, x, d.final_norm.p, S, C, c.rms_norm_eps);
  matmul_forward<float>(b.logits.p, b.xn.p, d.head(), S, C, c.vocab_size, 1.f, 0.f);
}

bool graphs_broken[2] = {false, false};  // a capture of that route (GEMV, GEMM) failed once in this process: eager from then on

uint64_t next_ticket() {
  static std::atomic<uint64_t> n{0};
  return ++n;
}

}  // namespace

const float* decode_batch_logits(DeviceModel& d, DeviceKV* const* kvs, const int32_t* ids, int S) {
  const LlamaConfig& c = d.cfg;
  MIMIC_CHECK(S >= 1, "EINVAL", "a batched decoding step needs at least one sequence");
  MIMIC_CHECK(gemv_enabled() && c.head_dim % 8 == 0 && c.head_dim <= 256 && c.num_heads % c.num_kv_heads == 0,
              "ENOTSUP", "batched decoding on the GPU needs the fused GEMV (MIMIC_NF4_GEMV unset) and head_dim % 8 == 0, <= 256");
  const bool gemm = S >= batch_gemm_min_rows();
  if (d.batch) d.batch->wait_meta();  // a step run ahead may not have copied its table yet
  BatchDecode& b = ensure(d, S, gemm);
  b.ticket = next_ticket();  // from here on the logits are this step's
  b.ticket_rows = S;
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
  // the previous step's copy has finished (wait_meta above)
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(b.meta.p, b.host, b.meta_bytes, cudaMemcpyHostToDevice, st));
  if (!b.meta_copied) MIMIC_CUDA_CHECK(cudaEventCreateWithFlags(&b.meta_copied, cudaEventDisableTiming));
  MIMIC_CUDA_CHECK(cudaEventRecord(b.meta_copied, st));
  bool ran = false;
  const int key = BatchDecode::graph_key(S, gemm);
  // the GEMM route's first step at a width runs eagerly (cuBLAS picks and loads its kernels outside a capture)
  const bool warm = !gemm || b.seen[S]++ > 0;
  if (batch_graph_enabled() && !graphs_broken[gemm] && warm) {
    auto it = b.graphs.find(key);
    if (it == b.graphs.end()) {
      BatchDecode::Graph g;
      bool ok = cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
      if (ok) {
        try {
          if (gemm) record_gemm(d, b, S);
          else record(d, b, S);
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
      if (ok) it = b.graphs.emplace(key, g).first;
      else graphs_broken[gemm] = true;  // eager below; the meta copy above is still queued
    }
    if (!graphs_broken[gemm]) {
      MIMIC_CUDA_CHECK(cudaGraphLaunch(it->second.exec, st));
      ran = true;
    }
  }
  if (!ran) {
    if (gemm) record_gemm(d, b, S);
    else record(d, b, S);
  }
  for (int s = 0; s < S; ++s) kvs[s]->len += 1;
  return b.logits.p;
}

uint64_t decode_batch_ticket(const DeviceModel& d) { return d.batch ? d.batch->ticket : 0; }

uint64_t decode_batch_ahead(DeviceModel& d, DeviceKV* const* kvs, const int32_t* ids, int S) {
  if (S < 2 || !d.batch || !batch_graph_enabled()) return 0;
  const bool gemm = S >= batch_gemm_min_rows();
  BatchDecode& b = *d.batch;
  // only a graph already captured at this width, on buffers that hold S rows: a capture (or the GEMM
  // route's eager first step) here would hold back the tokens the caller is about to return
  if (graphs_broken[gemm] || S > b.cap || (gemm && b.gemm_cap != b.cap) || b.lora_version != d.lora_version ||
      b.graphs.find(BatchDecode::graph_key(S, gemm)) == b.graphs.end())
    return 0;
  for (int s = 0; s < S; ++s)
    if (kvs[s]->len >= kvs[s]->max_len) return 0;
  decode_batch_logits(d, kvs, ids, S);
  for (int s = 0; s < S; ++s) kvs[s]->len -= 1;  // not taken yet: decode_batch takes a row when its token comes back
  return b.ticket;
}

namespace {

// The one-token rows the step run ahead already computed (its ticket still the last batched
// forward): sampled from its logits, their caches take the row it wrote; taken[s] marks them. Rows
// of that step this batch does not bring are sampled as an argmax and dropped (no rng, no history:
// nobody's state). Called before any forward of the batch, which would replace those logits.
void take_ahead_rows(DeviceModel& d, const DeviceDecodeSeq* seqs, int S, uint64_t ahead, int32_t* tokens,
                     std::vector<char>& taken) {
  if (!ahead || !d.batch || d.batch->ticket != ahead) return;
  BatchDecode& b = *d.batch;
  const int R = b.ticket_rows;
  SamplingParams argmax;
  argmax.temperature = 0.f;
  Rng unused(0);
  std::vector<SampleRow> rows((size_t)R, SampleRow{&argmax, nullptr, 0, &unused});
  std::vector<int> of((size_t)R, -1);  // the batch row that takes each row of the step run ahead
  for (int s = 0; s < S; ++s) {
    const DeviceDecodeSeq& q = seqs[s];
    if (q.n_ids == 1 && q.ahead_row >= 0 && q.ahead_row < R && of[(size_t)q.ahead_row] < 0) {
      of[(size_t)q.ahead_row] = s;
      rows[(size_t)q.ahead_row] = SampleRow{&q.params, q.history, q.n_history, q.rng};
    }
  }
  b.ticket = 0;  // from here on its rows are sampled (the penalty edits them in place): not again
  if (std::none_of(of.begin(), of.end(), [](int s) { return s >= 0; })) return;
  std::vector<int32_t> picked((size_t)R);
  sample_tokens(b.logits.p, d.cfg.vocab_size, R, rows.data(), picked.data());
  for (int r = 0; r < R; ++r)
    if (const int s = of[(size_t)r]; s >= 0) {
      tokens[s] = picked[(size_t)r];
      seqs[s].kv->len += 1;  // the row the step run ahead wrote at this position
      taken[(size_t)s] = 1;
    }
}

}  // namespace

void decode_batch(DeviceModel& d, const DeviceDecodeSeq* seqs, int S, int32_t* tokens, uint64_t ahead) {
  const int64_t V = d.cfg.vocab_size;
  std::vector<char> taken((size_t)S, 0);
  take_ahead_rows(d, seqs, S, ahead, tokens, taken);
  std::vector<int> one;  // sequences with a single new token
  for (int s = 0; s < S; ++s) {
    if (taken[(size_t)s]) continue;
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
  // all rows in one pass of launches (round 7: one launch set + sync per row cost 2.2 ms at S = 32);
  // the penalty edits the rows in place, each its own
  std::vector<SampleRow> rows(one.size());
  std::vector<int32_t> picked(one.size());
  for (size_t i = 0; i < one.size(); ++i) {
    const DeviceDecodeSeq& q = seqs[one[i]];
    rows[i] = SampleRow{&q.params, q.history, q.n_history, q.rng};
  }
  sample_tokens(const_cast<float*>(logits), V, (int)one.size(), rows.data(), picked.data());
  for (size_t i = 0; i < one.size(); ++i) tokens[one[i]] = picked[i];
}

}  // namespace mimic::cuda
