// decode_step — one batch-1 decode token (T = 1 with a KV cache) as ONE CUDA graph launch.
//
// The step reads every weight once (≈ 2.2 GB for the 3B, DESIGN.md) and does almost no arithmetic,
// so it is a bandwidth problem plus a launch problem: the eager path issued ~400 kernels and
// dequantized each NF4 projection to a bf16 scratch first. Here, per layer:
//   rmsnorm → [LoRA A of q,k,v] → gemv q,k,v (+ LoRA B in the epilogue) → rope + KV append
//   → attention over the cache → [LoRA A of o] → gemv o (+ residual) → rmsnorm → [LoRA A gate,up]
//   → gemv gate,up with silu(gate)·up in the epilogue → [LoRA A down] → gemv down (+ residual)
// (by default the rmsnorm before q/k/v and before gate/up runs inside their launch — the norm's scale
// applied after the products, gemv_tc.h's GemvNorm — and every LoRA A product inside its product's
// launch: 5 launches a layer with or without an adapter)
// then the final norm and the lm_head as a bf16 gemv into fp32 logits. Every kernel takes the token
// id and its position from device memory (2 ints copied in before the launch), so the captured
// graph replays unchanged step after step; the host does one small copy and one graph launch.
//
// The graph lives in the DeviceKV (its cache rows are baked in) and is rebuilt when the cache is
// re-initialised, the model differs, or the LoRA layout changed (DeviceModel::lora_version).
// Adapter VALUES may change between steps (training, push): the graph reads them live.
// MIMIC_DECODE_GRAPH=0 in the environment turns this path off (llama_forward runs eagerly).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/env.h"
#include "cuda/common.cuh"
#include "cuda/decode_kernels.cuh"
#include "cuda/decode_persist.h"
#include "cuda/gemv_tc.h"
#include "cuda/llama_cuda.h"
#include "cuda/pdl.h"

namespace mimic::cuda {

struct DecodeGraph {
  uint64_t model_uid = 0, lora_version = 0;
  bool pdl = false;        // recorded with programmatic dependent launches (pdl.h)
  bool rope_fold = false;  // RoPE + KV append in the q/k/v launch (gemv_tc_qkv_rope)
  bool norm_fold = false;  // the RMSNorms in the q/k/v and gate/up launches (GemvNorm)
  bool glu_split = false;  // gate/up as two launches of half the rows (MIMIC_DECODE_GLU_SPLIT=1)
  bool traced = false;     // recorded with pdl.h's marker kernels (decode_trace)
  bool persist_asked = false;  // MIMIC_DECODE_PERSIST=1 when recorded
  bool persist = false;        // the layers as decode_persist.cu's one kernel (ps)
  unsigned gen = 0;        // decode_graph_invalidate's generation when recorded
  const void* k0 = nullptr;
  int max_len = 0;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  int32_t* host = nullptr;  // pinned ring of (id, pos) pairs
  unsigned step = 0;
  DevBuf<int32_t> dev;      // (id, pos)
  DevBuf<float> x0, x1, h, lh, logits;
  DevBuf<bf16> xn, q, k, v, att, gate, up, act;
  PersistStep ps;
  ~DecodeGraph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    if (host) cudaFreeHost(host);
  }
};

namespace {

constexpr int kRing = 64;

// decode_trace's marker state: the stamps [2·i] resident, [2·i + 1] after the wait, of marker i, and
// the kernel each marker follows (recorded with the graph).
struct TraceState {
  bool on = false;
  DevBuf<unsigned long long> stamps;
  std::vector<const void*> kernels;
};
TraceState g_trace;
unsigned g_graph_gen = 0;  // bumped by decode_graph_invalidate

template <bool PDL>
__global__ void trace_marker_kernel(unsigned long long* stamps, int i) {
  unsigned long long t0, t1;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  if constexpr (PDL) { pdl_trigger(); pdl_wait(); }
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t1));
  if (threadIdx.x == 0) { stamps[2 * i] = t0; stamps[2 * i + 1] = t1; }
}

