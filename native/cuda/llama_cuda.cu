// llama_cuda — the CUDA engine (see llama_cuda.h for the stages and the precision plan in
// cuda_ops.h). Per decoder layer, with N = B·T tokens:
//   xn1 = rmsnorm(x)·w_in;  q,k,v = lin(xn1);  rope(q, k);  att = attention(q, k, v)
//   h = x + lin_o(att);  xn2 = rmsnorm(h)·w_post;  act = silu(lin_gate(xn2)) · lin_up(xn2)
//   x' = h + lin_down(act)
// lin(x) = x·Wᵀ + scale·(drop(x)·Aᵀ)·Bᵀ — the base is a bf16 GEMM, or NF4 dequantized into one
// shared scratch then a GEMM. The backward walks the same graph in reverse with the residual
// gradient in fp32, accumulating dA/dB (fp32) in the LoRA arena.
#include "cuda/llama_cuda.h"

#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/env.h"
#include "cuda/common.cuh"
#include "cuda/dequant_ahead.h"
#include "cuda/nf4_dequant_fast.h"
#include "ops/cross_entropy.h"

namespace mimic::cuda {

struct Acts {
  DevBuf<bf16> xn1, q, k, v, att, xn2, gate, up, act;
  DevBuf<float> rstd1, lse, h, rstd2;
  std::array<DevBuf<bf16>, 7> lh;
  // row strides of xn1, xn2, act as the last forward wrote them (wider than C / I where a group ran as
  // group_forward: its h' = s·x·Aᵀ columns follow x's), and which groups' h' live there (hx[g]; else lh)
  int64_t ld_xn1 = 0, ld_xn2 = 0, ld_act = 0;
  bool hx[4] = {};
};

// One layer's attention activations kept from the first forward for its backward (recompute_keep_attn):
// moved in and out of Acts by swapping buffers, never copied.
struct AttnKept {
  DevBuf<bf16> q, k, v, att;
  DevBuf<float> lse;
};

struct Workspace {
  DevBuf<int32_t> ids, pos, tgt, rows;
  std::vector<DevBuf<float>> xs;
  std::vector<Acts> acts;
  DevBuf<bf16> y16, dy16, dact, dgate, dup, datt, dq, dk, dv, dh, drop, drop2, xnf, gath, logits16, scratch;
  DevBuf<bf16> layer_w;  // one layer's seven NF4 projections dequantized, for its recompute AND its backward
  DevBuf<bf16> dycat;    // a projection group's [dy_0 | … | dh_0 | …] (the grouped backward: group_backward)
  DequantAhead ahead;    // a prompt's forward: the next projection dequantized while this one multiplies
  DevBuf<float> dres, dn, rstdf, dg, dxnf, logits32;
  DevBuf<double> loss;
  std::vector<AttnKept> kept;  // a layer each (recompute_keep_attn), else empty
};

namespace {

constexpr int32_t kIgnore = -100;
constexpr size_t kHeadBytes = 256u << 20;  // logits chunk budget (bf16 rows of V)

cudaStream_t stream() { return Context::get().stream; }

DevBuf<bf16> upload_bf16(const float* src, size_t n) {
  std::vector<bf16> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = __float2bfloat16(src[i]);
  return upload(h);
}

// ---- small kernels private to the engine -----------------------------------------------------
__device__ inline uint32_t hash3(uint64_t seed, uint64_t i) {
  uint64_t z = seed ^ (i * 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (uint32_t)((z ^ (z >> 31)) >> 40);  // 24 bits
}
// dst (=|+=) src ⊙ mask/(1−p), mask from hash(seed, i)
template <class TO>
__global__ void dropout_kernel(TO* dst, const bf16* src, int64_t n, float p, uint64_t seed, bool acc) {
  const float keep = 1.f / (1.f - p);
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float u = hash3(seed, (uint64_t)i) * (1.f / 16777216.f);
    const float v = u >= p ? __bfloat162float(src[i]) * keep : 0.f;
    dst[i] = from_f<TO>(acc ? to_f(dst[i]) + v : v);
  }
}
// out = x + y, four values a thread where n % 4 == 0 and x/out are 16-byte, y 8-byte aligned (the
// engine's buffers: cudaMalloc'd, n a multiple of the hidden size), else one
__global__ void residual_kernel(float* out, const float* x, const bf16* y, int64_t n) {
  if (n % 4 == 0 && ((uintptr_t)out | (uintptr_t)x) % 16 == 0 && (uintptr_t)y % 8 == 0) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n / 4; i += (int64_t)gridDim.x * blockDim.x) {
      const float4 a = reinterpret_cast<const float4*>(x)[i];
      const uint2 b = reinterpret_cast<const uint2*>(y)[i];
      const __nv_bfloat162 b0 = *reinterpret_cast<const __nv_bfloat162*>(&b.x), b1 = *reinterpret_cast<const __nv_bfloat162*>(&b.y);
      reinterpret_cast<float4*>(out)[i] = make_float4(a.x + __low2float(b0), a.y + __high2float(b0), a.z + __low2float(b1),
                                                      a.w + __high2float(b1));
    }
    return;
  }
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = x[i] + __bfloat162float(y[i]);
}
__global__ void f32_to_bf16_kernel(bf16* d, const float* s, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    d[i] = __float2bfloat16(s[i]);
}
// d[n, c] (rows of ldd) = bf16(s[n, c]) for s [N, C] (fp32, dense): a group's dy written as the first
// columns of its gradient buffer (group_backward); four values a thread where C, ldd are multiples of 4
__global__ void f32_to_bf16_rows_kernel(bf16* d, int64_t ldd, const float* s, int64_t N, int C) {
  if (C % 4 == 0 && ldd % 4 == 0 && (uintptr_t)s % 16 == 0 && (uintptr_t)d % 8 == 0) {
    const int c4 = C / 4;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < N * c4; i += (int64_t)gridDim.x * blockDim.x) {
      const int64_t r = i / c4, c = (i - r * c4) * 4;
      const float4 v = reinterpret_cast<const float4*>(s)[i];
      __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
      uint2 o;
      o.x = *reinterpret_cast<uint32_t*>(&a);
      o.y = *reinterpret_cast<uint32_t*>(&b);
      *reinterpret_cast<uint2*>(d + r * ldd + c) = o;
    }
    return;
  }
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < N * C; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / C, c = i - r * C;
    d[r * ldd + c] = __float2bfloat16(s[i]);
  }
}
// The extra columns [K, K + R) of one member's M rows in a group_forward block (rows ld apart): its B
// [M, r] at columns K + off .. K + off + r, zeros elsewhere (B null: zeros only)
__global__ void ext_cols_kernel(bf16* rows, int64_t ld, int K, int R, int64_t M, const bf16* B, int r, int off) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < M * R; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t m = i / R;
    const int j = (int)(i - m * R) - off;
    rows[m * ld + K + j + off] = B && j >= 0 && j < r ? B[m * r + j] : __float2bfloat16(0.f);
  }
}
__global__ void gather_rows_kernel(bf16* dst, const bf16* src, const int32_t* rows, int C) {
  const int64_t r = blockIdx.x, s = rows[r];
  for (int c = threadIdx.x; c < C; c += blockDim.x) dst[r * C + c] = src[s * C + c];
}
__global__ void scatter_rows_kernel(float* dst, const float* src, const int32_t* rows, int C) {
  const int64_t r = blockIdx.x, s = rows[r];
  for (int c = threadIdx.x; c < C; c += blockDim.x) dst[s * C + c] = src[r * C + c];
}
int ew_grid(int64_t n) { int64_t b = (n + 255) / 256; return (int)std::min<int64_t>(std::max<int64_t>(b, 1), 8192); }

void zero(void* p, size_t bytes) { if (bytes) MIMIC_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream())); }

// ---- one projection --------------------------------------------------------------------------
// The projections that share an input: q/k/v (xn1), o (att), gate/up (xn2), down (act).
constexpr int kGroups = 4;
constexpr int kGroupFirst[kGroups] = {0, 3, 4, 6}, kGroupSize[kGroups] = {3, 1, 2, 1};
enum { kQKV = 0, kO = 1, kGateUp = 2, kDown = 3 };

struct LinCtx {
  DeviceModel& d;
  Workspace& ws;
  float dropout;
  uint64_t seed;  // per (call, layer, projection)
  uint64_t member_seed[7] = {};  // the layer's seven projections' seeds (group_backward's masks, p > 0)
  // set during a recomputed layer's recompute + backward: its projections already dequantized in
  // ws.layer_w (dense[i] for &layer->proj[i]), so both passes share one dequantize per weight
  const DLayer* layer = nullptr;
  const bf16* dense[7] = {};
  // and each group's rows as one block [W_0; …; W_{n−1}; A_0; …] (row length K: the members' weights,
  // then the LoRA A of those that carry one), group_rows[g] rows — or null (group_backward)
  const bf16* group_w[kGroups] = {};
  int64_t group_rows[kGroups] = {};
  // the block's row stride: K, or K + R where the group runs as group_forward (MIMIC_FWD_GROUPED=1:
  // each member's rows [W_i | its B in its h' columns, zeros elsewhere], R = the LoRA'd members' Σ r)
  int64_t group_ld[kGroups] = {};
  bool group_fwd[kGroups] = {};
  DequantAhead* ahead = nullptr;  // a prompt's forward with MIMIC_DEQUANT_AHEAD=1 (dequant_ahead.h)
  void end_layer() {
    layer = nullptr;
    for (int g = 0; g < kGroups; ++g) {
      group_w[g] = nullptr;
      group_fwd[g] = false;
    }
  }
};

