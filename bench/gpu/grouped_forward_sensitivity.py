#!/usr/bin/env python3
"""How far one bf16 rounding less can move the 3B's loss — the question round 22 left on the grouped forward.

MIMIC_FWD_GROUPED=1 computes each LoRA'd projection as y = bf16(x·Wᵀ + s·h·Bᵀ) (one product, rounded
once) where the per-projection route computes y = bf16(bf16(x·Wᵀ) + s·h·Bᵀ). On the GPU (round 22, H100,
`mimic_cuda_check batch`: 2 × 128 tokens, r = 16 on all seven, B = ±0.05) the two routes' summed losses
were 1572.447 and 1573.081 — further apart than the whole LoRA's effect (B = 0: 1572.018). This replays
a Llama-3.2-3B-shaped model with random weights like bench/make_3b.py's (normal, std 0.02) in numpy,
every projection output, norm output and attention output rounded to bf16 as the CUDA path does, the
residual stream in fp32, and runs three routes side by side layer by layer: per projection with B,
grouped with B, per projection with B = 0. If rounding alone moved the loss by as much as the GPU saw,
|P − G| would be of the size of |P − B0| here; if it is orders smaller, the GPU's gap is a fault.
CPU only (2 cores: ~3 minutes). Prints one line per route and the two gaps.
"""
import numpy as np

C, L, HQ, HKV, D, I, V = 3072, 28, 24, 8, 128, 8192, 128256
R, S = 16, 2.0  # LoRA rank, scale α/r = 32/16
TB, TT = 2, 128
EPS, THETA = 1e-5, 500000.0


def bf16(a):
    """Round float32 to the nearest bf16 (ties to even), returned as float32."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = a.view(np.uint32)
    r = ((b >> 16) & 1) + np.uint32(0x7FFF)
    return ((b + r) & np.uint32(0xFFFF0000)).view(np.float32)


def rmsnorm(x):  # fp32 in, bf16 out (norm weights 1)
    return bf16(x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS))


def rope(x, pos, H):
    x = x.reshape(len(pos), H, D)
    inv = THETA ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    ang = pos[:, None].astype(np.float64) * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1).astype(np.float32)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1).astype(np.float32)[:, None, :]
    rot = np.concatenate([-x[..., D // 2:], x[..., :D // 2]], -1)
    return bf16(x * cos + rot * sin).reshape(len(pos), H * D)


def attention(q, k, v):
    out = np.empty_like(q)
    G = HQ // HKV
    mask = np.triu(np.full((TT, TT), -np.inf, dtype=np.float32), 1)
    for b in range(TB):
        sl = slice(b * TT, (b + 1) * TT)
        for h in range(HQ):
            qh = q[sl, h * D:(h + 1) * D]
            kh = k[sl, (h // G) * D:(h // G + 1) * D]
            vh = v[sl, (h // G) * D:(h // G + 1) * D]
            s = qh @ kh.T / np.sqrt(D) + mask
            p = np.exp(s - s.max(-1, keepdims=True))
            out[sl, h * D:(h + 1) * D] = (p / p.sum(-1, keepdims=True)) @ vh
    return bf16(out)


def lin(x, W, A, B, grouped):
    """One LoRA'd projection as the CUDA path rounds it."""
    if B is None:
        return bf16(x @ W.T)
    h = bf16(x @ A.T)
    if grouped:
        return bf16(x @ W.T + S * (h @ B.T))
    return bf16(bf16(x @ W.T) + S * (h @ B.T))


def batch(vocab):
    """The batch rows' TB × TT tokens: ids, labels (the first half of each sequence masked), shifted targets, positions."""
    n = TB * TT
    ids = np.array([(i * 37 + 5) % vocab for i in range(n)])
    labels = np.array([-100 if i % TT < TT // 2 else ids[i] for i in range(n)])
    tgt = np.array([labels[i + 1] if (i % TT) + 1 < TT else -100 for i in range(n)])
    return ids, labels, tgt, np.array([i % TT for i in range(n)])


def layer(x, P, pos, grouped):
    """One decoder layer on the fp32 residual x; P: the seven (W, A, B) in q k v o gate up down order."""
    xn = rmsnorm(x)
    q = rope(lin(xn, *P[0], grouped), pos, HQ)
    k = rope(lin(xn, *P[1], grouped), pos, HKV)
    v = lin(xn, *P[2], grouped)
    h = x + lin(attention(q, k, v), *P[3], False)  # (o is never forward-grouped: its x is the attention's output)
    xn2 = rmsnorm(h)
    g, u = lin(xn2, *P[4], grouped), lin(xn2, *P[5], grouped)
    return h + lin(bf16(g / (1 + np.exp(-g)) * u), *P[6], grouped)


def summed_loss(x, emb, tgt):
    """Final norm, the tied lm_head, cross-entropy summed over the rows with a target."""
    rows = tgt >= 0
    logits = (rmsnorm(x)[rows] @ emb.T).astype(np.float64)
    m = logits.max(-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(-1))
    return float((lse - logits[np.arange(rows.sum()), tgt[rows]]).sum())


def main():
    rng = np.random.default_rng(0)
    ids, _, tgt, pos = batch(128000)
    emb = bf16(rng.standard_normal((V, C), dtype=np.float32) * 0.02)
    routes = {"per projection, B": (False, True), "grouped, B": (True, True), "per projection, B = 0": (False, False)}
    xs = {k: emb[ids].astype(np.float32) for k in routes}
    shapes = [(HQ * D, C), (HKV * D, C), (HKV * D, C), (C, HQ * D), (I, C), (I, C), (C, I)]
    for li in range(L):
        Ws = [bf16(rng.standard_normal(s, dtype=np.float32) * 0.02) for s in shapes]
        As = [bf16(rng.uniform(-1, 1, (R, s[1])).astype(np.float32) / np.sqrt(s[1])) for s in shapes]
        Bs = [bf16(rng.integers(-1000, 1001, (s[0], R)).astype(np.float32) * 5e-5) for s in shapes]
        for k, (grouped, with_b) in routes.items():
            P = [(Ws[i], As[i], Bs[i] if with_b else np.zeros_like(Bs[i])) for i in range(7)]
            xs[k] = layer(xs[k], P, pos, grouped)
        print(f"layer {li + 1}/{L}: |x_G − x_P| / |x_P| {np.abs(xs['grouped, B'] - xs['per projection, B']).max() / np.abs(xs['per projection, B']).max():.3e}", flush=True)
    loss = {}
    for k in routes:
        loss[k] = summed_loss(xs[k], emb, tgt)
        print(f"{k}: summed loss {loss[k]:.6f} over {int((tgt >= 0).sum())} tokens")
    p, g, z = loss["per projection, B"], loss["grouped, B"], loss["per projection, B = 0"]
    print(f"|P − G| = {abs(p - g):.4g} (one rounding less)   |P − B0| = {abs(p - z):.4g} (the LoRA's whole effect)   "
          f"ratio {abs(p - g) / max(abs(p - z), 1e-30):.3g}   (GPU, round 22: 0.634 / 0.429 = 1.48)")


if __name__ == "__main__":
    main()
