#!/usr/bin/env python3
# attention_tc_emu.py — no-GPU sanity check of attention_tc.cu: a lane-level numpy emulation of its
# ldmatrix / mma.m16n8k16 fragment logic, tiling, masks and online softmax (transcribed from the kernels),
# against a float64 reference. Not a substitute for the op-check rows on the GPU.  python3 bench/gpu/attention_tc_emu.py
import numpy as np
L = np.arange(32); G = L >> 2; T4 = L & 3
def bf(x):
    x = np.asarray(x, np.float32); u = x.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)
def ldsm(sm, rows, cols, trans):
    # rows/cols: per lane start address (row, col) of an 8-element row; returns regs[4][32][2]
    out = np.zeros((4, 32, 2), np.float32)
    for mi in range(4):
        M = np.stack([sm[rows[8*mi+r], cols[8*mi+r]:cols[8*mi+r]+8] for r in range(8)])  # 8x8
        for l in range(32):
            if not trans: out[mi, l] = M[l >> 2, 2*(l & 3):2*(l & 3)+2]
            else: out[mi, l] = M[2*(l & 3):2*(l & 3)+2, l >> 2]
    return out
def mma(c, a, b0, b1):
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for l in range(32):
        g, t = l >> 2, l & 3
        A[g, 2*t:2*t+2] = a[0][l]; A[g+8, 2*t:2*t+2] = a[1][l]
        A[g, 2*t+8:2*t+10] = a[2][l]; A[g+8, 2*t+8:2*t+10] = a[3][l]
        B[2*t:2*t+2, g] = b0[l]; B[2*t+8:2*t+10, g] = b1[l]
    C = A @ B
    for l in range(32):
        g, t = l >> 2, l & 3
        c[l, 0:2] += C[g, 2*t:2*t+2]; c[l, 2:4] += C[g+8, 2*t:2*t+2]
def lda(sm, row0, col0):
    return ldsm(sm, row0 + (L & 15), col0 + (L >> 4) * 8, False)
def ldb_nk(sm, n0, k0):
    mi, r = L >> 3, L & 7
    return ldsm(sm, n0 + (mi >> 1) * 8 + r, k0 + (mi & 1) * 8, False)
def ldb_kn(sm, k0, n0):
    mi, r = L >> 3, L & 7
    return ldsm(sm, k0 + (mi & 1) * 8 + r, n0 + (mi >> 1) * 8, True)