// The step is recorded with programmatic dependent launches (pdl.h) unless MIMIC_DECODE_PDL=0:
// round 13 (H200) 488 → 569 tok/s with gemv_tc, whose blocks stage their weights before the wait;
// decode_pdl_override(1|0|-1) forces it either way for the checks.
int g_pdl_override = -1;
bool g_pdl_broken = false;  // a capture with PDL failed once: plain launches from then on
bool pdl_wanted() {
  static const bool env = env_switch_on("MIMIC_DECODE_PDL");
  return !g_pdl_broken && (g_pdl_override >= 0 ? g_pdl_override == 1 : env);
}

// RoPE + the KV append go inside the q/k/v launch (gemv_tc_qkv_rope: a launch a layer fewer, the
// same bits — row_maths.cuh) unless MIMIC_DECODE_FUSE=0; decode_fuse_override(1|0|-1) forces it
// either way for the checks. Round 14 also folded the two RMSNorms into the products' prologue
// (every block normalizing the row itself): 3 % slower than rmsnorm_rows, removed; round 15 into
// the epilogue of o and down (the last block to finish, by a ticket, normalizing the row): 11 %
// slower (a fence in every block, then one block's serial norm), removed.
int g_fuse_override = -1;
bool fuse_wanted() {
  const bool env = env_switch_on("MIMIC_DECODE_FUSE");
  return g_fuse_override >= 0 ? g_fuse_override == 1 : env;
}

// The RMSNorm before q/k/v and before gate/up folded into those launches (gemv_tc.h, GemvNorm: the
// norm's scale applied after the products; two launches a layer fewer) unless MIMIC_DECODE_NORM_FOLD=0;
// where RoPE is folded too, and LoRA'd projections only with their A products in the same launch
// (LoraGemv::lil: the A blocks read the residual row as the products do — without it norm_a's launch
// writes xn for them). Not the unfolded step's bits (decode_norm_fold_override(0) for the checks that
// compare bit for bit). Round 19, H100: base step B/A 1.011-1.014; with LoRA r = 16 1.042.
int g_norm_fold_override = -1;
bool norm_fold_wanted() {
  const bool env = env_switch_on("MIMIC_DECODE_NORM_FOLD");
  return g_norm_fold_override >= 0 ? g_norm_fold_override == 1 : env;
}

// MIMIC_DECODE_GLU_SPLIT=1 (experimental, round 24; not yet run on a card): the folded gate/up launch of
// a layer without LoRA on gate/up as two launches of half the rows each. The 3B's gate/up is 512 tiles
// of 16 rows for ~264 resident blocks, so one launch runs one wave of blocks that take two tiles one
// after the other, the second's weights streamed only after the first's products (NOTES round 19:
// ~12 µs a layer above its weight bytes). Two launches of 256 tiles are one wave each, one tile a
// block, the second's blocks staging their weights (PDL) as the first's retire. Each row's sums are
// the same arithmetic in either: the same bits (batch row "decode graph 3B: gate/up split …").
bool glu_split_wanted() { return env_is("MIMIC_DECODE_GLU_SPLIT", "1"); }

bool graph_enabled() {
  return env_switch_on("MIMIC_DECODE_GRAPH") && gemv_enabled();
}