// The dropout seed of projection i of layer l in one call of the trainer (seed_base: the call's)
uint64_t proj_seed(uint64_t seed_base, int l, int i) { return seed_base ^ ((uint64_t)(l * 7 + i + 1) * 0xA24BAED4963EE407ull); }

// The bf16 copy of L prepared for this layer's recompute + backward, or null. Only for N > 64 rows:
// there nf4_matmul_forward itself dequantizes + multiplies (N <= 64 rows take the GEMV / the fused
// NF4 GEMM), so the dense path gives the same bits as the per-call dequantize.
// (Rows of a group_forward block are K + R apart: not this route's layout — those members take the
// per-call dequantize if anything asks, which group_forward / group_backward never let happen.)
int group_of(int i) {
  int g = kGroups - 1;
  while (kGroupFirst[g] > i) --g;
  return g;
}
const bf16* dense_of(const LinCtx& c, const DLinear& L, int64_t N) {
  if (!c.layer || N <= kNF4GemmSmallMaxS) return nullptr;
  const ptrdiff_t i = &L - &c.layer->proj[0];
  if (i < 0 || i >= 7 || c.group_fwd[group_of((int)i)]) return nullptr;
  return c.dense[i];
}

bool has_lora(const DLinear& L) { return L.src && L.r > 0; }
const bf16* lora_A(const DeviceModel& d, const DLinear& L) { return d.lb.p + L.offA; }
// Σ r of group g's LoRA'd members: the h' columns of its group_forward rows, the A rows of its block
int64_t group_rank(const DLayer& L, int g) {
  int64_t R = 0;
  for (int i = kGroupFirst[g]; i < kGroupFirst[g] + kGroupSize[g]; ++i)
    if (L.proj[i].src) R += L.proj[i].r;
  return R;
}
const bf16* lora_B(const DeviceModel& d, const DLinear& L) { return d.lb.p + L.offB; }

// LoRA dropout of one projection (its mask from `seed`: the same in its forward, recompute and backward).
// x_drop = x ⊙ mask/(1−p) of n values, in ws.drop — or x itself at p = 0.
const bf16* dropped(LinCtx& c, const bf16* x, int64_t n, uint64_t seed) {
  if (!(c.dropout > 0.f)) return x;
  dropout_kernel<bf16><<<ew_grid(n), 256, 0, stream()>>>(c.ws.drop.p, x, n, c.dropout, seed, false);
  MIMIC_CUDA_LAUNCHED();
  return c.ws.drop.p;
}
// dx += dropout'(ws.drop2): the LoRA half of the input gradient (dh·A, in ws.drop2), through the mask.
template <class TO>
void add_dropped_back(LinCtx& c, TO* dx, int64_t n, uint64_t seed) {
  dropout_kernel<TO><<<ew_grid(n), 256, 0, stream()>>>(dx, c.ws.drop2.p, n, c.dropout, seed, true);
  MIMIC_CUDA_LAUNCHED();
}

// h_out[N, r] = x_drop·Aᵀ: the LoRA half's first product, kept for the backward (dB = s·dyᵀ·h); nothing
// for a projection without LoRA.
void lin_forward_h(LinCtx& c, const bf16* x, int64_t N, const DLinear& L, bf16* h_out) {
  if (!has_lora(L)) return;
  matmul_forward<bf16>(h_out, dropped(c, x, N * L.K, c.seed), lora_A(c.d, L), N, L.K, L.r, 1.f, 0.f);
}

// y[N, M] (bf16) = lin(x); h_out[N, r] keeps x_drop·Aᵀ for the backward.
void lin_forward(LinCtx& c, bf16* y, const bf16* x, int64_t N, const DLinear& L, bf16* h_out) {
  const bf16* ahead = L.is_nf4 && c.ahead ? c.ahead->take(L.nf4) : nullptr;  // (AheadScope: N > kNF4GemmSmallMaxS)
  if (ahead) {  // (nf4_matmul_forward's own route at these N: dequantize, then this GEMM)
    matmul_forward<bf16>(y, x, ahead, N, L.K, L.M, 1.f, 0.f);
    c.ahead->release();
  } else if (const bf16* W = L.is_nf4 ? dense_of(c, L, N) : nullptr) matmul_forward<bf16>(y, x, W, N, L.K, L.M, 1.f, 0.f);
  else if (L.is_nf4) nf4_matmul_forward<bf16>(y, x, L.nf4, N, c.ws.scratch.p, 1.f, 0.f);
  else matmul_forward<bf16>(y, x, L.W.p, N, L.K, L.M, 1.f, 0.f);
  if (!has_lora(L)) return;
  lin_forward_h(c, x, N, L, h_out);
  matmul_forward<bf16>(y, h_out, lora_B(c.d, L), N, L.r, L.M, L.scale, 1.f);
}

// dx (=: beta 0 | +=: beta 1) ∂/∂x; dA, dB += in the arena.
template <class TO>
void lin_backward(LinCtx& c, TO* dx, float beta, const bf16* dy, const bf16* x, int64_t N, const DLinear& L,
                  const bf16* h) {
  if (const bf16* W = L.is_nf4 ? dense_of(c, L, N) : nullptr) matmul_backward_input<TO>(dx, dy, W, N, L.K, L.M, 1.f, beta);
  else if (L.is_nf4) nf4_matmul_backward_input<TO>(dx, dy, L.nf4, N, c.ws.scratch.p, 1.f, beta);
  else matmul_backward_input<TO>(dx, dy, L.W.p, N, L.K, L.M, 1.f, beta);
  if (!has_lora(L)) return;
  DeviceModel& d = c.d;
  matmul_backward_weight(d.lg.p + L.offB, dy, h, N, L.r, L.M, L.scale, 1.f);               // dB += s·dyᵀh
  matmul_backward_input<bf16>(c.ws.dh.p, dy, lora_B(d, L), N, L.r, L.M, L.scale, 0.f);     // dh = s·dy·B
  matmul_backward_weight(d.lg.p + L.offA, c.ws.dh.p, dropped(c, x, N * L.K, c.seed), N, L.K, L.r, 1.f, 1.f);  // dA += dhᵀ·xd
  if (c.dropout > 0.f) {
    matmul_backward_input<bf16>(c.ws.drop2.p, c.ws.dh.p, lora_A(d, L), N, L.K, L.r, 1.f, 0.f);
    add_dropped_back(c, dx, N * L.K, c.seed);
  } else {
    matmul_backward_input<TO>(dx, c.ws.dh.p, lora_A(d, L), N, L.K, L.r, 1.f, 1.f);       // dx += dh·A
  }
}

// group_backward (round 21; round 22, H100: the 8×512 step −4.9 %, LoRA grads within 4e-3 of the
// per-projection route in the last layer, 1.1e-2 over all 28 with B = ±0.05). MIMIC_BWD_GROUPED=0: a
// product a projection (the A/B leg). Read at each layer (the A/B rows of one process).
bool bwd_grouped_enabled() { return env_switch_on("MIMIC_BWD_GROUPED"); }

// MIMIC_FWD_GROUPED=1 (experimental): the forward's q/k/v, gate/up and down as group_forward — the LoRA
// B product inside the base product. Round 22 (H100): the 8×512 step −4.4 % and the loss within 4e-4;
// its LoRA grads 7.6e-2 from the per-projection route's on the 3B — rounding (one bf16 rounding less,
// carried through 28 random layers: round 23's lora_effect, a loss gap of 0.20 where numpy's replay
// predicts 0.25). Off until its rows against the CPU trainer ("train N>64", model table) have run.
bool fwd_grouped_enabled() { return bwd_grouped_enabled() && env_is("MIMIC_FWD_GROUPED", "1"); }

// MIMIC_BWD_GROUPED_DROPOUT=1 (experimental, round 24; not yet run on a card): group_backward with LoRA
// dropout too (finetune()'s default p = 0.05) — the members' base parts of dx as one product, each
// member's LoRA half dropout'(dh·A) added after it with its own mask; without it p > 0 takes a
// product a projection.
bool bwd_grouped_dropout_enabled() { return env_is("MIMIC_BWD_GROUPED_DROPOUT", "1"); }

// True when group g's backward can run as group_backward: its rows are dense in ws.layer_w (every
// member NF4, N > kNF4GemmSmallMaxS, the layer dequantized once); with dropout only where
// MIMIC_BWD_GROUPED_DROPOUT=1 (the masks differ by member: dropout' applies to each LoRA half alone).
bool grouped(const LinCtx& c, int g) {
  return c.group_w[g] && (c.dropout == 0.f || bwd_grouped_dropout_enabled()) && bwd_grouped_enabled();
}
bool fgrouped(const LinCtx& c, int g) { return grouped(c, g) && c.group_fwd[g]; }

