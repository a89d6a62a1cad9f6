"""The Triton programs behind ops.py and the FP8 FFN's GELU quantization (quant/linears.py); imported only when a
kernel runs (it needs the triton package). Under TRITON_INTERPRET=1, set before triton is first imported, the
kernels run on CPU tensors.

The norm and q/k/v programs take ROWS whole rows (tokens) of the [tokens, n] activations: on a GPU a few, in the
interpreter many (its cost is per program). Every launch goes through launch.launch, which also works while a CUDA
graph is being captured."""

import triton
import triton.language as tl


@triton.jit
def norm(x_ptr, y_ptr, g_ptr, a_ptr, b_ptr, xo_ptr, h_ptr, s_ptr, total, rows, frame_rows, n, a_stride, a_fstride,
         b_stride, b_fstride, g_stride, g_fstride, eps, e4m3_max, tiny, ADD: tl.constexpr, GATE: tl.constexpr,
         PLUS_ONE: tl.constexpr, FP8: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    # the per-channel vectors a, b, g: a row a sample (stride) and a frame of frame_rows rows (fstride; 0: one row)
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # [ROWS, 1]
    batch, frame = row // rows, row % rows // frame_rows
    cols = tl.arange(0, BLOCK)[None, :]
    mask = (row < total) & (cols < n)
    at = row * n + cols
    x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
    if ADD:
        y = tl.load(y_ptr + at, mask=mask, other=0.0).to(tl.float32)
        if GATE:
            y = y * tl.load(g_ptr + batch * g_stride + frame * g_fstride + cols, mask=mask, other=0.0).to(tl.float32)
        x = (x + y).to(xo_ptr.dtype.element_ty)
        tl.store(xo_ptr + at, x, mask=mask)
        x = x.to(tl.float32)
    mean = tl.sum(x, axis=1)[:, None] / n
    d = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1)[:, None] / n + eps)
    a = tl.load(a_ptr + batch * a_stride + frame * a_fstride + cols, mask=mask, other=0.0).to(tl.float32)
    if PLUS_ONE:
        a = a + 1.0
    b = tl.load(b_ptr + batch * b_stride + frame * b_fstride + cols, mask=mask, other=0.0).to(tl.float32)
    h = (d * rstd * a + b).to(x_ptr.dtype.element_ty)
    if FP8:  # the 16-bit rows quantized with their max, as quant.fp8.rowwise_fp8
        h = h.to(tl.float32)
        scale = tl.maximum(tl.max(tl.where(mask, tl.abs(h), 0.0), axis=1)[:, None], tiny) / e4m3_max
        tl.store(s_ptr + row, scale, mask=row < total)
        h = h / scale
    tl.store(h_ptr + at, h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_rope(ptr, w_ptr, at, cols, mask, c, s, n, eps):
    # at, cols: [ROWS, BLOCK, 2] offsets of (even, odd) pairs in the rows / in the weight; returns the
    # normed, rotated pairs in the input's dtype
    x = tl.load(ptr + at, mask=mask, other=0.0)
    xf = x.to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(tl.sum(xf * xf, axis=2), axis=1) / n + eps)[:, None, None]
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    # as RMSNorm: rounded to the input's dtype, times the weight (a product in that dtype)
    normed = ((xf * r).to(x.dtype).to(tl.float32) * w).to(x.dtype).to(tl.float32)
    e, o = tl.split(normed)
    return tl.join(e * c - o * s, e * s + o * c).to(x.dtype)


@triton.jit
def _store(ptr, x, mask, step_ptr, head, heads, e4m3_max, FP8: tl.constexpr):
    if FP8:
        step = tl.load(step_ptr + head, mask=head < heads, other=1.0)
        x = tl.clamp(x.to(tl.float32) / step, -e4m3_max, e4m3_max).to(ptr.dtype.element_ty)
    tl.store(ptr, x, mask=mask)