// Records the whole step on the (capturing) stream.
void record(DeviceModel& d, DeviceKV& kv, DecodeGraph& g) {
  const LlamaConfig& c = d.cfg;
  const int C = c.hidden_size, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
  const int R = g.lh.n ? (int)(g.lh.n / lora_h_floats(c.num_layers, 1, 1)) : 0;
  // LoRA A products of the given projections (h_i = x·A_iᵀ, fp32); B in the epilogues. begin_step's
  // memset goes before the embedding, a plain launch: no PDL edge to break
  LoraGemv lg{d, g.lh.p, (size_t)R};
  lg.lil = R && g.lh.n >= lora_h_floats(c.num_layers, 1, R) && lora_in_wanted();
  lg.begin_step();
  embedding_forward(g.x0.p, g.dev.p, d.embed.p, 1, C);
  float* x = g.x0.p;
  float* xo = g.x1.p;
  if (g.persist) decode_persist_launch(g.ps, Context::get().stream);  // every layer in one kernel: x0 in, x0 out
  // a folded norm where the projections after it carry no LoRA, or their A products run in the same
  // launch (lil: from the residual row, as the products; xn is never written)
  auto foldable = [&](const DLayer& Ly, std::initializer_list<int> which) {
    for (int i : which)
      if (LoraGemv::on(Ly.proj[i]) && !lg.lil) return false;
    return g.norm_fold && g.rope_fold;
  };
  for (int l = 0; l < c.num_layers && !g.persist; ++l) {
    const DLayer& Ly = d.layers[l];
    {
      GemvJob js[3];
      bf16* outs[3] = {g.q.p, g.k.p, g.v.p};
      for (int i = 0; i < 3; ++i) {
        js[i] = lg.with_b(base_job(Ly.proj[i]), Ly.proj[i], i);
        js[i].x = g.xn.p; js[i].out = outs[i];
      }
      GemvRope rope;
      rope.pos = g.dev.p + 1; rope.inv_freq = d.inv_freq.p; rope.head_dim = D; rope.kcache = kv.k[l].p; rope.vcache = kv.v[l].p;
      const GemvNorm nq{x, Ly.in_norm.p, c.rms_norm_eps};
      GemvJob jf[3] = {js[0], js[1], js[2]};  // (their A products in the launch, if any)
      lg.in_launch(Ly, l, {0, 1, 2}, jf);
      const bool folded = foldable(Ly, {0, 1, 2}) && gemv_tc_qkv_rope(jf, rope, &nq);
      if (!folded) lg.norm_a(Ly, {0, 1, 2}, g.xn.p, x, Ly.in_norm.p, 1, C, c.rms_norm_eps);
      if (!folded && (!g.rope_fold || !gemv_tc_qkv_rope(js, rope))) {
        gemv(js, 3, 1);
        // the same kernels as the batched step (decode_kernels.cuh), one row: pos = idpos[1]
        rope_append(g.q.p, g.k.p, g.v.p, nullptr, nullptr, kv.k[l].p, kv.v[l].p, g.dev.p + 1, d.inv_freq.p, 1, Hq, Hkv, D);
      }
    }
    decode_attn(g.att.p, g.q.p, nullptr, nullptr, kv.k[l].p, kv.v[l].p, g.dev.p + 1, 1, Hq, Hkv, D);
    {
      GemvJob j = base_job(Ly.proj[3]);
      j.x = g.att.p; j.out = g.h.p; j.out_f32 = true; j.res = x;   // h = x + o(att)
      lg.product(Ly, l, 3, j, 1);
    }
    {
      GemvJob js[2];
      js[0] = lg.with_b(base_job(Ly.proj[4]), Ly.proj[4], 4); js[0].x = g.xn.p; js[0].out = g.act.p;
      js[1] = lg.with_b(base_job(Ly.proj[5]), Ly.proj[5], 5); js[1].x = g.xn.p; js[1].out = g.up.p;
      // act = silu(gate)·up: no gate/up round trip, no swiglu launch
      const GemvNorm nu{g.h.p, Ly.post_norm.p, c.rms_norm_eps};
      GemvJob jf[2] = {js[0], js[1]};
      lg.in_launch(Ly, l, {4, 5}, jf);
      GemvJob lo[2], hi[2];  // (glu_split: rows [0, half) and [half, I))
      const int half = (jf[0].M / 2) & ~15;
      const bool split = g.glu_split && !LoraGemv::on(Ly.proj[4]) && !LoraGemv::on(Ly.proj[5]) &&
                         gemv_job_rows(lo[0], jf[0], 0, half) && gemv_job_rows(lo[1], jf[1], 0, half) &&
                         gemv_job_rows(hi[0], jf[0], half, jf[0].M - half) && gemv_job_rows(hi[1], jf[1], half, jf[1].M - half);
      if (split && foldable(Ly, {4, 5}) && gemv_tc(lo, 2, 1, true, &nu)) {
        if (!gemv_tc(hi, 2, 1, true, &nu)) {  // (the same shapes as lo's: not expected; the unfolded route for these rows)
          lg.norm_a(Ly, {4, 5}, g.xn.p, g.h.p, Ly.post_norm.p, 1, C, c.rms_norm_eps);
          gemv_glu(hi[0], hi[1], 1);
        }
      } else if (!foldable(Ly, {4, 5}) || !gemv_tc(jf, 2, 1, true, &nu)) {
        lg.norm_a(Ly, {4, 5}, g.xn.p, g.h.p, Ly.post_norm.p, 1, C, c.rms_norm_eps);
        gemv_glu(js[0], js[1], 1);
      }
    }
    {
      GemvJob j = base_job(Ly.proj[6]);
      j.x = g.act.p; j.out = xo; j.out_f32 = true; j.res = g.h.p;  // x' = h + down(act)
      lg.product(Ly, l, 6, j, 1);
    }
    std::swap(x, xo);
  }
  rmsnorm_rows(g.xn.p, x, d.final_norm.p, 1, C, c.rms_norm_eps);
  GemvJob j;
  j.W = d.head(); j.M = c.vocab_size; j.K = C; j.x = g.xn.p; j.out = g.logits.p; j.out_f32 = true;
  gemv(&j, 1, 1);
}