// The forward of a group of projections that share their input, each member's LoRA B product inside
// its base product (group_forward's block: dequantize_layer with MIMIC_FWD_GROUPED=1):
//   h'  = s · x · A_iᵀ          into x's columns K + off_i (x rows ld = K + R apart; one product for
//                                 the group's A rows where the LoRA'd members share s)
//   y_i = [x | h'] · [W_i | B-block_i]ᵀ      (one product of inner size K + R, β = 0)
// instead of y_i = x·W_iᵀ, then y_i += s·h_i·B_iᵀ — a read-modify-write of every output (at 8×512 the
// layer's seven outputs are ~450 MB a pass). h' stays in x's row for the backward (Acts::hx): dB_i =
// dy_iᵀ·h'_i. Numerics: y rounded to bf16 once instead of twice; h' = bf16(s·x·Aᵀ) (with s a power of
// two, as PEFT's α = 2r, exactly s·bf16(x·Aᵀ)).
void group_forward(LinCtx& c, int g, bf16* const* y, bf16* x, int64_t N, const DLayer& L, bool h_only = false) {
  const int i0 = kGroupFirst[g], n = kGroupSize[g], K = L.proj[i0].K;
  const int64_t ld = c.group_ld[g];
  const bf16* blk = c.group_w[g];
  const int64_t R = group_rank(L, g);
  int64_t rows = 0;
  bool one_s = true, first = true;
  float s0 = 0.f;
  for (int i = i0; i < i0 + n; ++i) {
    const DLinear& P = L.proj[i];
    rows += P.M;
    if (!has_lora(P)) continue;
    if (first) s0 = P.scale;
    one_s = one_s && P.scale == s0;
    first = false;
  }
  MIMIC_CHECK(ld == K + R, "EINTERNAL", "grouped forward: row stride ", ld, " for K ", K, " + R ", R);
  const bf16* arows = blk + rows * ld;
  if (one_s) {
    matmul_forward_ld<bf16>(x + K, ld, x, ld, arows, ld, N, K, (int)R, s0, 0.f);
  } else {
    int64_t off = 0;
    for (int i = i0; i < i0 + n; ++i) {
      const DLinear& P = L.proj[i];
      if (!has_lora(P)) continue;
      matmul_forward_ld<bf16>(x + K + off, ld, x, ld, arows + off * ld, ld, N, K, P.r, P.scale, 0.f);
      off += P.r;
    }
  }
  if (h_only) return;  // (a recompute's down: the backward reads h', never y)
  int64_t row = 0;
  for (int i = i0; i < i0 + n; ++i) {
    const DLinear& P = L.proj[i];
    matmul_forward_ld<bf16>(y[i - i0], P.M, x, ld, blk + row * ld, ld, N, (int)ld, P.M, 1.f, 0.f);
    row += P.M;
  }
}

// The backward of a group of projections that share their input x [N, K], with ONE product for dx:
//   dh_i = s_i · dy_i · B_i                       (each LoRA'd member; written beside the dy's)
//   dB_i += s_i · dy_iᵀ · h_i,   dA_i += dh_iᵀ · x
//   dx (=: beta 0 | +=: beta 1) = [dy_0 | … | dy_{n−1} | dh_0 | …] · [W_0; …; W_{n−1}; A_0; …]
// dycat [N, group_rows[g]] holds the members' dy in member order (the caller wrote them there); the
// dh columns follow in the order of the A rows (dequantize_layer). Before (lin_backward per member)
// each member's base product and each LoRA A product was its own read-modify-write of dx — for q/k/v
// and gate/up an fp32 [N, C] pass each (5 + 3 a layer), for o and down a bf16 one (round 21: the
// same sums, in one fp32 accumulation instead of several roundings; rows "train 3B grouped").
// x: rows ldx apart; hx: the members' h' = s·h sit in x's columns K.. (group_forward), else h[i] [N, r].
template <class TO>
void group_backward(LinCtx& c, int g, TO* dx, float beta, bf16* dycat, const bf16* x, int64_t ldx, bool hx, int64_t N,
                    const DLayer& L, const bf16* const* h) {
  DeviceModel& d = c.d;
  const int i0 = kGroupFirst[g], n = kGroupSize[g], K = L.proj[i0].K;
  const int64_t ld = c.group_rows[g];
  int64_t hoff = K;  // (hx: the next LoRA'd member's h' column in x)
  int64_t col = 0;
  for (int i = i0; i < i0 + n; ++i) col += L.proj[i].M;
  const int64_t base_cols = col;  // (the members' dy columns: the W rows of the block)
  // p > 0 (MIMIC_BWD_GROUPED_DROPOUT=1): dA from each member's dropped x, and the LoRA halves of dx
  // apart — dx = [dy_0 | …]·[W_0; …] first, then dx += dropout'_i(dh_i·A_i) member by member, each with
  // the mask of the member's forward (lin_backward's arithmetic: dh·A rounded to bf16, then masked)
  const bool masked = c.dropout > 0.f;
  MIMIC_CHECK(!masked || (!hx && ldx == K), "EINTERNAL", "grouped backward with dropout: the forward's grouped rows");
  int64_t at = 0;
  for (int i = i0; i < i0 + n; ++i) {
    const DLinear& P = L.proj[i];
    const bf16* dy = dycat + at;
    at += P.M;
    if (!has_lora(P)) continue;
    bf16* dh = dycat + col;
    if (hx) matmul_backward_weight_ld(d.lg.p + P.offB, dy, ld, x + hoff, ldx, N, P.r, P.M, 1.f, 1.f);  // dB += dyᵀh'
    else matmul_backward_weight_ld(d.lg.p + P.offB, dy, ld, h[i - i0], P.r, N, P.r, P.M, P.scale, 1.f);  // dB += s·dyᵀh
    matmul_backward_input_ld<bf16>(dh, ld, dy, ld, lora_B(d, P), P.r, N, P.r, P.M, P.scale, 0.f);   // dh = s·dy·B
    const bf16* xd = masked ? dropped(c, x, N * K, c.member_seed[i]) : x;  // (masked: ldx == K)
    matmul_backward_weight_ld(d.lg.p + P.offA, dh, ld, xd, ldx, N, K, P.r, 1.f, 1.f);              // dA += dhᵀ·xd
    col += P.r;
    hoff += P.r;
  }
  MIMIC_CHECK(col == ld, "EINTERNAL", "grouped backward: ", col, " gradient columns for ", ld, " weight rows");
  if (!masked) {
    matmul_backward_input_ld<TO>(dx, K, dycat, ld, c.group_w[g], c.group_ld[g], N, K, (int)col, 1.f, beta);
    return;
  }
  matmul_backward_input_ld<TO>(dx, K, dycat, ld, c.group_w[g], c.group_ld[g], N, K, (int)base_cols, 1.f, beta);
  col = base_cols;
  for (int i = i0; i < i0 + n; ++i) {
    const DLinear& P = L.proj[i];
    if (!has_lora(P)) continue;
    matmul_backward_input_ld<bf16>(c.ws.drop2.p, K, dycat + col, ld, lora_A(d, P), K, N, K, P.r, 1.f, 0.f);  // dh·A
    add_dropped_back(c, dx, N * K, c.member_seed[i]);
    col += P.r;
  }
}

// ---- sizing ----------------------------------------------------------------------------------
int max_rank(const DeviceModel& d) {
  int r = 1;
  for (auto& l : d.layers)
    for (auto& p : l.proj) r = std::max(r, p.r);
  return r;
}

void ensure_acts(Acts& a, const LlamaConfig& c, int64_t N, int B, int r) {
  const int64_t C = c.hidden_size, QD = (int64_t)c.num_heads * c.head_dim, KD = (int64_t)c.num_kv_heads * c.head_dim,
                I = c.intermediate_size;
  // (xn1, xn2, act: room for the h' columns of group_forward — q/k/v's three ranks, gate/up's two, down's one)
  a.xn1.reserve(N * (C + 3 * r)); a.q.reserve(N * QD); a.k.reserve(N * KD); a.v.reserve(N * KD); a.att.reserve(N * QD);
  a.xn2.reserve(N * (C + 2 * r)); a.gate.reserve(N * I); a.up.reserve(N * I); a.act.reserve(N * (I + r));
  a.rstd1.reserve(N); a.rstd2.reserve(N); a.lse.reserve(N * c.num_heads); a.h.reserve(N * C);
  for (auto& b : a.lh) b.reserve(N * r);
  (void)B;
}

