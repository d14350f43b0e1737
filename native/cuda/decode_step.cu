// decode_step — one batch-1 decode token (T = 1 with a KV cache) as ONE CUDA graph launch.
//
// The step reads every weight once (≈ 2.2 GB for the 3B, DESIGN.md) and does almost no arithmetic,
// so it is a bandwidth problem plus a launch problem: the eager path issued ~400 kernels and
// dequantized each NF4 projection to a bf16 scratch first. Here, per layer:
//   rmsnorm → [LoRA A of q,k,v] → gemv q,k,v (+ LoRA B in the epilogue) → rope + KV append
//   → attention over the cache → [LoRA A of o] → gemv o (+ residual) → rmsnorm → [LoRA A gate,up]
//   → gemv gate,up with silu(gate)·up in the epilogue → [LoRA A down] → gemv down (+ residual)
// then the final norm and the lm_head as a bf16 gemv into fp32 logits. Every kernel takes the token
// id and its position from device memory (2 ints copied in before the launch), so the captured
// graph replays unchanged step after step; the host does one small copy and one graph launch.
//
// The graph lives in the DeviceKV (its cache rows are baked in) and is rebuilt when the cache is
// re-initialised, the model differs, or the LoRA layout changed (DeviceModel::lora_version).
// Adapter VALUES may change between steps (training, push): the graph reads them live.
// MIMIC_DECODE_GRAPH=0 in the environment turns this path off (llama_forward runs eagerly).
#include <cstdlib>
#include <cstring>

#include "cuda/common.cuh"
#include "cuda/llama_cuda.h"

namespace mimic::cuda {

struct DecodeGraph {
  uint64_t model_uid = 0, lora_version = 0;
  const void* k0 = nullptr;
  int max_len = 0;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  int32_t* host = nullptr;  // pinned ring of (id, pos) pairs
  unsigned step = 0;
  DevBuf<int32_t> dev;      // (id, pos)
  DevBuf<float> x0, x1, h, lh, scores, logits;
  DevBuf<bf16> xn, q, k, v, att, gate, up, act;
  ~DecodeGraph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    if (host) cudaFreeHost(host);
  }
};

namespace {

constexpr int kRing = 64;
constexpr int kAttnThreads = 256;

// q [Hq, D], k/v [Hkv, D] of the new token (bf16). q is rotated in place; k rotated and v copied
// into the cache rows at position pos. Block b < Hq: query head b; else KV head b − Hq. Each
// thread takes dimension pairs (i, i + D/2) with the angle as rope.cu (fp32, double sincos).
__global__ void rope_append_kernel(bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                                   bf16* __restrict__ kc, bf16* __restrict__ vc, const int32_t* __restrict__ idpos,
                                   const float* __restrict__ inv_freq, int Hq, int Hkv, int D) {
  const int half = D / 2, b = blockIdx.x;
  const int p = idpos[1];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float a = __fmul_rn((float)p, inv_freq[i]);
    double sd, cd;
    sincos((double)a, &sd, &cd);
    const float c = (float)cd, s = (float)sd;
    if (b < Hq) {
      bf16* r = q + (int64_t)b * D;
      const float x0 = __bfloat162float(r[i]), x1 = __bfloat162float(r[i + half]);
      r[i] = __float2bfloat16(x0 * c - x1 * s);
      r[i + half] = __float2bfloat16(x1 * c + x0 * s);
    } else {
      const int h = b - Hq;
      const bf16* r = k + (int64_t)h * D;
      bf16* o = kc + ((int64_t)p * Hkv + h) * D;
      const float x0 = __bfloat162float(r[i]), x1 = __bfloat162float(r[i + half]);
      o[i] = __float2bfloat16(x0 * c - x1 * s);
      o[i + half] = __float2bfloat16(x1 * c + x0 * s);
      bf16* ov = vc + ((int64_t)p * Hkv + h) * D;
      ov[i] = v[(int64_t)h * D + i];
      ov[i + half] = v[(int64_t)h * D + i + half];
    }
  }
}