@triton.jit
def qkv(qkv_ptr, wq_ptr, wk_ptr, cos_ptr, sin_ptr, idx_ptr, q_ptr, ck_ptr, cv_ptr, step_ptr, total, rows, n,
        cache_stride, head_pairs, eps, e4m3_max, FP8: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None, None]  # [ROWS, 1, 1]
    batch, tok = row // rows, row % rows
    p = tl.arange(0, BLOCK)[None, :, None]  # pair index within the row
    cols = 2 * p + tl.arange(0, 2)[None, None, :]  # [1, BLOCK, 2]
    mask = (row < total) & (cols < n)
    pair_mask = (row < total) & (p < n // 2)
    angle = tok * head_pairs + p % head_pairs
    c = tl.reshape(tl.load(cos_ptr + angle, mask=pair_mask, other=0.0), (ROWS, BLOCK))
    s = tl.reshape(tl.load(sin_ptr + angle, mask=pair_mask, other=0.0), (ROWS, BLOCK))
    src = row * 3 * n + cols
    dst = batch * cache_stride + tl.load(idx_ptr + tok, mask=row < total, other=0).to(tl.int64) * n + cols
    heads = n // (2 * head_pairs)
    head = p // head_pairs
    q = _rms_rope(qkv_ptr, wq_ptr, src, cols, mask, c, s, n, eps)
    _store(q_ptr + row * n + cols, q, mask, step_ptr, head, heads, e4m3_max, FP8)  # steps: rows q, k, v
    k = _rms_rope(qkv_ptr + n, wk_ptr, src, cols, mask, c, s, n, eps)
    _store(ck_ptr + dst, k, mask, step_ptr + heads, head, heads, e4m3_max, FP8)
    v = tl.load(qkv_ptr + 2 * n + src, mask=mask, other=0.0)
    _store(cv_ptr + dst, v, mask, step_ptr + 2 * heads, head, heads, e4m3_max, FP8)


@triton.jit
def _gelu16(h, dtype: tl.constexpr):
    # gelu_tanh of float32 h, rounded to the 16-bit dtype as F.gelu returns it; float32
    u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
    return (h * tl.sigmoid(2.0 * u)).to(dtype).to(tl.float32)  # 0.5 h (1 + tanh u)


@triton.jit
def gelu_fp8(x_ptr, q_ptr, s_ptr, n, e4m3_max, tiny, negative_bound, CHUNK: tl.constexpr):
    # one row per program in chunks (quant/linears.py): a first pass finds the row's largest |gelu|, a second quantizes
    # (its reads hit the cache); few registers a thread, so many rows run on an SM at once. GELU rises from its
    # minimum, so the largest |gelu| is gelu(max h) unless that is below every |gelu| of a negative h
    # (negative_bound): then the first pass runs again through the GELU.
    row = tl.program_id(0).to(tl.int64)
    x_ptr += row * n
    cols = tl.arange(0, CHUNK)
    hi = tl.full((CHUNK,), -float("inf"), tl.float32)
    for start in range(0, n, CHUNK):
        hi = tl.maximum(hi, tl.load(x_ptr + start + cols, mask=start + cols < n, other=-float("inf")).to(tl.float32))
    top = _gelu16(tl.max(hi, axis=0), x_ptr.dtype.element_ty)
    if top < negative_bound:
        most = tl.zeros((CHUNK,), tl.float32)
        for start in range(0, n, CHUNK):
            h = tl.load(x_ptr + start + cols, mask=start + cols < n, other=0.0).to(tl.float32)
            most = tl.maximum(most, tl.abs(_gelu16(h, x_ptr.dtype.element_ty)))
        top = tl.max(most, axis=0)
    scale = tl.maximum(top, tiny) / e4m3_max
    for start in range(0, n, CHUNK):
        h = tl.load(x_ptr + start + cols, mask=start + cols < n, other=0.0).to(tl.float32)
        g = _gelu16(h, x_ptr.dtype.element_ty)
        tl.store(q_ptr + row * n + start + cols, (g / scale).to(tl.float8e4nv), mask=start + cols < n)
    tl.store(s_ptr + row, scale)


@triton.jit
def rms(x_ptr, r_ptr, total, n, eps, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    # RMSNorm's per-row scale 1 / sqrt(mean(x^2) + eps), float32
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    cols = tl.arange(0, BLOCK)[None, :]
    x = tl.load(x_ptr + row * n + cols, mask=(row < total) & (cols < n), other=0.0).to(tl.float32)
    tl.store(r_ptr + row, 1.0 / tl.sqrt(tl.sum(x * x, axis=1)[:, None] / n + eps), mask=row < total)


@triton.jit
def text_attention_kernel(q_ptr, r_ptr, w_ptr, k_ptr, v_ptr, used_ptr, pk_ptr, pv_ptr, lp_ptr, o_ptr, rows, heads, d,
                   k_stride, pad_stride, scale, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
                   BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    # one program: BLOCK_Q queries of one (sample, head); see ops.text_attention
    b, h = tl.program_id(1) // heads, tl.program_id(1) % heads
    tok = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dim = tl.arange(0, BLOCK_D)
    n = heads * d
    row = b.to(tl.int64) * rows + tok
    q_mask = (tok[:, None] < rows) & (dim[None, :] < d)
    x = tl.load(q_ptr + row[:, None] * n + h * d + dim[None, :], mask=q_mask, other=0.0)
    r = tl.load(r_ptr + row, mask=tok < rows, other=0.0)
    w = tl.load(w_ptr + h * d + dim, mask=dim < d, other=0.0).to(tl.float32)
    # as RMSNorm: rounded to q's dtype, times the weight (a product in that dtype)
    q = ((x.to(tl.float32) * r[:, None]).to(x.dtype).to(tl.float32) * w[None, :]).to(x.dtype)
    log2e = 1.4426950408889634
    # the padding key opens the softmax with its count as weight (log_pad = -inf: no padding)
    pad_at = b.to(tl.int64) * pad_stride + h * d + dim
    pk = tl.load(pk_ptr + pad_at, mask=dim < d, other=0.0).to(tl.float32)
    pad = (tl.sum(q.to(tl.float32) * pk[None, :], axis=1) * scale + tl.load(lp_ptr + b)) * log2e
    top = pad
    total = tl.full((BLOCK_Q,), 1.0, tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32) + tl.load(pv_ptr + pad_at, mask=dim < d, other=0.0).to(tl.float32)
    used = tl.load(used_ptr + b)
    base = b.to(tl.int64) * k_stride + h * d
    for start in range(0, used, BLOCK_K):
        key = start + tl.arange(0, BLOCK_K)
        kv_mask = (key[:, None] < used) & (dim[None, :] < d)
        at = base + key[:, None] * n + dim[None, :]
        kt = tl.load(k_ptr + at, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(kt), input_precision=PRECISION) * (scale * log2e)
        s = tl.where(key[None, :] < used, s, -float("inf"))
        new_top = tl.maximum(top, tl.max(s, axis=1))
        fade = tl.exp2(top - new_top)
        p = tl.exp2(s - new_top[:, None])
        total = total * fade + tl.sum(p, axis=1)
        vt = tl.load(v_ptr + at, mask=kv_mask, other=0.0)
        acc = acc * fade[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PRECISION)
        top = new_top
    out = acc / total[:, None]
    tl.store(o_ptr + (row[:, None] * heads + h) * d + dim[None, :], out.to(o_ptr.dtype.element_ty), mask=q_mask)


@triton.jit
def widen(w_ptr, o_ptr, n, BLOCK: tl.constexpr):
    # a weight as stored (e4m3) widened to bfloat16, exactly (every e4m3 value is a bfloat16 one)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(o_ptr + i, tl.load(w_ptr + i, mask=i < n).to(tl.bfloat16), mask=i < n)
