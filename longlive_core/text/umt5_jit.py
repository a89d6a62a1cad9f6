"""The Triton code of umt5's linears (umt5.py); imported only when it runs (it needs the triton package)."""

import triton
import triton.language as tl


@triton.jit
def stored_weight_linear(x_ptr, w_ptr, s_ptr, y_ptr, m, n, k, SCALED: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    # y [m, n] = (x [m, k] * s) @ w [n, k]^T in float32, each weight read once as stored and widened in registers:
    # one program takes BLOCK_M rows of x (a text's tokens: few) and BLOCK_N rows of w, over all of k
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for start in range(0, k, BLOCK_K):
        kk = start + ks
        a = tl.load(x_ptr + rows[:, None].to(tl.int64) * k + kk[None, :],
                    mask=(rows[:, None] < m) & (kk[None, :] < k), other=0.0)
        if SCALED:
            a = a * tl.load(s_ptr)
        w = tl.load(w_ptr + cols[None, :].to(tl.int64) * k + kk[:, None],
                    mask=(cols[None, :] < n) & (kk[:, None] < k), other=0.0).to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    at = rows[:, None].to(tl.int64) * n + cols[None, :]
    tl.store(y_ptr + at, acc, mask=(rows[:, None] < m) & (cols[None, :] < n))
