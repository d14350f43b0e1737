"""The grouped training passes' buffer layout (native/cuda/llama_cuda.cu: dequantize_layer, group_forward,
group_backward), emulated on the CPU: the same sequence of cuBLAS calls with the same offsets, leading
dimensions and scales, on flat float64 buffers with cuBLAS's column-major semantics (beta = 0 never reads
C), against the per-projection maths. Checks the layout only (no rounding, no kernels: the strided
kernels have op rows of their own). Cases: a q/k/v-like group with and without the forward's strided
block, members without LoRA, members of different scales, a one-member group. Prints the largest
forward and backward differences (~1e-14 when the layout holds).
    python3 bench/gpu/grouped_layout_emu.py
"""
import numpy as np
rng = np.random.default_rng(0)

def gemm(ta, tb, m, n, k, alpha, A, aoff, lda, B, boff, ldb, beta, C, coff, ldc):
    # column-major: C[m x n] = alpha op(A)[m x k] op(B)[k x n] + beta C
    def mat(buf, off, rows, cols, ld):  # column-major rows x cols view
        out = np.empty((rows, cols))
        for j in range(cols):
            out[:, j] = buf[off + j*ld: off + j*ld + rows]
        return out
    opA = mat(A, aoff, k, m, lda).T if ta == 'T' else mat(A, aoff, m, k, lda)
    opB = mat(B, boff, n, k, ldb).T if tb == 'T' else mat(B, boff, k, n, ldb)
    Cm = mat(C, coff, m, n, ldc)
    R = alpha * opA @ opB + (beta * Cm if beta != 0 else 0)
    for j in range(n):
        C[coff + j*ldc: coff + j*ldc + m] = R[:, j]

# matmul_forward_ld, matmul_backward_input_ld, matmul_backward_weight_ld (native/cuda/matmul.cu)
def fwd_ld(out, oo, ldo, x, xo, ldx, W, wo, ldw, N, K, M, a, b): gemm('T','N',M,N,K,a,W,wo,ldw,x,xo,ldx,b,out,oo,ldo)
def bin_ld(dx, do_, lddx, dout, dof, lddo, W, wo, ldw, N, K, M, a, b): gemm('N','N',K,N,M,a,W,wo,ldw,dout,dof,lddo,b,dx,do_,lddx)
def bw_ld(dW, dwo, dout, dof, lddo, x, xo, ldx, N, K, M, a, b): gemm('N','T',K,M,N,a,x,xo,ldx,dout,dof,lddo,b,dW,dwo,K)