// One row of RMSNorm (as rmsnorm.cu: fp32 maths, bf16 out) with every load issued up front: the
// generic kernel's strided loop costs a memory latency per iteration, which dominates at N = 1.
constexpr int kNormThreads = 1024, kNormPer = 8;  // C <= 8192 in registers
__global__ void __launch_bounds__(kNormThreads) rmsnorm1_kernel(bf16* __restrict__ out, const float* __restrict__ x,
                                                                const float* __restrict__ w, int C, float eps) {
  __shared__ float sh[32];
  float v[kNormPer];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kNormPer; ++i) {
    const int c = threadIdx.x + i * kNormThreads;
    v[i] = c < C ? x[c] : 0.f;
  }
#pragma unroll
  for (int i = 0; i < kNormPer; ++i) ss += v[i] * v[i];
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = ss;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < kNormThreads / 32; ++i) t += sh[i];
  const float r = rsqrtf(t / C + eps);
#pragma unroll
  for (int i = 0; i < kNormPer; ++i) {
    const int c = threadIdx.x + i * kNormThreads;
    if (c < C) out[c] = __float2bfloat16(w[c] * (v[i] * r));
  }
}
void rmsnorm1(bf16* out, const float* x, const float* w, int C, float eps) {
  if (C > kNormThreads * kNormPer) { rmsnorm_forward(out, nullptr, x, w, 1, C, eps); return; }
  rmsnorm1_kernel<<<1, kNormThreads, 0, Context::get().stream>>>(out, x, w, C, eps);
  MIMIC_CUDA_LAUNCHED();
}

__device__ float block_reduce(float v, float* sh, bool is_max) {
  for (int o = 16; o > 0; o >>= 1) {
    const float t = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, t) : v + t;
  }
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float r = sh[0];
  for (int i = 1; i < kAttnThreads / 32; ++i) r = is_max ? fmaxf(r, sh[i]) : r + sh[i];
  return r;
}