void ensure_ws(DeviceModel& d, int64_t N, int B, int n_acts, bool backward) {
  if (!d.ws) d.ws = std::make_shared<Workspace>();
  Workspace& w = *d.ws;
  const LlamaConfig& c = d.cfg;
  const int64_t C = c.hidden_size, QD = (int64_t)c.num_heads * c.head_dim, KD = (int64_t)c.num_kv_heads * c.head_dim,
                I = c.intermediate_size;
  const int r = max_rank(d);
  int64_t maxMK = 0, maxK = std::max<int64_t>(C, I);
  for (auto& l : d.layers)
    for (auto& p : l.proj) if (p.is_nf4) maxMK = std::max<int64_t>(maxMK, (int64_t)p.M * p.K);
  w.scratch.reserve(std::max<int64_t>(maxMK, 1));
  w.ids.reserve(N); w.pos.reserve(N); w.tgt.reserve(N); w.rows.reserve(N);
  if ((int)w.acts.size() < n_acts) w.acts.resize(n_acts);
  for (int i = 0; i < n_acts; ++i) ensure_acts(w.acts[i], c, N, B, r);
  w.y16.reserve(N * std::max(C, QD));
  w.dh.reserve(N * r);
  w.drop.reserve(N * maxK);
  w.xnf.reserve(N * C); w.rstdf.reserve(N);
  w.loss.reserve(2);
  if (backward) {
    w.dy16.reserve(N * std::max(C, QD)); w.dact.reserve(N * I);
    if (!bwd_grouped_enabled()) { w.dgate.reserve(N * I); w.dup.reserve(N * I); }  // (grouped: dycat, layer_backward)
    w.datt.reserve(N * QD); w.dq.reserve(N * QD); w.dk.reserve(N * KD); w.dv.reserve(N * KD);
    w.drop2.reserve(N * maxK); w.dres.reserve(N * C); w.dn.reserve(N * C); w.dxnf.reserve(N * C);
  }
}

// Recompute, and room on the card: each layer's q, k, v, attention output and lse stay from the first
// forward to its backward (3B at 8×512: 67.5 MB a layer, 1.76 GiB in all; round 22, H100: the step
// −5.9 %, the peak 6.01 → 7.77 GiB, gradients bit for bit the full recompute's), and the recompute
// skips what made them. Kept only where the buffers still to allocate leave the card a quarter of its
// memory (min 2 GiB) free — else the recompute makes them again; MIMIC_RECOMPUTE_KEEP_ATTN=0: never.
// MIMIC_RECOMPUTE_FULL=1: the recompute runs the whole layer (the A/B leg of round 22; same bits)
bool recompute_full() { return env_is("MIMIC_RECOMPUTE_FULL", "1"); }
bool recompute_keep_attn(const Workspace& w, const LlamaConfig& c, int64_t N) {
  if (!env_switch_on("MIMIC_RECOMPUTE_KEEP_ATTN") || recompute_full()) return false;
  const int64_t QD = (int64_t)c.num_heads * c.head_dim, KD = (int64_t)c.num_kv_heads * c.head_dim;
  const size_t per_layer = (size_t)N * (2 * QD + 2 * KD) * sizeof(bf16) + (size_t)N * c.num_heads * sizeof(float);
  size_t have = 0;  // (what earlier steps already allocated counts as room)
  for (const auto& k : w.kept) have += std::min(per_layer, k.q.bytes() + k.k.bytes() + k.v.bytes() + k.att.bytes() + k.lse.bytes());
  const size_t need = per_layer * c.num_layers - std::min(have, per_layer * c.num_layers);
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) { (void)cudaGetLastError(); return false; }
  const size_t reserve = std::max<size_t>(total_b / 4, size_t(2) << 30);
  return free_b >= need + reserve;
}
void ensure_kept(Workspace& w, const LlamaConfig& c, int64_t N, int layers) {
  const int64_t QD = (int64_t)c.num_heads * c.head_dim, KD = (int64_t)c.num_kv_heads * c.head_dim;
  if ((int)w.kept.size() < layers) w.kept.resize(layers);
  for (auto& k : w.kept) {
    k.q.reserve(N * QD); k.k.reserve(N * KD); k.v.reserve(N * KD); k.att.reserve(N * QD); k.lse.reserve(N * c.num_heads);
  }
}
// (every layer's buffers of a field have one size: swapping moves pointers, no bytes)
void swap_attn(Acts& a, AttnKept& k) {
  std::swap(a.q, k.q); std::swap(a.k, k.k); std::swap(a.v, k.v); std::swap(a.att, k.att); std::swap(a.lse, k.lse);
}

// ---- one decoder layer -----------------------------------------------------------------------
struct LayerRun {
  int B, T;            // training shapes (B sequences of T); inference: B = 1
  DeviceKV* cache;     // inference only
  int q_offset;
};

// MIMIC_LAYER_DENSE=0: the recompute and the backward dequantize each weight on their own (3
// dequantize passes a step instead of 2; same results).
bool layer_dense_enabled() {
  static const bool on = env_switch_on("MIMIC_LAYER_DENSE");
  return on;
}

// Layer l's NF4 projections → bf16 in ws.layer_w (grow-only), their pointers in lc.dense; non-NF4
// projections keep their own weights (dense[i] = null). Group by group (kGroupFirst): the members'
// rows one after another, then — where every member is NF4 — a copy of the LoRA'd members' A rows
// (bf16, from the arena), so that the group's rows are one block [W_0; …; A_0; …] (lc.group_w).
void dequantize_layer(DeviceModel& d, int l, Workspace& w, LinCtx& lc) {
  const DLayer& L = d.layers[l];
  size_t total = 0;
  for (int g = 0; g < kGroups; ++g) {  // (with room for a group_forward block's B columns)
    int64_t rows = 0;
    for (int i = kGroupFirst[g]; i < kGroupFirst[g] + kGroupSize[g]; ++i)
      if (L.proj[i].is_nf4) rows += L.proj[i].M + (L.proj[i].src ? L.proj[i].r : 0);
    total += (size_t)rows * (L.proj[kGroupFirst[g]].K + group_rank(L, g));
  }
  if (!total) return;
  w.layer_w.reserve(total);
  const cudaStream_t st = stream();
  size_t at = 0;
  for (int g = 0; g < kGroups; ++g) {
    const int i0 = kGroupFirst[g], n = kGroupSize[g], K = L.proj[i0].K;
    const size_t g0 = at;
    bool all = true;
    for (int i = i0; i < i0 + n; ++i) all = all && L.proj[i].is_nf4;
    const int64_t R = group_rank(L, g);
    // group_forward's block: rows K + R apart (q/k/v, gate/up, down; the strided dequantize needs K and
    // K + R multiples of 8), else K
    const bool fwd = all && g != kO && R > 0 && lc.dropout == 0.f && fwd_grouped_enabled() && nf4_dequant_fast_enabled() &&
                     K % 8 == 0 && (K + R) % 8 == 0;
    const int64_t ld = fwd ? K + R : K;
    int64_t rows = 0;
    for (int i = i0; i < i0 + n; ++i) {
      const DLinear& p = L.proj[i];
      lc.dense[i] = nullptr;
      if (!p.is_nf4) continue;
      bf16* dst = w.layer_w.p + at;
      if (!fwd) nf4_dequantize(dst, p.nf4);
      else MIMIC_CHECK(nf4_dequantize_fast(dst, p.nf4, 0, nullptr, ld), "EINTERNAL", "layer ", l,
                       ": the strided dequantize refused a projection of ", p.M, " x ", p.K);
      lc.dense[i] = dst;
      at += (size_t)p.M * ld;
      rows += p.M;
    }
    lc.group_w[g] = nullptr;
    lc.group_fwd[g] = false;
    if (!all || !bwd_grouped_enabled()) continue;  // (off: the rows as before, no A copies)
    if (fwd) {  // each member's extra columns: zeros, its B [M, r] in its own h' columns
      const bf16* wrow = w.layer_w.p + g0;
      int64_t off = 0;
      for (int i = i0; i < i0 + n; ++i) {
        const DLinear& p = L.proj[i];
        const bool lora = has_lora(p);
        ext_cols_kernel<<<ew_grid((int64_t)p.M * R), 256, 0, st>>>(const_cast<bf16*>(wrow), ld, K, (int)R, p.M,
                                                                  lora ? lora_B(d, p) : nullptr, lora ? p.r : 0, (int)off);
        MIMIC_CUDA_LAUNCHED();
        if (lora) off += p.r;
        wrow += (size_t)p.M * ld;
      }
    }
    for (int i = i0; i < i0 + n; ++i) {  // the A rows (their first K columns; the rest is never read)
      const DLinear& p = L.proj[i];
      if (!has_lora(p)) continue;
      MIMIC_CUDA_CHECK(cudaMemcpy2DAsync(w.layer_w.p + at, sizeof(bf16) * ld, lora_A(d, p), sizeof(bf16) * p.K,
                                         sizeof(bf16) * p.K, p.r, cudaMemcpyDeviceToDevice, st));
      at += (size_t)p.r * ld;
      rows += p.r;
    }
    lc.group_w[g] = w.layer_w.p + g0;
    lc.group_rows[g] = rows;
    lc.group_ld[g] = ld;
    lc.group_fwd[g] = fwd;
  }
  lc.layer = &L;
}

