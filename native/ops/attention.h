// attention — causal grouped-query scaled-dot-product attention (flash-style: no T×T matrix
// is kept; the backward recomputes scores from q, k and the saved log-sum-exp).
//
// Shapes (row-major, B sequences):
//   q   [B, Tq, Hq,  D]      out [B, Tq, Hq, D]      lse [B, Hq, Tq]   (natural log)
//   k,v [B, Tk, Hkv, D]      Hq = G · Hkv: query head h reads KV head h / G
// Query i of a sequence sits at absolute position q_offset + i and sees keys j <= q_offset + i
// (Tk = q_offset + Tq). Training uses q_offset = 0, Tq = Tk = T; KV-cached decoding passes the
// cache as k, v with q_offset = tokens already cached.
//   s_ij = (q_i · k_j) / sqrt(D);  p = softmax_j(s);  out_i = Σ_j p_ij v_j;  lse_i = log Σ_j e^{s_ij}
// backward (training shapes, q_offset = 0):
//   dp_ij = dout_i · v_j;  ds_ij = p_ij (dp_ij − Σ_j p_ij dp_ij) / sqrt(D)
//   dq_i += Σ_j ds_ij k_j;  dk_j += Σ_i ds_ij q_i;  dv_j += Σ_i p_ij dout_i   (summed over the G
//   query heads that share a KV head)
// lse may be null in forward when no backward follows (inference).
#pragma once
#include <cstdint>

namespace mimic::cpu {
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       int B, int Tq, int Tk, int q_offset, int Hq, int Hkv, int D);
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* out, const float* lse,
                        int B, int T, int Hq, int Hkv, int D);
}  // namespace mimic::cpu