std::shared_ptr<DecodeGraph> build_with(DeviceModel& d, DeviceKV& kv, bool pdl);
std::shared_ptr<DecodeGraph> build(DeviceModel& d, DeviceKV& kv) {
  if (pdl_wanted()) {
    try {
      return build_with(d, kv, true);
    } catch (const mimic::Error&) {
      g_pdl_broken = true;  // e.g. a driver without PDL in graphs: the plain graph below
      cudaGetLastError();
    }
  }
  return build_with(d, kv, false);
}

std::shared_ptr<DecodeGraph> build_with(DeviceModel& d, DeviceKV& kv, bool pdl) {
  const LlamaConfig& c = d.cfg;
  auto g = std::make_shared<DecodeGraph>();
  g->model_uid = d.uid;
  g->lora_version = d.lora_version;
  g->pdl = pdl;
  g->rope_fold = fuse_wanted();
  g->norm_fold = norm_fold_wanted();
  g->glu_split = glu_split_wanted();
  g->k0 = kv.k[0].p;
  g->max_len = kv.max_len;
  const int64_t C = c.hidden_size, QD = (int64_t)c.num_heads * c.head_dim, KD = (int64_t)c.num_kv_heads * c.head_dim,
                I = c.intermediate_size;
  int R = 0;
  for (auto& l : d.layers)
    for (auto& p : l.proj) if (p.src) R = std::max(R, p.r);
  MIMIC_CUDA_CHECK(cudaMallocHost((void**)&g->host, sizeof(int32_t) * 2 * kRing));
  g->dev.alloc(2);
  g->x0.alloc(C); g->x1.alloc(C); g->h.alloc(C);
  if (R) g->lh.alloc(lora_h_floats(c.num_layers, 1, R));
  g->logits.alloc(c.vocab_size);
  g->xn.alloc(std::max(C, QD)); g->q.alloc(QD); g->k.alloc(KD); g->v.alloc(KD); g->att.alloc(QD);
  g->gate.alloc(I); g->up.alloc(I); g->act.alloc(I);
  g->persist_asked = decode_persist_wanted();
  if (g->persist_asked) {  // its tables are uploaded before the capture
    std::string why;
    g->persist = decode_persist_prepare(d, kv, PersistIO{g->x0.p, g->h.p, g->q.p, g->att.p, g->act.p, g->dev.p + 1}, g->ps, &why);
    if (!g->persist) std::fprintf(stderr, "mimic: MIMIC_DECODE_PERSIST=1 but the layers stay apart: %s\n", why.c_str());
  }
  cudaStream_t st = Context::get().stream;
  Context::get().sync();
  MIMIC_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  g_pdl_active = pdl;
  g->traced = g_trace.on;
  g->gen = g_graph_gen;
  if (g->traced) g_trace.kernels.clear();
  g_pdl_tracing = g->traced && pdl;
  try {
    record(d, kv, *g);
  } catch (...) {
    g_pdl_active = false;
    g_pdl_tracing = false;
    cudaGraph_t broken = nullptr;
    cudaStreamEndCapture(st, &broken);
    if (broken) cudaGraphDestroy(broken);
    cudaGetLastError();
    throw;
  }
  g_pdl_active = false;
  g_pdl_tracing = false;
  MIMIC_CUDA_CHECK(cudaStreamEndCapture(st, &g->graph));
  MIMIC_CUDA_CHECK(cudaGraphInstantiate(&g->exec, g->graph, 0));
  return g;
}

}  // namespace