def run(Ms, rs, ss, fwd):
    N, K = 5, 16
    W = [rng.standard_normal((M, K)) for M in Ms]
    A = [rng.standard_normal((r, K)) for r in rs]
    Bm = [rng.standard_normal((M, r)) for M, r in zip(Ms, rs)]
    x = rng.standard_normal((N, K))
    dy = [rng.standard_normal((N, M)) for M in Ms]
    y_ref = [x @ Wi.T + s * (x @ Ai.T) @ Bi.T for Wi, Ai, Bi, s in zip(W, A, Bm, ss)]
    dh_ref = [s * dyi @ Bi for dyi, Bi, s in zip(dy, Bm, ss)]
    dB_ref = [s * dyi.T @ (x @ Ai.T) for dyi, Ai, s in zip(dy, A, ss)]
    dA_ref = [dhi.T @ x for dhi in dh_ref]
    dx_ref = sum(dyi @ Wi + dhi @ Ai for dyi, Wi, dhi, Ai in zip(dy, W, dh_ref, A))
    R = sum(rs); ld = K + R if fwd else K; rows = sum(Ms) + R
    blk = np.full(rows * ld, np.nan)
    at = 0
    for Wi in W:
        for m in range(Wi.shape[0]): blk[at + m*ld: at + m*ld + K] = Wi[m]
        at += Wi.shape[0] * ld
    if fwd:
        wrow = 0; off = 0
        for Mi, ri, Bi in zip(Ms, rs, Bm):
            for i in range(Mi * R):
                m = i // R; j = i - m*R - off
                blk[wrow + m*ld + K + j + off] = Bi[m, j] if (ri > 0 and 0 <= j < ri) else 0.0
            if ri: off += ri
            wrow += Mi * ld
    for Ai in A:
        for j in range(Ai.shape[0]): blk[at + j*ld: at + j*ld + K] = Ai[j]
        at += Ai.shape[0] * ld
    ldx = ld
    xb = np.full(N * ldx, np.nan)
    for n in range(N): xb[n*ldx: n*ldx + K] = x[n]
    lh = [ (x @ Ai.T).reshape(-1).copy() for Ai in A ]   # the old route's h buffers [N, r]
    if fwd:
        arows = sum(Ms) * ld
        lor = [(r, s) for r, s in zip(rs, ss) if r > 0]
        one_s = all(s == lor[0][1] for r, s in lor)
        if one_s: fwd_ld(xb, K, ld, xb, 0, ld, blk, arows, ld, N, K, R, lor[0][1], 0.0)
        else:
            off = 0
            for r, s in lor:
                fwd_ld(xb, K + off, ld, xb, 0, ld, blk, arows + off * ld, ld, N, K, r, s, 0.0); off += r
        ys = []; row = 0
        for Mi in Ms:
            y = np.zeros(N * Mi); fwd_ld(y, 0, Mi, xb, 0, ld, blk, row * ld, ld, N, ld, Mi, 1.0, 0.0)
            ys.append(y.reshape(N, Mi)); row += Mi
        ferr = max(np.abs(a - b).max() for a, b in zip(ys, y_ref))
    else: ferr = 0.0
    ldy = rows
    dyc = np.zeros(N * ldy); c0 = 0
    for dyi in dy:
        for n in range(N): dyc[n*ldy + c0: n*ldy + c0 + dyi.shape[1]] = dyi[n]
        c0 += dyi.shape[1]
    col = sum(Ms); at = 0; hoff = K; errs = []
    for i, (Mi, ri, s) in enumerate(zip(Ms, rs, ss)):
        dyo = at; at += Mi
        if ri == 0: continue
        dB = np.zeros(Mi * ri)
        if fwd: bw_ld(dB, 0, dyc, dyo, ldy, xb, hoff, ldx, N, ri, Mi, 1.0, 1.0)
        else: bw_ld(dB, 0, dyc, dyo, ldy, lh[i], 0, ri, N, ri, Mi, s, 1.0)
        bin_ld(dyc, col, ldy, dyc, dyo, ldy, Bm[i].reshape(-1).copy(), 0, ri, N, ri, Mi, s, 0.0)
        dA = np.zeros(ri * K); bw_ld(dA, 0, dyc, col, ldy, xb, 0, ldx, N, K, ri, 1.0, 1.0)
        errs.append(np.abs(dB.reshape(Mi, ri) - dB_ref[i]).max()); errs.append(np.abs(dA.reshape(ri, K) - dA_ref[i]).max())
        col += ri; hoff += ri
    assert col == ldy
    dx = np.zeros(N * K); bin_ld(dx, 0, K, dyc, 0, ldy, blk, 0, ld, N, K, col, 1.0, 0.0)
    errs.append(np.abs(dx.reshape(N, K) - dx_ref).max())
    return ferr, max(errs)

for case in [([8,4,4],[2,2,2],[2.,2.,2.],True), ([8,4,4],[2,2,2],[2.,2.,2.],False), ([8,4,4],[2,0,3],[2.,1.,0.5],True),
             ([8,4,4],[2,0,3],[2.,1.,0.5],False), ([8,8],[4,4],[2.,2.],True), ([6],[2],[2.],True), ([6],[0],[1.],False)]:
    if not any(case[1]) and case[3]: continue
    print(case, run(*case))