def gemm_abt(acc, asm_or_frags, row0, msm, D, regs=False):
    for kk in range(D // 16):
        a = asm_or_frags[kk] if regs else lda(asm_or_frags, row0, kk * 16)
        for np_ in range(4):
            b = ldb_nk(msm, np_ * 16, kk * 16)
            mma(acc[2*np_], a, b[0], b[1]); mma(acc[2*np_+1], a, b[2], b[3])
def pack(p, kk):  # C accumulators -> A fragment (bf16-rounded)
    return [bf(np.stack([p[2*kk][:, 0], p[2*kk][:, 1]], 1)), bf(np.stack([p[2*kk][:, 2], p[2*kk][:, 3]], 1)),
            bf(np.stack([p[2*kk+1][:, 0], p[2*kk+1][:, 1]], 1)), bf(np.stack([p[2*kk+1][:, 2], p[2*kk+1][:, 3]], 1))]
def gemm_pm(acc, p, msm, D):
    for kk in range(4):
        a = pack(p, kk)
        for dp in range(D // 16):
            b = ldb_kn(msm, kk * 16, dp * 16)
            mma(acc[2*dp], a, b[0], b[1]); mma(acc[2*dp+1], a, b[2], b[3])
def tile(X, r0, n):  # X [rows, D] -> 64-row tile, zero-filled
    t = np.zeros((64, X.shape[1]), np.float32); m = min(64, max(0, n - r0))
    if m > 0: t[:m] = X[r0:r0+m]
    return t
def zeros8(): return [np.zeros((32, 4)) for _ in range(8)]

def fwd(q, k, v, Tq, Tk, qoff, D):  # one head; q [Tq,D], k/v [Tk,D]
    out = np.zeros((Tq, D)); lse = np.zeros(Tq); sl2 = D ** -0.5 * 1.4426950408889634
    for qt in range((Tq + 63) // 64):
        i0 = qt * 64; qs = tile(q, i0, Tq)
        kend = min(Tk, qoff + min(Tq, i0 + 64)); nt = (kend + 63) // 64
        for w in range(4):
            qf = [lda(qs, w * 16, kk * 16) for kk in range(D // 16)]
            row_a = i0 + w * 16 + G
            m = [np.full(32, -np.inf), np.full(32, -np.inf)]; l = [np.zeros(32), np.zeros(32)]
            o = [np.zeros((32, 4)) for _ in range(D // 8)]
            for t in range(nt):
                j0 = t * 64; kb = tile(k, j0, Tk); vb = tile(v, j0, Tk)
                s = zeros8(); gemm_abt(s, qf, 0, kb, D, regs=True)
                if j0 + 63 > qoff + i0 or j0 + 64 > Tk:
                    for n in range(8):
                        for c in range(4):
                            j = j0 + n * 8 + 2 * T4 + (c & 1); i = row_a + (c >> 1) * 8
                            s[n][:, c] = np.where((j > qoff + i) | (j >= Tk), -np.inf, s[n][:, c])
                for r in range(2):
                    mx = np.full(32, -np.inf)
                    for n in range(8): mx = np.maximum(mx, np.maximum(s[n][:, 2*r], s[n][:, 2*r+1]))
                    mx = mx.reshape(8, 4).max(1).repeat(4) * sl2
                    mn = np.maximum(m[r], mx); base = np.where(mn == -np.inf, 0, mn)
                    corr = np.exp2(m[r] - base); m[r] = mn; rs = np.zeros(32)
                    for n in range(8):
                        for cc in (2*r, 2*r+1):
                            s[n][:, cc] = np.exp2(s[n][:, cc] * sl2 - base); rs += s[n][:, cc]
                    l[r] = l[r] * corr + rs
                    for n in range(D // 8): o[n][:, 2*r] *= corr; o[n][:, 2*r+1] *= corr
                gemm_pm(o, s, vb, D)
            for r in range(2):
                lt = l[r].reshape(8, 4).sum(1).repeat(4)
                for lane in range(32):
                    i = row_a[lane] + r * 8
                    if i >= Tq: continue
                    for n in range(D // 8):
                        out[i, n*8 + 2*T4[lane]: n*8 + 2*T4[lane] + 2] = o[n][lane, 2*r:2*r+2] / lt[lane]
                    lse[i] = (m[r][lane] + np.log2(lt[lane])) * np.log(2)
    return out, lse

def bwd(q, k, v, dout, o, lse, T, D, Gq):  # q/dout/o [Gq,T,D] (heads of one kv head), k/v [T,D]
    sc = D ** -0.5; sl2 = sc * 1.4426950408889634
    delta = (dout * o).sum(-1)  # [Gq,T]
    dq = np.zeros_like(q); dk = np.zeros((T, D)); dv = np.zeros((T, D))
    for h in range(Gq):
        for qt in range((T + 63) // 64):
            i0 = qt * 64; qs = tile(q[h], i0, T); dos = tile(dout[h], i0, T)
            nt = (min(T, i0 + 64) + 63) // 64
            for w in range(4):
                row_a = i0 + w * 16 + G
                lse2 = [np.where(row_a + r*8 < T, lse[h][np.minimum(row_a + r*8, T-1)] * 1.4426950408889634, 0) for r in range(2)]
                de = [np.where(row_a + r*8 < T, delta[h][np.minimum(row_a + r*8, T-1)], 0) for r in range(2)]
                acc = [np.zeros((32, 4)) for _ in range(D // 8)]
                for t in range(nt):
                    j0 = t * 64; kb = tile(k, j0, T); vb = tile(v, j0, T)
                    s = zeros8(); dp = zeros8()
                    gemm_abt(s, qs, w * 16, kb, D); gemm_abt(dp, dos, w * 16, vb, D)
                    need = j0 + 63 > i0 or j0 + 64 > T
                    for n in range(8):
                        for c in range(4):
                            r = c >> 1; i = row_a + r * 8; j = j0 + n * 8 + 2 * T4 + (c & 1)
                            p = np.exp2(s[n][:, c] * sl2 - lse2[r])
                            if need: p = np.where((j > i) | (j >= T) | (i >= T), 0, p)
                            s[n][:, c] = p * (dp[n][:, c] - de[r])
                    gemm_pm(acc, s, kb, D)
                for r in range(2):
                    for lane in range(32):
                        i = row_a[lane] + r * 8
                        if i >= T: continue
                        for n in range(D // 8):
                            dq[h, i, n*8 + 2*T4[lane]: n*8 + 2*T4[lane] + 2] += acc[n][lane, 2*r:2*r+2] * sc
    for kt in range((T + 63) // 64):
        j0 = kt * 64; ks = tile(k, j0, T); vs = tile(v, j0, T); nq = (T - j0 + 63) // 64
        for w in range(4):
            key_a = j0 + w * 16 + G
            dka = [np.zeros((32, 4)) for _ in range(D // 8)]; dva = [np.zeros((32, 4)) for _ in range(D // 8)]
            for it in range(Gq * nq):
                h = it // nq; i0 = j0 + (it % nq) * 64
                qb = tile(q[h], i0, T); db = tile(dout[h], i0, T)
                lb = np.array([lse[h][i0 + x] * 1.4426950408889634 if i0 + x < T else np.inf for x in range(64)])
                deb = np.array([delta[h][i0 + x] if i0 + x < T else 0 for x in range(64)])
                s = zeros8(); dp = zeros8()
                gemm_abt(s, ks, w * 16, qb, D); gemm_abt(dp, vs, w * 16, db, D)
                need = i0 < j0 + 63 or i0 + 64 > T
                for n in range(8):
                    for c in range(4):
                        col = n * 8 + 2 * T4 + (c & 1); i = i0 + col; j = key_a + (c >> 1) * 8
                        p = np.exp2(s[n][:, c] * sl2 - lb[col])
                        if need: p = np.where((j > i) | (i >= T) | (j >= T), 0, p)
                        s[n][:, c] = p; dp[n][:, c] = p * (dp[n][:, c] - deb[col])
                gemm_pm(dva, s, db, D); gemm_pm(dka, dp, qb, D)
            for r in range(2):
                for lane in range(32):
                    j = key_a[lane] + r * 8
                    if j >= T: continue
                    for n in range(D // 8):
                        sl = slice(n*8 + 2*T4[lane], n*8 + 2*T4[lane] + 2)
                        dk[j, sl] += dka[n][lane, 2*r:2*r+2] * sc; dv[j, sl] += dva[n][lane, 2*r:2*r+2]
    return dq, dk, dv

def ref_fwd(q, k, v, qoff):
    Tq, D = q.shape; Tk = k.shape[0]; s = q @ k.T / np.sqrt(D)
    mask = np.arange(Tk)[None, :] > (qoff + np.arange(Tq))[:, None]; s[mask] = -np.inf
    mx = s.max(1, keepdims=True); p = np.exp(s - mx); l = p.sum(1, keepdims=True)
    return (p / l) @ v, (mx + np.log(l))[:, 0], p / l
def rel(a, b): return np.abs(a - b).max() / np.abs(b).max()

rng = np.random.default_rng(0)
D = 128
for (Tq, qoff) in [(150, 0), (100, 60)]:
    Tk = Tq + qoff
    q = bf(rng.standard_normal((Tq, D))); k = bf(rng.standard_normal((Tk, D))); v = bf(rng.standard_normal((Tk, D)))
    o, lse = fwd(q, k, v, Tq, Tk, qoff, D); ro, rl, _ = ref_fwd(q.astype(float), k.astype(float), v.astype(float), qoff)
    print(f"fwd Tq={Tq} qoff={qoff}: out rel {rel(o, ro):.2e} lse rel {rel(lse, rl):.2e}")
T, Gq = 150, 3
q = bf(rng.standard_normal((Gq, T, D))); k = bf(rng.standard_normal((T, D))); v = bf(rng.standard_normal((T, D)))
dout = bf(rng.standard_normal((Gq, T, D)))
rdq = np.zeros((Gq, T, D)); rdk = np.zeros((T, D)); rdv = np.zeros((T, D)); O = np.zeros((Gq, T, D)); LSE = np.zeros((Gq, T))
for h in range(Gq):
    o_, l_, P = ref_fwd(q[h].astype(float), k.astype(float), v.astype(float), 0); O[h] = bf(o_); LSE[h] = l_
    dP = dout[h] @ v.T; dS = P * (dP - (dout[h] * O[h]).sum(-1, keepdims=True)) / np.sqrt(D)
    rdq[h] = dS @ k; rdk += dS.T @ q[h]; rdv += P.T @ dout[h]
dq, dk, dv = bwd(q, k, v, dout, O, LSE, T, D, Gq)
print(f"bwd T={T} G={Gq}: dq rel {rel(dq, rdq):.2e} dk rel {rel(dk, rdk):.2e} dv rel {rel(dv, rdv):.2e}")