// A forward of N rows over all layers with the dequantize one projection ahead (dequant_ahead.h), where
// MIMIC_DEQUANT_AHEAD=1 and N > kNF4GemmSmallMaxS (fewer rows multiply the 4-bit codes directly):
// the NF4 weights in the order layer_forward multiplies them. end() — or leaving the scope, an error
// included — makes the main stream wait for the side stream.
class AheadScope {
 public:
  AheadScope(DeviceModel& d, LinCtx& lc, int64_t N) : a_(d.ws->ahead), lc_(lc) {
    if (N <= kNF4GemmSmallMaxS || !dequant_ahead_enabled()) return;
    std::vector<const NF4Device*> seq;
    for (const DLayer& L : d.layers)
      for (const DLinear& p : L.proj)
        if (p.is_nf4) seq.push_back(&p.nf4);
    if (seq.empty()) return;
    a_.begin(std::move(seq));
    lc.ahead = &a_;
  }
  void end() {
    lc_.ahead = nullptr;
    a_.end();
  }
  ~AheadScope() {
    try { end(); } catch (...) {}  // (an error already on its way out)
  }

 private:
  DequantAhead& a_;
  LinCtx& lc_;
};

// recompute: the pass before this layer's backward, which reads everything the forward keeps in a but
// not its output (xs[l + 1] already holds it, consumed by the layer above): the down projection's base
// product, its LoRA B product and the closing residual are skipped — only down's h = act·Aᵀ (dB's
// input) is made. MIMIC_RECOMPUTE_FULL=1 runs the whole layer (the A/B leg; same bits either way).
// attn_kept (with recompute, recompute_keep_attn): a's q, k, v (roped), att and lse are this
// layer's from the first forward (swap_attn), so the q/k/v products, RoPE and the attention are
// skipped too — only q/k/v's LoRA h (dB's input) is made from the renormed x.
void layer_forward(DeviceModel& d, int l, Acts& a, const float* x, float* out, const LayerRun& run, LinCtx& lc,
                   uint64_t seed_base, bool recompute = false, bool attn_kept = false) {
  const LlamaConfig& c = d.cfg;
  const DLayer& L = d.layers[l];
  Workspace& w = *d.ws;
  const int64_t N = (int64_t)run.B * run.T, C = c.hidden_size;
  const int Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
  auto seed = [&](int i) { lc.seed = proj_seed(seed_base, l, i); };
  for (int g = 0; g < kGroups; ++g) a.hx[g] = fgrouped(lc, g);
  a.ld_xn1 = a.hx[kQKV] ? lc.group_ld[kQKV] : C;
  a.ld_xn2 = a.hx[kGateUp] ? lc.group_ld[kGateUp] : C;
  a.ld_act = a.hx[kDown] ? lc.group_ld[kDown] : c.intermediate_size;
  rmsnorm_forward(a.xn1.p, a.rstd1.p, x, L.in_norm.p, N, C, c.rms_norm_eps, a.ld_xn1);
  if (attn_kept) {
    if (a.hx[kQKV]) group_forward(lc, kQKV, nullptr, a.xn1.p, N, L, /*h_only=*/true);
    else
      for (int i = 0; i < 3; ++i) {
        seed(i);
        lin_forward_h(lc, a.xn1.p, N, L.proj[i], a.lh[i].p);
      }
  } else if (a.hx[kQKV]) {
    bf16* const ys[3] = {a.q.p, a.k.p, a.v.p};
    group_forward(lc, kQKV, ys, a.xn1.p, N, L);
  } else {
    seed(0); lin_forward(lc, a.q.p, a.xn1.p, N, L.proj[0], a.lh[0].p);
    seed(1); lin_forward(lc, a.k.p, a.xn1.p, N, L.proj[1], a.lh[1].p);
    seed(2); lin_forward(lc, a.v.p, a.xn1.p, N, L.proj[2], a.lh[2].p);
  }
  if (!attn_kept) {
    rope_forward(a.q.p, w.pos.p, d.inv_freq.p, N, Hq, D);
    rope_forward(a.k.p, w.pos.p, d.inv_freq.p, N, Hkv, D);
    if (run.cache) {
      DeviceKV& kv = *run.cache;
      const size_t row = (size_t)Hkv * D;
      MIMIC_CUDA_CHECK(cudaMemcpyAsync(kv.k[l].p + (size_t)kv.len * row, a.k.p, sizeof(bf16) * row * N,
                                       cudaMemcpyDeviceToDevice, stream()));
      MIMIC_CUDA_CHECK(cudaMemcpyAsync(kv.v[l].p + (size_t)kv.len * row, a.v.p, sizeof(bf16) * row * N,
                                       cudaMemcpyDeviceToDevice, stream()));
      attention_forward(a.att.p, nullptr, a.q.p, kv.k[l].p, kv.v[l].p, 1, run.T, kv.len + run.T, kv.len, Hq, Hkv, D);
    } else {
      attention_forward(a.att.p, a.lse.p, a.q.p, a.k.p, a.v.p, run.B, run.T, run.T, 0, Hq, Hkv, D);
    }
  }
  seed(3); lin_forward(lc, w.y16.p, a.att.p, N, L.proj[3], a.lh[3].p);
  residual_kernel<<<ew_grid(N * C), 256, 0, stream()>>>(a.h.p, x, w.y16.p, N * C);
  MIMIC_CUDA_LAUNCHED();
  rmsnorm_forward(a.xn2.p, a.rstd2.p, a.h.p, L.post_norm.p, N, C, c.rms_norm_eps, a.ld_xn2);
  if (a.hx[kGateUp]) {
    bf16* const ys[2] = {a.gate.p, a.up.p};
    group_forward(lc, kGateUp, ys, a.xn2.p, N, L);
  } else {
    seed(4); lin_forward(lc, a.gate.p, a.xn2.p, N, L.proj[4], a.lh[4].p);
    seed(5); lin_forward(lc, a.up.p, a.xn2.p, N, L.proj[5], a.lh[5].p);
  }
  swiglu_forward(a.act.p, a.gate.p, a.up.p, N, c.intermediate_size, a.ld_act);
  if (recompute && !recompute_full()) {
    if (a.hx[kDown]) group_forward(lc, kDown, nullptr, a.act.p, N, L, /*h_only=*/true);
    else { seed(6); lin_forward_h(lc, a.act.p, N, L.proj[6], a.lh[6].p); }
    return;
  }
  if (a.hx[kDown]) {
    bf16* const ys[1] = {w.y16.p};
    group_forward(lc, kDown, ys, a.act.p, N, L);
  } else {
    seed(6); lin_forward(lc, w.y16.p, a.act.p, N, L.proj[6], a.lh[6].p);
  }
  residual_kernel<<<ew_grid(N * C), 256, 0, stream()>>>(out, a.h.p, w.y16.p, N * C);
  MIMIC_CUDA_LAUNCHED();
}

