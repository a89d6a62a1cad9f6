"""The Triton code behind kernels.py and the FP8 FFN's GELU quantization (quantize.py); imported only when
a kernel runs (it needs the triton package). Under TRITON_INTERPRET=1, set before triton is first
imported, the kernels run on CPU tensors.

The norm and q/k/v programs take ROWS whole rows (tokens) of the [tokens, n] activations: on a GPU a few,
in the interpreter many (its cost is per program). Every launch goes through `launch`, which also works while a
CUDA graph is being captured (see there)."""

import functools
import inspect
import logging

import torch
import triton
import triton.language as tl

log = logging.getLogger(__name__)


@triton.jit
def norm(x_ptr, y_ptr, g_ptr, a_ptr, b_ptr, xo_ptr, h_ptr, s_ptr, total, rows, n, a_stride, b_stride, g_stride, eps,
         e4m3_max, tiny, ADD: tl.constexpr, GATE: tl.constexpr, PLUS_ONE: tl.constexpr, FP8: tl.constexpr,
         ROWS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # [ROWS, 1]
    batch = row // rows
    cols = tl.arange(0, BLOCK)[None, :]
    mask = (row < total) & (cols < n)
    at = row * n + cols
    x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
    if ADD:
        y = tl.load(y_ptr + at, mask=mask, other=0.0).to(tl.float32)
        if GATE:
            y = y * tl.load(g_ptr + batch * g_stride + cols, mask=mask, other=0.0).to(tl.float32)
        x = (x + y).to(xo_ptr.dtype.element_ty)
        tl.store(xo_ptr + at, x, mask=mask)
        x = x.to(tl.float32)
    mean = tl.sum(x, axis=1)[:, None] / n
    d = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1)[:, None] / n + eps)
    a = tl.load(a_ptr + batch * a_stride + cols, mask=mask, other=0.0).to(tl.float32)
    if PLUS_ONE:
        a = a + 1.0
    b = tl.load(b_ptr + batch * b_stride + cols, mask=mask, other=0.0).to(tl.float32)
    h = (d * rstd * a + b).to(x_ptr.dtype.element_ty)
    if FP8:  # the 16-bit rows quantized with their max, as quantize.rowwise_fp8
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
def gelu_rowwise_fp8(x_ptr, q_ptr, s_ptr, n, e4m3_max, tiny, negative_bound, CHUNK: tl.constexpr):
    # one row per program in chunks (quantize.py): a first pass finds the row's largest |gelu|, a second quantizes
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
def text_attention(q_ptr, r_ptr, w_ptr, k_ptr, v_ptr, used_ptr, pk_ptr, pv_ptr, lp_ptr, o_ptr, rows, heads, d,
                   k_stride, pad_stride, scale, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
                   BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    # one program: BLOCK_Q queries of one (sample, head); see kernels.text_attention
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
def conv3_narrow(c_ptr, x_ptr, w_ptr, b_ptr, o_ptr, frames, height, width, channels, outs, BLOCK_M: tl.constexpr,
                 BLOCK_K: tl.constexpr, CHUNKS: tl.constexpr, PRECISION: tl.constexpr):
    # one program: BLOCK_M pixels through every frame (see kernels.causal_conv3d_narrow). Each input frame is read
    # once for its 9 spatial taps; one tap's [C, 16] weight holds the 3 time taps x 4 outputs, so the product p of a
    # frame serves the 3 output frames that read it: output u adds the dt-th column group of frame u + dt's p.
    pix = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    b = tl.program_id(1).to(tl.int64)
    hw = height * width
    row, col, inside = pix // width, pix % width, pix < hw
    ks, ns = tl.arange(0, BLOCK_K), tl.arange(0, 16)
    group = ns[None, :] // 4  # the time tap of each product column
    older = tl.zeros((BLOCK_M, 16), tl.float32)  # the products of the two frames before
    old = tl.zeros((BLOCK_M, 16), tl.float32)
    bias = tl.load(b_ptr + tl.arange(0, 4), mask=tl.arange(0, 4) < outs, other=0.0).to(tl.float32)
    for tau in range(0, frames + 2):
        if tau < 2:  # the cached frames come first in time
            frame = c_ptr + (b * 2 + tau) * hw * channels
        else:
            frame = x_ptr + (b * frames + tau - 2) * hw * channels
        p = tl.zeros((BLOCK_M, 16), tl.float32)
        for dh in tl.static_range(3):
            for dw in tl.static_range(3):
                r, c = row + dh - 1, col + dw - 1
                m = inside & (r >= 0) & (r < height) & (c >= 0) & (c < width)
                at = (r * width + c).to(tl.int64) * channels
                for kc in tl.static_range(CHUNKS):
                    k = kc * BLOCK_K + ks
                    a = tl.load(frame + at[:, None] + k[None, :], mask=m[:, None] & (k[None, :] < channels), other=0.0)
                    w = tl.load(w_ptr + ((dh * 3 + dw) * channels + k[:, None]) * 16 + ns[None, :],
                                mask=k[:, None] < channels, other=0.0)
                    p = tl.dot(a, w, p, input_precision=PRECISION)
        if tau >= 2:
            taps = tl.where(group == 0, older, 0.0) + tl.where(group == 1, old, 0.0) + tl.where(group == 2, p, 0.0)
            y = tl.sum(tl.reshape(taps, (BLOCK_M, 4, 4)), axis=1) + bias[None, :]  # [BLOCK_M, output]
            o = tl.arange(0, 4)[None, :]
            out = o_ptr + ((b * outs + o) * frames + tau - 2) * hw + pix[:, None]
            tl.store(out, y.to(o_ptr.dtype.element_ty), mask=inside[:, None] & (o < outs))
        older, old = old, p


# --- Launching, also while a CUDA graph is being captured ----------------------------------------------------
#
# Triton's launcher asks the driver about every tensor argument before it launches (cuPointerGetAttribute). Under
# PyTorch's cudaMallocAsync allocator (ComfyUI's default on CUDA), memory allocated while a graph is captured is a
# graph allocation: it gets physical memory only when the graph first runs, so the driver answers "invalid value"
# and Triton raises "Pointer argument cannot be accessed from Triton (cpu tensor?)". Its launcher takes integers as
# addresses without asking, so during a capture our kernels are compiled for their arguments as usual and launched
# on the raw addresses. Whether this Triton's compiled kernels accept that is checked once per device, outside any
# capture (raw_launch_works); until then, and where they do not, kernels launch the ordinary way.

_RAW_LAUNCH: dict[int, bool] = {}  # CUDA device index -> whether raw-address launches work there


def launch(kernel, grid: tuple, *args, **meta) -> None:
    """kernel[grid](*args, **meta); args[0] is a tensor (every kernel here takes one first)."""
    x = args[0]
    if x.is_cuda and _RAW_LAUNCH.get(x.device.index) and torch.cuda.is_current_stream_capturing():
        compiled = kernel.warmup(*args, grid=grid, **meta)  # compiles or finds the kernel; launches nothing
        compiled[_three(grid)](*_raw_arguments(kernel, args, meta))
        return
    kernel[grid](*args, **meta)


def _three(grid: tuple) -> tuple:
    """A compiled kernel takes its grid in three dimensions (the JIT function pads it)."""
    return (*grid, 1, 1)[:3]


def _raw_arguments(kernel, args: tuple, meta: dict) -> list:
    """Every parameter of the kernel in order (constexprs and defaults too, as Triton's launcher takes them), with
    tensors replaced by their addresses; launch options such as num_warps are not parameters."""
    signature = _signature(kernel)
    bound = signature.bind(*args, **{k: v for k, v in meta.items() if k in signature.parameters})
    bound.apply_defaults()
    return [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in bound.arguments.values()]


@functools.cache
def _signature(kernel) -> inspect.Signature:
    return inspect.signature(kernel.fn)


def raw_launch_works(device: torch.device) -> bool:
    """Checks once per device, outside any capture, that a compiled kernel launched on raw addresses computes what
    the ordinary launch computes (a Triton whose launch convention differs fails here, not inside a capture)."""
    index = torch.device(device).index or 0
    if index not in _RAW_LAUNCH:
        _RAW_LAUNCH[index] = _probe(torch.device("cuda", index))
    return _RAW_LAUNCH[index]


def _probe(device: torch.device) -> bool:
    x = torch.arange(100, device=device, dtype=torch.float32)
    out = torch.full_like(x, -1.0)
    try:
        meta = dict(SCALE=3, BLOCK=128)
        compiled = _scale.warmup(x, out, x.numel(), grid=(1,), **meta)
        compiled[_three((1,))](*_raw_arguments(_scale, (x, out, x.numel()), meta))
        ok = bool(torch.equal(out, x * 3))
    except Exception as exc:  # any Triton whose compiled-kernel call differs
        log.warning("Triton %s cannot launch compiled kernels on raw addresses (%s: %s)", triton.__version__,
                    type(exc).__name__, exc)
        ok = False
    return ok


@triton.jit
def _scale(x_ptr, o_ptr, n, SCALE: tl.constexpr, BLOCK: tl.constexpr):
    # the raw-launch probe: o = x * SCALE
    i = tl.arange(0, BLOCK)
    tl.store(o_ptr + i, tl.load(x_ptr + i, mask=i < n) * SCALE, mask=i < n)
