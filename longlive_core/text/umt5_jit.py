"""The Triton code of umt5's linears (umt5.py); imported only when it runs (it needs the triton package)."""

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, acc, INTERPRETED: tl.constexpr):
    # Triton's interpreter multiplies bfloat16 tiles wrongly: there the parts go as float32 (the same products:
    # two bfloat16 values multiply exactly in float32)
    if INTERPRETED:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def stored_weight_linear(x_ptr, w_ptr, s_ptr, y_ptr, m, n, k, SCALED: tl.constexpr, W_PARTS: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         INTERPRETED: tl.constexpr):
    # y [m, n] = (x [m, k] * s) @ w [n, k]^T to float32 accuracy on bfloat16 tensor cores: each float32 input is
    # split into 3 bfloat16 parts (x = x0 + x1 + x2 to 24 bits), each weight into W_PARTS (1: e4m3 or bfloat16,
    # exact; 2: float16; 3: float32), and the products of parts i and j with i + j <= 2 are summed in float32 (the
    # rest lie below float32's rounding). One program takes BLOCK_M rows of x (a text's tokens: few) and BLOCK_N
    # rows of w, over all of k; each weight is read once, as stored.
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
        a0 = a.to(tl.bfloat16)
        rest = a - a0.to(tl.float32)
        a1 = rest.to(tl.bfloat16)
        a2 = (rest - a1.to(tl.float32)).to(tl.bfloat16)
        w = tl.load(w_ptr + cols[:, None].to(tl.int64) * k + kk[None, :],
                    mask=(cols[:, None] < n) & (kk[None, :] < k), other=0.0).to(tl.float32)
        w0 = w.to(tl.bfloat16)
        part = tl.trans(w0)
        acc = _dot(a2, part, acc, INTERPRETED)
        acc = _dot(a1, part, acc, INTERPRETED)
        if W_PARTS > 1:
            w_rest = w - w0.to(tl.float32)
            w1 = w_rest.to(tl.bfloat16)
            acc = _dot(a1, tl.trans(w1), acc, INTERPRETED)
            acc = _dot(a0, tl.trans(w1), acc, INTERPRETED)
            if W_PARTS > 2:
                acc = _dot(a0, tl.trans((w_rest - w1.to(tl.float32)).to(tl.bfloat16)), acc, INTERPRETED)
        acc = _dot(a0, part, acc, INTERPRETED)
    at = rows[:, None].to(tl.int64) * n + cols[None, :]
    tl.store(y_ptr + at, acc, mask=(rows[:, None] < m) & (cols[None, :] < n))