// w.dres holds d(out) on entry and d(x) on return.
void layer_backward(DeviceModel& d, int l, Acts& a, const float* x, const LayerRun& run, LinCtx& lc,
                    uint64_t seed_base) {
  const LlamaConfig& c = d.cfg;
  const DLayer& L = d.layers[l];
  Workspace& w = *d.ws;
  const int64_t N = (int64_t)run.B * run.T, C = c.hidden_size, I = c.intermediate_size;
  const int Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
  auto seed = [&](int i) { lc.seed = proj_seed(seed_base, l, i); };
  for (int i = 0; i < 7; ++i) lc.member_seed[i] = proj_seed(seed_base, l, i);  // (group_backward's masks)
  const bf16* lh[7];
  for (int i = 0; i < 7; ++i) lh[i] = a.lh[i].p;
  for (int g : {kQKV, kGateUp, kDown})  // (rows the forward left strided need group_backward)
    MIMIC_CHECK(!a.hx[g] || grouped(lc, g), "EINTERNAL", "layer ", l, ": the forward's grouped rows without the grouped backward");
  int64_t cols = 0;  // the widest grouped block's [dy | dh] row
  for (int g = 0; g < kGroups; ++g)
    if (grouped(lc, g)) cols = std::max(cols, lc.group_rows[g]);
  if (cols) w.dycat.reserve(N * cols);
  bf16* dyc = w.dycat.p;
  // dres → bf16 dy of o / down: as the first columns of the group's buffer where grouped
  auto dy_of_dres = [&](int g) {
    if (grouped(lc, g)) {
      f32_to_bf16_rows_kernel<<<ew_grid(N * C), 256, 0, stream()>>>(dyc, lc.group_rows[g], w.dres.p, N, (int)C);
    } else {
      f32_to_bf16_kernel<<<ew_grid(N * C), 256, 0, stream()>>>(w.dy16.p, w.dres.p, N * C);
    }
    MIMIC_CUDA_LAUNCHED();
  };
  // MLP
  dy_of_dres(kDown);
  if (grouped(lc, kDown)) group_backward<bf16>(lc, kDown, w.dact.p, 0.f, dyc, a.act.p, a.ld_act, a.hx[kDown], N, L, lh + 6);
  else { seed(6); lin_backward<bf16>(lc, w.dact.p, 0.f, w.dy16.p, a.act.p, N, L.proj[6], lh[6]); }
  if (grouped(lc, kGateUp)) {
    const int64_t ld = lc.group_rows[kGateUp];
    swiglu_backward(dyc, dyc + I, w.dact.p, a.gate.p, a.up.p, N, (int)I, /*accumulate=*/false, ld);
    group_backward<float>(lc, kGateUp, w.dn.p, 0.f, dyc, a.xn2.p, a.ld_xn2, a.hx[kGateUp], N, L, lh + 4);
  } else {
    w.dgate.reserve(N * I); w.dup.reserve(N * I);
    swiglu_backward(w.dgate.p, w.dup.p, w.dact.p, a.gate.p, a.up.p, N, (int)I, /*accumulate=*/false);
    seed(4); lin_backward<float>(lc, w.dn.p, 0.f, w.dgate.p, a.xn2.p, N, L.proj[4], lh[4]);
    seed(5); lin_backward<float>(lc, w.dn.p, 1.f, w.dup.p, a.xn2.p, N, L.proj[5], lh[5]);
  }
  rmsnorm_backward(w.dres.p, w.dn.p, a.h.p, L.post_norm.p, a.rstd2.p, N, (int)C);
  // attention
  dy_of_dres(kO);
  if (grouped(lc, kO)) group_backward<bf16>(lc, kO, w.datt.p, 0.f, dyc, a.att.p, (int64_t)Hq * D, false, N, L, lh + 3);
  else { seed(3); lin_backward<bf16>(lc, w.datt.p, 0.f, w.dy16.p, a.att.p, N, L.proj[3], lh[3]); }
  const int64_t QD = (int64_t)Hq * D, KD = (int64_t)Hkv * D;
  zero(w.dq.p, sizeof(bf16) * N * QD);
  zero(w.dk.p, sizeof(bf16) * N * KD);
  zero(w.dv.p, sizeof(bf16) * N * KD);
  attention_backward(w.dq.p, w.dk.p, w.dv.p, w.datt.p, a.q.p, a.k.p, a.v.p, a.att.p, a.lse.p, run.B, run.T, Hq, Hkv, D);
  rope_backward(w.dq.p, w.pos.p, d.inv_freq.p, N, Hq, D);
  rope_backward(w.dk.p, w.pos.p, d.inv_freq.p, N, Hkv, D);
  if (grouped(lc, kQKV)) {  // dq, dk, dv copied in as the group's first columns (the attention writes them dense)
    const int64_t ld = lc.group_rows[kQKV];
    const std::pair<const bf16*, int64_t> parts[3] = {{w.dq.p, QD}, {w.dk.p, KD}, {w.dv.p, KD}};
    int64_t at = 0;
    for (auto [src, width] : parts) {
      MIMIC_CUDA_CHECK(cudaMemcpy2DAsync(dyc + at, sizeof(bf16) * ld, src, sizeof(bf16) * width, sizeof(bf16) * width, N,
                                         cudaMemcpyDeviceToDevice, stream()));
      at += width;
    }
    group_backward<float>(lc, kQKV, w.dn.p, 0.f, dyc, a.xn1.p, a.ld_xn1, a.hx[kQKV], N, L, lh);
  } else {
    seed(0); lin_backward<float>(lc, w.dn.p, 0.f, w.dq.p, a.xn1.p, N, L.proj[0], lh[0]);
    seed(1); lin_backward<float>(lc, w.dn.p, 1.f, w.dk.p, a.xn1.p, N, L.proj[1], lh[1]);
    seed(2); lin_backward<float>(lc, w.dn.p, 1.f, w.dv.p, a.xn1.p, N, L.proj[2], lh[2]);
  }
  rmsnorm_backward(w.dres.p, w.dn.p, x, L.in_norm.p, a.rstd1.p, N, (int)C);
}

DLinear upload_linear(const Linear& L, size_t& bytes) {
  DLinear d;
  d.M = L.M;
  d.K = L.K;
  if (L.nf4) {
    d.is_nf4 = true;
    d.nf4 = nf4_upload(*L.nf4);
    bytes += d.nf4.bytes();
  } else {
    MIMIC_CHECK(L.W, "EINVAL", "linear ", L.name, " has no weight");
    d.W = upload_bf16(L.W, (size_t)L.M * L.K);
    bytes += d.W.bytes();
  }
  return d;
}

Linear* proj_of(LlamaLayer& L, int i) {
  Linear* p[7] = {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down};
  return p[i];
}
const Linear* proj_of(const LlamaLayer& L, int i) { return proj_of(const_cast<LlamaLayer&>(L), i); }

}  // namespace

// ---- model -------------------------------------------------------------------------------------
std::unique_ptr<DeviceModel> upload_model(const LlamaModel& m) {
  Context::get();
  auto d = std::make_unique<DeviceModel>();
  d->cfg = m.cfg;
  const LlamaConfig& c = m.cfg;
  size_t bytes = 0;
  d->embed = upload_bf16(m.embed.data(), m.embed.size());
  bytes += d->embed.bytes();
  if (!m.lm_head.empty()) { d->lm_head = upload_bf16(m.lm_head.data(), m.lm_head.size()); bytes += d->lm_head.bytes(); }
  d->final_norm = upload(m.final_norm);
  d->inv_freq = upload(m.inv_freq);
  d->layers.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    const LlamaLayer& L = m.layers[l];
    DLayer& D = d->layers[l];
    D.in_norm = upload(L.input_norm);
    D.post_norm = upload(L.post_attn_norm);
    for (int i = 0; i < 7; ++i) D.proj[i] = upload_linear(*proj_of(L, i), bytes);
  }
  d->weight_bytes = bytes;
  sync_lora_to_device(*d, m);
  return d;
}

void sync_lora_to_device(DeviceModel& d, const LlamaModel& m) {
  int64_t n = 0;
  for (int l = 0; l < d.cfg.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const Linear& L = *proj_of(m.layers[l], i);
      DLinear& D = d.layers[l].proj[i];
      if (L.lora && L.lora->r > 0) {
        D.src = L.lora.get(); D.r = L.lora->r; D.scale = L.lora->scale;
        D.offA = n; n += (int64_t)D.r * D.K;
        D.offB = n; n += (int64_t)D.M * D.r;
      } else {
        D.src = nullptr; D.r = 0; D.offA = D.offB = -1;
      }
    }
  d.lora_n = n;
  ++d.lora_version;
  if (n == 0) return;
  std::vector<float> host((size_t)n), grads((size_t)n, 0.f);
  for (int l = 0; l < d.cfg.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      DLinear& D = d.layers[l].proj[i];
      if (!D.src) continue;
      std::memcpy(&host[D.offA], D.src->A.data(), sizeof(float) * D.src->A.size());
      std::memcpy(&host[D.offB], D.src->B.data(), sizeof(float) * D.src->B.size());
      if (D.src->dA.size() == D.src->A.size()) std::memcpy(&grads[D.offA], D.src->dA.data(), sizeof(float) * D.src->dA.size());
      if (D.src->dB.size() == D.src->B.size()) std::memcpy(&grads[D.offB], D.src->dB.data(), sizeof(float) * D.src->dB.size());
    }
  if (d.lp.n < (size_t)n) { d.lp.alloc(n); d.lg.alloc(n); d.lm.alloc(n); d.lv.alloc(n); d.lb.alloc(n); }
  MIMIC_CUDA_CHECK(cudaMemcpy(d.lp.p, host.data(), sizeof(float) * n, cudaMemcpyHostToDevice));
  MIMIC_CUDA_CHECK(cudaMemcpy(d.lg.p, grads.data(), sizeof(float) * n, cudaMemcpyHostToDevice));
  MIMIC_CUDA_CHECK(cudaMemset(d.lm.p, 0, sizeof(float) * n));
  MIMIC_CUDA_CHECK(cudaMemset(d.lv.p, 0, sizeof(float) * n));
  to_bf16(d.lb.p, d.lp.p, n);
  Context::get().sync();
}

void sync_lora_to_host(DeviceModel& d, LlamaModel& m, bool grads) {
  if (!d.lora_n) return;
  Context::get().sync();
  std::vector<float> p = download(d.lp.p, d.lora_n), g;
  if (grads) g = download(d.lg.p, d.lora_n);
  for (int l = 0; l < d.cfg.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      DLinear& D = d.layers[l].proj[i];
      Linear& L = *proj_of(m.layers[l], i);
      if (!D.src || !L.lora) continue;
      LoraAdapter& a = *L.lora;
      std::memcpy(a.A.data(), &p[D.offA], sizeof(float) * a.A.size());
      std::memcpy(a.B.data(), &p[D.offB], sizeof(float) * a.B.size());
      if (grads) {
        a.dA.resize(a.A.size()); a.dB.resize(a.B.size());
        std::memcpy(a.dA.data(), &g[D.offA], sizeof(float) * a.A.size());
        std::memcpy(a.dB.data(), &g[D.offB], sizeof(float) * a.B.size());
      }
    }
}

void DeviceKV::init(const LlamaConfig& c, int max_len_) {
  max_len = max_len_;
  len = 0;
  graph.reset();
  k.clear(); v.clear();
  k.resize(c.num_layers); v.resize(c.num_layers);
  const size_t row = (size_t)c.num_kv_heads * c.head_dim;
  for (int l = 0; l < c.num_layers; ++l) { k[l].alloc(row * max_len); v[l].alloc(row * max_len); }
}

size_t DeviceKV::bytes() const {
  size_t b = 0;
  for (auto& x : k) b += x.bytes();
  for (auto& x : v) b += x.bytes();
  return b;
}