void pdl_trace_after(const void* kernel, cudaStream_t st) {
  const int i = (int)g_trace.kernels.size();
  MIMIC_CHECK((size_t)(2 * i + 2) <= g_trace.stamps.n, "EINVAL", "decode trace: more than ", g_trace.stamps.n / 2, " launches");
  g_trace.kernels.push_back(kernel);
  g_pdl_tracing = false;  // the marker itself is not followed by one
  launch_pdl(trace_marker_kernel<false>, trace_marker_kernel<true>, dim3(1), dim3(32), 0, st, g_trace.stamps.p, i);
  g_pdl_tracing = true;
}

void decode_graph_invalidate() { ++g_graph_gen; }

void decode_trace(bool on) {
  g_trace.on = on;
  if (on && !g_trace.stamps.n) g_trace.stamps.alloc(2 * 4096);
}

std::vector<DecodeTraceRow> decode_trace_read() {
  std::vector<DecodeTraceRow> rows;
  const size_t n = g_trace.kernels.size();
  if (!n) return rows;
  std::vector<unsigned long long> t(2 * n);
  Context::get().sync();
  MIMIC_CUDA_CHECK(cudaMemcpy(t.data(), g_trace.stamps.p, sizeof(unsigned long long) * 2 * n, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < n; ++i) {
    const char* name = nullptr;
    if (cudaFuncGetName(&name, g_trace.kernels[i]) != cudaSuccess || !name) { cudaGetLastError(); name = "?"; }
    rows.push_back({name, (double)t[2 * i], (double)t[2 * i + 1]});
  }
  return rows;
}

namespace {
bool graph_usable(const DeviceModel& d, const DeviceKV& kv) {
  const LlamaConfig& c = d.cfg;
  return graph_enabled() && !kv.k.empty() && c.head_dim % 8 == 0 && c.head_dim <= 256 && c.num_heads % c.num_kv_heads == 0;
}
bool graph_current(const DeviceModel& d, const DeviceKV& kv) {
  const DecodeGraph* g = kv.graph.get();
  return g && g->model_uid == d.uid && g->lora_version == d.lora_version && g->k0 == kv.k[0].p &&
         g->max_len == kv.max_len && g->pdl == pdl_wanted() && g->rope_fold == fuse_wanted() && g->norm_fold == norm_fold_wanted() && g->glu_split == glu_split_wanted() && g->traced == g_trace.on &&
         g->persist_asked == decode_persist_wanted() &&
         g->gen == g_graph_gen;
}
}  // namespace

bool decode_step_ready(const DeviceModel& d, const DeviceKV& kv) { return graph_usable(d, kv) && graph_current(d, kv); }

float* decode_step(DeviceModel& d, int32_t id, DeviceKV& kv) {
  if (!graph_usable(d, kv)) return nullptr;
  DecodeGraph* g = kv.graph.get();
  if (!graph_current(d, kv)) {
    kv.graph.reset();
    kv.graph = build(d, kv);
    g = kv.graph.get();
  }
  cudaStream_t st = Context::get().stream;
  int32_t* slot = g->host + 2 * (g->step++ % kRing);
  slot[0] = id;
  slot[1] = kv.len;
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(g->dev.p, slot, sizeof(int32_t) * 2, cudaMemcpyHostToDevice, st));
  MIMIC_CUDA_CHECK(cudaGraphLaunch(g->exec, st));
  kv.len += 1;
  return g->logits.p;
}

std::string decode_persist_profile(const DeviceKV& kv) {
  const DecodeGraph* g = kv.graph.get();
  return g && g->persist ? decode_persist_profile(g->ps) : std::string();
}

int64_t decode_persist_error(const DeviceKV& kv) {
  const DecodeGraph* g = kv.graph.get();
  return g && g->persist ? (int64_t)decode_persist_error(g->ps) : -1;
}

void decode_pdl_override(int mode) { g_pdl_override = mode; }
void decode_fuse_override(int mode) { g_fuse_override = mode; }
void decode_norm_fold_override(int mode) { g_norm_fold_override = mode; }

}  // namespace mimic::cuda