// One query (the new token) of head h = blockIdx.x against keys [0, pos] of the cache:
// scores (fp32, one thread a key, 16-byte loads of the key row) → softmax → Σ p_j v_j with
// D/8 threads a key (8 dims each) and 256/(D/8) keys at a time, partial sums reduced in shared
// memory. scores: [Hq, max_len] fp32 scratch. D % 8 == 0, D <= 256.
template <int DT>
__global__ void __launch_bounds__(kAttnThreads) decode_attn_kernel(bf16* __restrict__ out, const bf16* __restrict__ q,
                                                                   const bf16* __restrict__ kc,
                                                                   const bf16* __restrict__ vc,
                                                                   const int32_t* __restrict__ idpos,
                                                                   float* __restrict__ scores, int max_len, int Hq,
                                                                   int Hkv, int Drt) {
  const int D = DT ? DT : Drt;
  __shared__ float qs[256];
  __shared__ float red[32];
  __shared__ float part[kAttnThreads * 8];
  const int h = blockIdx.x, hk = h / (Hq / Hkv), tid = threadIdx.x;
  const int len = idpos[1] + 1;
  const float sm_scale = rsqrtf((float)D);
  for (int d = tid; d < D; d += kAttnThreads) qs[d] = __bfloat162float(q[(int64_t)h * D + d]) * sm_scale;
  __syncthreads();
  float* sc = scores + (int64_t)h * max_len;
  float mx = -INFINITY;
  for (int j = tid; j < len; j += kAttnThreads) {
    const uint4* kr = reinterpret_cast<const uint4*>(kc + ((int64_t)j * Hkv + hk) * D);
    float s = 0.f;
    auto dot8 = [&](int c) {
      const uint4 kv = kr[c];
      const uint32_t u[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        s = fmaf(qs[c * 8 + 2 * t], __uint_as_float(u[t] << 16), s);
        s = fmaf(qs[c * 8 + 2 * t + 1], __uint_as_float(u[t] & 0xffff0000u), s);
      }
    };
    if constexpr (DT > 0) {
#pragma unroll
      for (int c = 0; c < DT / 8; ++c) dot8(c);  // every load of the key row in flight at once
    } else {
      for (int c = 0; c < D / 8; ++c) dot8(c);
    }
    sc[j] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_reduce(mx, red, true);
  float sum = 0.f;
  for (int j = tid; j < len; j += kAttnThreads) {
    const float p = __expf(sc[j] - mx);
    sc[j] = p;
    sum += p;
  }
  sum = block_reduce(sum, red, false);  // its barriers also publish sc[] to the whole block
  const int G = D / 8, groups = kAttnThreads / G, g = tid / G, d0 = (tid % G) * 8;
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (g < groups) {
#pragma unroll 4
    for (int j = g; j < len; j += groups) {
      const float p = sc[j];
      const uint4 vv = *reinterpret_cast<const uint4*>(vc + ((int64_t)j * Hkv + hk) * D + d0);
      const uint32_t u[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        acc[2 * t] = fmaf(p, __uint_as_float(u[t] << 16), acc[2 * t]);
        acc[2 * t + 1] = fmaf(p, __uint_as_float(u[t] & 0xffff0000u), acc[2 * t + 1]);
      }
    }
#pragma unroll
    for (int t = 0; t < 8; ++t) part[g * D + d0 + t] = acc[t];
  }
  __syncthreads();
  const float inv = 1.f / sum;
  for (int d = tid; d < D; d += kAttnThreads) {
    float s = 0.f;
    for (int i = 0; i < groups; ++i) s += part[i * D + d];
    out[(int64_t)h * D + d] = __float2bfloat16(s * inv);
  }
}

bool graph_enabled() {
  const char* e = std::getenv("MIMIC_DECODE_GRAPH");
  return !(e && std::strcmp(e, "0") == 0) && gemv_enabled();
}

GemvJob base_job(const DLinear& L) {
  GemvJob j;
  if (L.is_nf4) j = gemv_job_nf4(L.nf4);
  else { j.W = L.W.p; j.M = L.M; j.K = L.K; }
  return j;
}

// Records the whole step on the (capturing) stream.
void record(DeviceModel& d, DeviceKV& kv, DecodeGraph& g) {
  const LlamaConfig& c = d.cfg;
  cudaStream_t st = Context::get().stream;
  const int C = c.hidden_size, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
  const int R = g.lh.n ? (int)(g.lh.n / 7) : 0;
  embedding_forward(g.x0.p, g.dev.p, d.embed.p, 1, C);
  float* x = g.x0.p;
  float* xo = g.x1.p;
  auto lora = [&](const DLinear& L) { return L.src && L.r > 0; };
  // LoRA A products of the given projections (h_i = x·A_iᵀ, fp32), one launch.
  auto lora_a = [&](const DLayer& Ly, std::initializer_list<int> which, const bf16* xin) {
    GemvJob js[kGemvMaxJobs];
    int n = 0;
    for (int i : which) {
      const DLinear& L = Ly.proj[i];
      if (!lora(L)) continue;
      GemvJob j;
      j.W = d.lb.p + L.offA; j.M = L.r; j.K = L.K; j.x = xin;
      j.out = g.lh.p + (size_t)i * R; j.out_f32 = true;
      js[n++] = j;
    }
    if (n) gemv(js, n, 1);
  };
  auto with_b = [&](GemvJob j, const DLinear& L, int i) {
    if (lora(L)) { j.lora_B = d.lb.p + L.offB; j.lora_h = g.lh.p + (size_t)i * R; j.r = L.r; j.scale = L.scale; }
    return j;
  };
  for (int l = 0; l < c.num_layers; ++l) {
    const DLayer& Ly = d.layers[l];
    rmsnorm1(g.xn.p, x, Ly.in_norm.p, C, c.rms_norm_eps);
    lora_a(Ly, {0, 1, 2}, g.xn.p);
    {
      GemvJob js[3];
      bf16* outs[3] = {g.q.p, g.k.p, g.v.p};
      for (int i = 0; i < 3; ++i) {
        js[i] = with_b(base_job(Ly.proj[i]), Ly.proj[i], i);
        js[i].x = g.xn.p; js[i].out = outs[i];
      }
      gemv(js, 3, 1);
    }
    rope_append_kernel<<<Hq + Hkv, std::min(std::max(D / 2, 32), 128), 0, st>>>(g.q.p, g.k.p, g.v.p, kv.k[l].p, kv.v[l].p,
                                                                       g.dev.p, d.inv_freq.p, Hq, Hkv, D);
    MIMIC_CUDA_LAUNCHED();
    if (D == 128)
      decode_attn_kernel<128><<<Hq, kAttnThreads, 0, st>>>(g.att.p, g.q.p, kv.k[l].p, kv.v[l].p, g.dev.p, g.scores.p,
                                                           kv.max_len, Hq, Hkv, D);
    else
      decode_attn_kernel<0><<<Hq, kAttnThreads, 0, st>>>(g.att.p, g.q.p, kv.k[l].p, kv.v[l].p, g.dev.p, g.scores.p,
                                                         kv.max_len, Hq, Hkv, D);
    MIMIC_CUDA_LAUNCHED();
    lora_a(Ly, {3}, g.att.p);
    {
      GemvJob j = with_b(base_job(Ly.proj[3]), Ly.proj[3], 3);
      j.x = g.att.p; j.out = g.h.p; j.out_f32 = true; j.res = x;   // h = x + o(att)
      gemv(&j, 1, 1);
    }
    rmsnorm1(g.xn.p, g.h.p, Ly.post_norm.p, C, c.rms_norm_eps);
    lora_a(Ly, {4, 5}, g.xn.p);
    {
      GemvJob js[2];
      js[0] = with_b(base_job(Ly.proj[4]), Ly.proj[4], 4); js[0].x = g.xn.p; js[0].out = g.act.p;
      js[1] = with_b(base_job(Ly.proj[5]), Ly.proj[5], 5); js[1].x = g.xn.p; js[1].out = g.up.p;
      gemv_glu(js[0], js[1], 1);  // act = silu(gate)·up: no gate/up round trip, no swiglu launch
    }
    lora_a(Ly, {6}, g.act.p);
    {
      GemvJob j = with_b(base_job(Ly.proj[6]), Ly.proj[6], 6);
      j.x = g.act.p; j.out = xo; j.out_f32 = true; j.res = g.h.p;  // x' = h + down(act)
      gemv(&j, 1, 1);
    }
    std::swap(x, xo);
  }
  rmsnorm1(g.xn.p, x, d.final_norm.p, C, c.rms_norm_eps);
  GemvJob j;
  j.W = d.head(); j.M = c.vocab_size; j.K = C; j.x = g.xn.p; j.out = g.logits.p; j.out_f32 = true;
  gemv(&j, 1, 1);
}

std::shared_ptr<DecodeGraph> build(DeviceModel& d, DeviceKV& kv) {
  const LlamaConfig& c = d.cfg;
  auto g = std::make_shared<DecodeGraph>();
  g->model_uid = d.uid;
  g->lora_version = d.lora_version;
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
  if (R) g->lh.alloc((size_t)7 * R);
  g->scores.alloc((size_t)c.num_heads * kv.max_len);
  g->logits.alloc(c.vocab_size);
  g->xn.alloc(std::max(C, QD)); g->q.alloc(QD); g->k.alloc(KD); g->v.alloc(KD); g->att.alloc(QD);
  g->gate.alloc(I); g->up.alloc(I); g->act.alloc(I);
  cudaStream_t st = Context::get().stream;
  Context::get().sync();
  MIMIC_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  try {
    record(d, kv, *g);
  } catch (...) {
    cudaGraph_t broken = nullptr;
    cudaStreamEndCapture(st, &broken);
    if (broken) cudaGraphDestroy(broken);
    cudaGetLastError();
    throw;
  }
  MIMIC_CUDA_CHECK(cudaStreamEndCapture(st, &g->graph));
  MIMIC_CUDA_CHECK(cudaGraphInstantiate(&g->exec, g->graph, 0));
  return g;
}

}  // namespace

float* decode_step(DeviceModel& d, int32_t id, DeviceKV& kv) {
  const LlamaConfig& c = d.cfg;
  if (!graph_enabled() || kv.k.empty() || c.head_dim % 8 != 0 || c.head_dim > 256 || c.num_heads % c.num_kv_heads)
    return nullptr;
  DecodeGraph* g = kv.graph.get();
  if (!g || g->model_uid != d.uid || g->lora_version != d.lora_version || g->k0 != kv.k[0].p ||
      g->max_len != kv.max_len) {
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

}  // namespace mimic::cuda