namespace {
size_t pool_budget() {
  if (const char* e = std::getenv("MIMIC_KV_POOL_MB")) return (size_t)std::max(0.0, std::atof(e)) << 20;
  return std::min<size_t>(size_t(4) << 30, Context::get().total_mem / 8);
}
}  // namespace

std::shared_ptr<DeviceKV> kv_acquire(DeviceModel& d, int max_len) {
  MIMIC_CHECK(max_len >= 1, "EINVAL", "a KV cache needs room for at least one token");
  KVPool& p = *d.kv_pool;
  {
    std::lock_guard<std::mutex> g(p.mu);
    int best = -1;
    for (int i = 0; i < (int)p.free.size(); ++i)
      if (p.free[i]->max_len >= max_len && (best < 0 || p.free[i]->max_len < p.free[best]->max_len)) best = i;
    if (best >= 0) {
      std::shared_ptr<DeviceKV> kv = std::move(p.free[best]);
      p.free.erase(p.free.begin() + best);
      p.bytes -= kv->bytes();
      ++p.hits;
      kv->len = 0;
      return kv;
    }
    ++p.misses;
  }
  auto kv = std::make_shared<DeviceKV>();
  const int rounded = (int)std::min<int64_t>(((int64_t)max_len + 255) / 256 * 256, std::max(max_len, d.cfg.max_position));
  kv->init(d.cfg, std::max(rounded, max_len));
  kv->pool = d.kv_pool;
  return kv;
}

void kv_release(std::shared_ptr<DeviceKV> kv) {
  if (!kv || kv->k.empty()) return;
  std::shared_ptr<KVPool> p = kv->pool.lock();
  if (!p) return;  // the model is gone: kv's buffers are freed with it here
  std::lock_guard<std::mutex> g(p->mu);
  if (!p->budget) p->budget = pool_budget();
  const size_t b = kv->bytes();
  if (p->bytes + b > p->budget) return;
  kv->len = 0;
  p->bytes += b;
  p->free.push_back(std::move(kv));
}

// ---- inference -----------------------------------------------------------------------------------
float* llama_forward(DeviceModel& d, const int32_t* ids, int T, DeviceKV* cache, float* logits, int n_logits) {
  const LlamaConfig& c = d.cfg;
  MIMIC_CHECK(T > 0, "EINVAL", "llama_forward: no tokens");
  for (int t = 0; t < T; ++t)
    MIMIC_CHECK(ids[t] >= 0 && ids[t] < c.vocab_size, "ERANGE", "token id ", ids[t], " at position ", t,
                " is out of range: the model's vocabulary has ", c.vocab_size, " tokens (ids 0..", c.vocab_size - 1,
                "). Was the text tokenized with this model's tokenizer?");
  const int start = cache ? cache->len : 0;
  if (cache)
    MIMIC_CHECK(start + T <= cache->max_len, "EFULL", "the KV cache holds ", cache->max_len, " tokens; ", start,
                " are used and ", T, " more do not fit. Create the session with a larger maxLength.");
  n_logits = std::max(1, std::min(n_logits, T));
  if (T == 1 && cache) {
    if (float* row = decode_step(d, ids[0], *cache)) {
      if (!logits) return row;
      MIMIC_CUDA_CHECK(cudaMemcpyAsync(logits, row, sizeof(float) * c.vocab_size, cudaMemcpyDeviceToHost, stream()));
      Context::get().sync();
      return nullptr;
    }
  }
  ensure_ws(d, T, 1, 1, false);
  Workspace& w = *d.ws;
  if (w.xs.size() < 2) w.xs.resize(2);
  for (auto& b : w.xs) b.reserve((size_t)T * c.hidden_size);
  std::vector<int32_t> pos(T);
  for (int t = 0; t < T; ++t) pos[t] = start + t;
  cudaStream_t st = stream();
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(w.ids.p, ids, sizeof(int32_t) * T, cudaMemcpyHostToDevice, st));
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(w.pos.p, pos.data(), sizeof(int32_t) * T, cudaMemcpyHostToDevice, st));
  embedding_forward(w.xs[0].p, w.ids.p, d.embed.p, T, c.hidden_size);
  LayerRun run{1, T, cache, start};
  LinCtx lc{d, w, 0.f, 0};
  AheadScope ahead(d, lc, T);
  for (int l = 0; l < c.num_layers; ++l)
    layer_forward(d, l, w.acts[0], w.xs[l & 1].p, w.xs[(l + 1) & 1].p, run, lc, 0);
  ahead.end();
  const float* xL = w.xs[c.num_layers & 1].p;
  const int64_t C = c.hidden_size, V = c.vocab_size;
  rmsnorm_forward(w.xnf.p, w.rstdf.p, xL, d.final_norm.p, T, (int)C, c.rms_norm_eps);
  w.logits32.reserve((size_t)n_logits * V);
  matmul_forward<float>(w.logits32.p, w.xnf.p + (size_t)(T - n_logits) * C, d.head(), n_logits, (int)C, (int)V);
  if (cache) cache->len += T;
  if (logits) {
    MIMIC_CUDA_CHECK(cudaMemcpyAsync(logits, w.logits32.p, sizeof(float) * n_logits * V, cudaMemcpyDeviceToHost, st));
    Context::get().sync();
    return nullptr;
  }
  return w.logits32.p + (size_t)(n_logits - 1) * V;
}

// ---- training ------------------------------------------------------------------------------------
void release_workspace(DeviceModel& d) {
  Context::get().sync();  // (nothing in flight may still read or write the buffers)
  d.ws.reset();
}

DeviceTrainer::DeviceTrainer(DeviceModel& d, Trainer& cpu) : d_(d), cpu_(cpu) {
  sync_lora_to_device(d_, cpu_.model());
  // Map every CPU param (PEFT order) to its slice of the arena.
  for (auto& p : cpu_.params()) {
    int64_t off = -1;
    for (auto& L : d_.layers)
      for (auto& D : L.proj) {
        if (!D.src) continue;
        if (p.p == &const_cast<LoraAdapter*>(D.src)->A) off = D.offA;
        if (p.p == &const_cast<LoraAdapter*>(D.src)->B) off = D.offB;
      }
    MIMIC_CHECK(off >= 0, "EINVAL", "CUDA trainer: parameter ", p.name, " is not attached to the model");
    param_off_.emplace_back(off, (int64_t)p.p->size());
  }
  push();
}

void DeviceTrainer::push() {
  // parameters and AdamW moments from the CPU trainer (setState / init), gradients zeroed
  auto& ps = cpu_.params();
  for (size_t i = 0; i < ps.size(); ++i) {
    auto [off, n] = param_off_[i];
    MIMIC_CUDA_CHECK(cudaMemcpy(d_.lp.p + off, ps[i].p->data(), sizeof(float) * n, cudaMemcpyHostToDevice));
    if ((int64_t)ps[i].m.size() == n)
      MIMIC_CUDA_CHECK(cudaMemcpy(d_.lm.p + off, ps[i].m.data(), sizeof(float) * n, cudaMemcpyHostToDevice));
    if ((int64_t)ps[i].v.size() == n)
      MIMIC_CUDA_CHECK(cudaMemcpy(d_.lv.p + off, ps[i].v.data(), sizeof(float) * n, cudaMemcpyHostToDevice));
  }
  to_bf16(d_.lb.p, d_.lp.p, d_.lora_n);
  zero_grad();
  Context::get().sync();
}

void DeviceTrainer::pull() {
  Context::get().sync();
  std::vector<float> p = download(d_.lp.p, d_.lora_n), g = download(d_.lg.p, d_.lora_n),
                     m = download(d_.lm.p, d_.lora_n), v = download(d_.lv.p, d_.lora_n);
  auto& ps = cpu_.params();
  for (size_t i = 0; i < ps.size(); ++i) {
    auto [off, n] = param_off_[i];
    ps[i].p->assign(p.begin() + off, p.begin() + off + n);
    ps[i].g->assign(g.begin() + off, g.begin() + off + n);
    ps[i].m.assign(m.begin() + off, m.begin() + off + n);
    ps[i].v.assign(v.begin() + off, v.begin() + off + n);
  }
}

void DeviceTrainer::zero_grad() { zero(d_.lg.p, sizeof(float) * d_.lora_n); }

LossSum DeviceTrainer::accumulate(const int32_t* ids, const int32_t* labels, int B, int T, const MicroBatchKey* key) {
  return run(ids, labels, B, T, true, key);
}
LossSum DeviceTrainer::evaluate(const int32_t* ids, const int32_t* labels, int B, int T) {
  return run(ids, labels, B, T, false);
}

LossSum DeviceTrainer::run(const int32_t* ids, const int32_t* labels, int B, int T, bool train, const MicroBatchKey* key) {
  const LlamaConfig& c = d_.cfg;
  MIMIC_CHECK(B > 0 && T > 0, "ESHAPE", "batch and seqLen must be positive, got ", B, " x ", T);
  const int64_t N = (int64_t)B * T, C = c.hidden_size, V = c.vocab_size;
  for (int64_t i = 0; i < N; ++i) {
    MIMIC_CHECK(ids[i] >= 0 && ids[i] < c.vocab_size, "EINVAL", "token id ", ids[i], " at ", i,
                " is outside the vocabulary [0, ", c.vocab_size, ")");
    MIMIC_CHECK(labels[i] == kIgnore || (labels[i] >= 0 && labels[i] < c.vocab_size), "EINVAL", "label ", labels[i],
                " at ", i, " is neither -100 nor a token id");
  }
  LossSum out;
  std::vector<int32_t> tgt((size_t)N), pos((size_t)N), rows;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      const int64_t n = (int64_t)b * T + t;
      tgt[n] = t + 1 < T ? labels[n + 1] : kIgnore;
      pos[n] = t;
      if (tgt[n] != kIgnore) { rows.push_back((int32_t)n); ++out.tokens; }
    }
  if (out.tokens == 0) return out;
  const bool recompute = cpu_.options().recompute;
  const float dropout = train ? cpu_.options().dropout : 0.f;
  const int n_acts = (train && !recompute) ? c.num_layers : 1;
  ensure_ws(d_, N, B, n_acts, train);
  Workspace& w = *d_.ws;
  if ((int)w.xs.size() < c.num_layers + 1) w.xs.resize(c.num_layers + 1);
  for (auto& x : w.xs) x.reserve((size_t)N * C);
  const bool keep_attn = train && recompute && recompute_keep_attn(w, c, N);  // (the room after all else)
  if (keep_attn) ensure_kept(w, c, N, c.num_layers);
  cudaStream_t st = stream();
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(w.ids.p, ids, sizeof(int32_t) * N, cudaMemcpyHostToDevice, st));
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(w.pos.p, pos.data(), sizeof(int32_t) * N, cudaMemcpyHostToDevice, st));
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(w.tgt.p, tgt.data(), sizeof(int32_t) * N, cudaMemcpyHostToDevice, st));
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(w.rows.p, rows.data(), sizeof(int32_t) * rows.size(), cudaMemcpyHostToDevice, st));
  zero(w.loss.p, sizeof(double));

  const uint64_t seed_base = key ? micro_batch_seed(cpu_.options().seed, *key)  // the micro-batch's place in the run
                                 : (cpu_.options().seed * 0x9E3779B97F4A7C15ull) ^ (++dropout_calls_ * 0xD1B54A32D192ED03ull);
  LinCtx lc{d_, w, dropout, 0};
  LayerRun run{B, T, nullptr, 0};
  embedding_forward(w.xs[0].p, w.ids.p, d_.embed.p, N, (int)C);
  AheadScope ahead(d_, lc, N);  // (the recompute below dequantizes a layer at a time: dequantize_layer)
  // MIMIC_FWD_GROUPED=1: the first forward dequantizes a layer at a time too (the same dequantize count as
  // each product's own) so that its groups run as group_forward (not beside the dequantize-ahead stream)
  const bool fwd_blocks = train && fwd_grouped_enabled() && !lc.ahead && layer_dense_enabled() && N > kNF4GemmSmallMaxS;
  for (int l = 0; l < c.num_layers; ++l) {
    if (fwd_blocks) dequantize_layer(d_, l, w, lc);
    layer_forward(d_, l, w.acts[n_acts == 1 ? 0 : l], w.xs[l].p, w.xs[l + 1].p, run, lc, seed_base);
    if (keep_attn) swap_attn(w.acts[0], w.kept[l]);
    lc.end_layer();
  }
  ahead.end();

  // head: final norm, then lm_head + CE over the rows with a target, a chunk at a time
  const float* xL = w.xs[c.num_layers].p;
  rmsnorm_forward(w.xnf.p, w.rstdf.p, xL, d_.final_norm.p, N, (int)C, c.rms_norm_eps);
  const int64_t R = std::max<int64_t>(1, std::min<int64_t>(out.tokens, (int64_t)(kHeadBytes / (V * sizeof(bf16)))));
  w.gath.reserve(R * C);
  w.logits16.reserve(R * V);
  w.dg.reserve(R * C);
  // the shifted targets of the compacted rows
  std::vector<int32_t> tg_rows(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) tg_rows[i] = tgt[rows[i]];
  DevBuf<int32_t>& tgr = w.tgt;  // reuse: targets of compacted rows
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(tgr.p, tg_rows.data(), sizeof(int32_t) * rows.size(), cudaMemcpyHostToDevice, st));
  if (train) zero(w.dxnf.p, sizeof(float) * N * C);
  for (int64_t r0 = 0; r0 < out.tokens; r0 += R) {
    const int64_t n = std::min(R, out.tokens - r0);
    gather_rows_kernel<<<(unsigned)n, 256, 0, st>>>(w.gath.p, w.xnf.p, w.rows.p + r0, (int)C);
    MIMIC_CUDA_LAUNCHED();
    matmul_forward<bf16>(w.logits16.p, w.gath.p, d_.head(), n, (int)C, (int)V);
    if (!train) {
      cross_entropy_forward<bf16>(w.logits16.p, tgr.p + r0, n, V, w.loss.p);
      continue;
    }
    cross_entropy_forward_backward<bf16>(w.logits16.p, tgr.p + r0, n, V, 1.f, w.loss.p);
    matmul_backward_input<float>(w.dg.p, w.logits16.p, d_.head(), n, (int)C, (int)V, 1.f, 0.f);
    scatter_rows_kernel<<<(unsigned)n, 256, 0, st>>>(w.dxnf.p, w.dg.p, w.rows.p + r0, (int)C);
    MIMIC_CUDA_LAUNCHED();
  }
  if (train) {
    zero(w.dres.p, sizeof(float) * N * C);
    rmsnorm_backward(w.dres.p, w.dxnf.p, xL, d_.final_norm.p, w.rstdf.p, N, (int)C);
    for (int l = c.num_layers - 1; l >= 0; --l) {
      Acts& a = w.acts[n_acts == 1 ? 0 : l];
      // one dequantize per NF4 weight for both the recompute and the backward-input GEMMs (round 10
      // profile, 2×512: the three dequantize passes of a step were 22 % of it); without recompute only
      // for group_backward's blocks (MIMIC_BWD_GROUPED=0: each product dequantizes its own)
      if (layer_dense_enabled() && N > kNF4GemmSmallMaxS && (n_acts == 1 || bwd_grouped_enabled()))
        dequantize_layer(d_, l, w, lc);
      if (n_acts == 1) {
        // recompute this layer's activations from its saved input (all but its output: xs[l + 1] keeps
        // the value the layer above's backward already consumed)
        w.dn.reserve((size_t)N * C);
        if (keep_attn) swap_attn(a, w.kept[l]);
        layer_forward(d_, l, a, w.xs[l].p, w.xs[l + 1].p, run, lc, seed_base, /*recompute=*/true, keep_attn);
      }
      layer_backward(d_, l, a, w.xs[l].p, run, lc, seed_base);
      lc.end_layer();
    }
  }
  double loss = 0;
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(&loss, w.loss.p, sizeof(double), cudaMemcpyDeviceToHost, st));
  Context::get().sync();
  out.loss_sum = loss;
  peak_ = std::max(peak_, device_memory_used());
  return out;
}

double DeviceTrainer::step(const StepOptions& o) {
  MIMIC_CHECK(std::isfinite(o.grad_scale) && o.grad_scale > 0.f, "EINVAL",
              "gradScale must be a positive number (1 / unmasked tokens of the accumulated batch), got ", o.grad_scale);
  MIMIC_CHECK(o.max_grad_norm >= 0.f, "EINVAL", "maxGradNorm must be >= 0 (0 = no clipping), got ", o.max_grad_norm);
  const int64_t n = d_.lora_n;
  Workspace& w = *(d_.ws ? d_.ws : (d_.ws = std::make_shared<Workspace>()));
  w.loss.reserve(2);
  scale_inplace(d_.lg.p, n, o.grad_scale);
  zero(w.loss.p + 1, sizeof(double));
  sum_squares(d_.lg.p, n, w.loss.p + 1);
  double sq = 0;
  MIMIC_CUDA_CHECK(cudaMemcpyAsync(&sq, w.loss.p + 1, sizeof(double), cudaMemcpyDeviceToHost, stream()));
  Context::get().sync();
  const double norm = std::sqrt(sq);
  if (!std::isfinite(norm)) zero_grad();
  MIMIC_CHECK(std::isfinite(norm), "ENONFINITE", "the gradient holds NaN or infinite values (step ",
              cpu_.step_count() + 1, "): the adapter was not updated and the gradients were dropped; lower the "
              "learning rate or check the data");
  if (o.max_grad_norm > 0.f) {
    const double coef = (double)o.max_grad_norm / (norm + 1e-6);
    if (coef < 1.0) scale_inplace(d_.lg.p, n, (float)coef);
  }
  cpu_.set_step_count(cpu_.step_count() + 1);
  adamw_step(d_.lp.p, d_.lg.p, d_.lm.p, d_.lv.p, n, o.adamw, cpu_.step_count());
  to_bf16(d_.lb.p, d_.lp.p, n);
  zero_grad();
  Context::get().sync();
  return norm;
}

}  // namespace mimic::cuda
