"""Triton kernels for the memory-bound work between the fast path's GEMMs, as torch custom ops (the fused block,
model/fused.py, calls them).

Inductor fuses the norms, the modulation, RoPE and the cache writes around the GEMMs too, but compiles
the 1536-wide row reductions as loops that reach a third to a half of the memory bandwidth (runs 17-24).
Here one program holds one token's row in registers: read once, written once.

The ops compute what the eager Block (model/wan.py) computes, rounding where it rounds (the eager path is the
reference and the tests hold the kernels to it). They run where Triton runs: CUDA tensors, or CPU
tensors under Triton's interpreter (TRITON_INTERPRET=1, what the CPU tests use).
"""

from __future__ import annotations

import os

import torch

from ..errors import BackendUnavailableError
from ..quant.fp8 import E4M3_MAX, SCALE_FLOOR
from .library import custom_op

# (rows (tokens) per program, warps) of each kernel on a GPU: the fastest of scripts/bench_kernels.py's norms and
# text sections on the H100 (runs 25, 35-36, 38); in the interpreter, many rows per program (it pays per program).
# text: (queries, keys a step, warps, stages).
# rows a program (or query and key tiles), warps, stages. The float32 text attention (the tests' exact reference, never
# the fast path) takes small tiles: at 64 x 64 its fp32 tiles spill registers and ptxas ran for minutes (run 72)
GPU_LAUNCH = {"norm": (1, 4), "qkv": (1, 4), "qkv fp8": (2, 4), "text": (64, 64, 4, 3), "text float32": (16, 32, 4, 1)}
INTERPRETER_ROWS = 64


def available(device: torch.device) -> bool:
    """Whether the fused kernels can run on tensors of this device."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def check(x: torch.Tensor) -> None:
    if not available(x.device):
        raise BackendUnavailableError(f"the fused Triton kernels need a CUDA tensor and the triton package; "
                                      f"got a {x.device.type} tensor: use the eager path there")


# --- Layer norms with an affine or adaLN modulation, after an optional (gated) residual ------------


@custom_op("norm_affine", mutates_args=())
def norm_affine(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, plus_one: bool) -> torch.Tensor:
    """layer_norm(x) * (a + 1 if plus_one else a) + b, in float32, rounded to x's dtype.
    x: [B, S, N]; a, b: [N], [B, 1, N] or a row a frame [B, F, 1, N] (any float dtype; the adaLN scale/shift or a
    norm's weight/bias)."""
    return _norm(x, None, None, a, b, eps, plus_one)[1]


@norm_affine.register_fake
def _(x, a, b, eps, plus_one):
    return x.new_empty(x.shape)


@custom_op("add_norm_affine", mutates_args=())
def add_norm_affine(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor,
                    eps: float, plus_one: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual x + y * gate (gate: [B, 1, N] or [B, F, 1, N] float32, or None), rounded to x's dtype, and
    norm_affine of it: returns (new x, normed)."""
    return _norm(x, y, gate, a, b, eps, plus_one)


@add_norm_affine.register_fake
def _(x, y, gate, a, b, eps, plus_one):
    return x.new_empty(x.shape), x.new_empty(x.shape)


# The same for an FP8 linear after the norm: the normed rows, rounded to x's dtype, leave quantized as
# quant.fp8.rowwise_fp8 quantizes them (e4m3 values [rows, N], float32 scales [rows, 1] = row max / e4m3 max).


@custom_op("norm_affine_fp8", mutates_args=())
def norm_affine_fp8(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float,
                    plus_one: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _norm(x, None, None, a, b, eps, plus_one, fp8=True)[1:]


@norm_affine_fp8.register_fake
def _(x, a, b, eps, plus_one):
    return _fp8_rows(x)


@custom_op("add_norm_affine_fp8", mutates_args=())
def add_norm_affine_fp8(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, a: torch.Tensor,
                        b: torch.Tensor, eps: float, plus_one: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _norm(x, y, gate, a, b, eps, plus_one, fp8=True)


@add_norm_affine_fp8.register_fake
def _(x, y, gate, a, b, eps, plus_one):
    return x.new_empty(x.shape), *_fp8_rows(x)


def _fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = x.numel() // x.shape[-1]
    return (x.new_empty(rows, x.shape[-1], dtype=torch.float8_e4m3fn),
            x.new_empty(rows, 1, dtype=torch.float32))


def norm(x, residual, a, b, eps: float, plus_one: bool, fp8: bool = False):
    """The fused norm of x, after adding residual = (y, gate or None) where given. Returns (x, normed): normed in
    x's dtype, or for an FP8 linear (fp8) its (values, scales)."""
    if residual is None:
        return x, (norm_affine_fp8 if fp8 else norm_affine)(x, a, b, eps, plus_one)
    out = (add_norm_affine_fp8 if fp8 else add_norm_affine)(x, *residual, a, b, eps, plus_one)
    return out[0], (out[1:] if fp8 else out[1])


def _vector_strides(v: torch.Tensor, batch: int) -> tuple[int, int, int]:
    """(stride between samples, stride between frames, frames) of a per-channel vector: [N] for every row, [1 or B,
    1, N] a row a sample, [1 or B, F, 1, N] a row a frame (a sample's rows in F equal runs); one sample broadcasts."""
    if v.dim() == 1:
        return 0, 0, 1
    if v.shape[0] not in (1, batch):
        raise ValueError(f"norm_affine: a per-channel vector of batch {v.shape[0]} for activations of batch {batch}")
    sample = 0 if v.shape[0] == 1 else v.stride(0)
    return (sample, v.stride(1), v.shape[1]) if v.dim() == 4 and v.shape[1] > 1 else (sample, 0, 1)


def _frame_rows(rows: int, strides: list[tuple[int, int, int]]) -> int:
    """The rows of one frame: a sample's rows, or where vectors hold a row a frame, a 1/F of them (F the same for
    every such vector)."""
    frames = {f for _, _, f in strides if f > 1}
    if len(frames) > 1 or (frames and rows % min(frames)):
        raise ValueError(f"norm_affine: vectors with a row a frame ({sorted(frames)} frames) for {rows} rows a sample; "
                         f"they must share one frame count that divides the rows")
    return rows // frames.pop() if frames else rows


def _norm(x, y, gate, a, b, eps, plus_one, fp8=False):
    check(x)
    x = x.contiguous()
    rows, n = x.shape[-2], x.shape[-1]  # rows of one sample, row width
    batch = x.numel() // (rows * n)
    add = y is not None
    h, scales = _fp8_rows(x) if fp8 else (x.new_empty(x.shape), x)
    new_x = x.new_empty(x.shape) if add else h
    y = y.contiguous() if add else x
    g = a if gate is None else gate
    for v in (a, b, g):
        if v.stride(-1) != 1:
            raise ValueError("norm_affine: per-channel vectors must be contiguous in their last dim")
    per, warps = _shape(x, "norm")
    strides = [_vector_strides(v, batch) for v in (a, b, g)]
    _run("norm", (-(-batch * rows // per),),
        x, y, g, a, b, new_x, h, scales, batch * rows, rows, _frame_rows(rows, strides), n,
        *(s for sample, frame, _ in strides for s in (sample, frame)), eps, E4M3_MAX, SCALE_FLOOR,
        ADD=add, GATE=gate is not None, PLUS_ONE=plus_one, FP8=fp8, ROWS=per, BLOCK=row_block(n), num_warps=warps)
    return (new_x, h, scales) if fp8 else (new_x, h)


# --- Self-attention q/k/v: RMSNorm, RoPE, and K/V into the cache --------------------------------------


@custom_op("qkv_norm_rope_write", mutates_args=("cache_k", "cache_v"))
def qkv_norm_rope_write(qkv: torch.Tensor, weight_q: torch.Tensor, weight_k: torch.Tensor, cos: torch.Tensor,
                        sin: torch.Tensor, index: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
                        steps: torch.Tensor | None, heads: int, eps: float) -> torch.Tensor:
    """From the fused projection qkv [B, S, 3N]: q and k RMS-normed over N with their weights, rotated by
    RoPE (cos/sin [S, D/2], adjacent pairs), k and v written to cache rows `index` [S] of cache_k/cache_v
    [B, T, H, D]; returns q [B, S, H, D]. With an FP8 cache (the FP8 attention) k, v and the returned q are e4m3:
    divided by their per-head steps (steps [3, H], rows q, k, v), clamped to the e4m3 range."""
    check(qkv)
    qkv = qkv.contiguous()
    rows, n = qkv.shape[-2], qkv.shape[-1] // 3
    q = _q_like(qkv, cache_k, heads)
    if cache_k.stride(-1) != 1 or cache_k.stride(-3) != n or cache_k.stride() != cache_v.stride():
        raise ValueError("qkv_norm_rope_write: the caches must be [B, T, H, D] with contiguous tokens")
    fp8 = cache_k.dtype == torch.float8_e4m3fn
    total = qkv.numel() // (3 * n)
    per, warps = _shape(qkv, "qkv fp8" if fp8 else "qkv")
    _run("qkv", (-(-total // per),),
        qkv, weight_q, weight_k, cos.contiguous(), sin.contiguous(), index, q, cache_k, cache_v,
        steps if fp8 else cos, total, rows, n, cache_k.stride(0), n // heads // 2, eps, E4M3_MAX,
        FP8=fp8, ROWS=per, BLOCK=row_block(n // 2), num_warps=warps)
    return q


@qkv_norm_rope_write.register_fake
def _(qkv, weight_q, weight_k, cos, sin, index, cache_k, cache_v, steps, heads, eps):
    return _q_like(qkv, cache_k, heads)


def _q_like(qkv: torch.Tensor, cache_k: torch.Tensor, heads: int) -> torch.Tensor:
    fp8 = cache_k.dtype == torch.float8_e4m3fn
    return qkv.new_empty(*qkv.shape[:-1], heads, qkv.shape[-1] // 3 // heads,
                         dtype=torch.float8_e4m3fn if fp8 else qkv.dtype)


# --- Text cross-attention: q's RMSNorm, the prompt's keys, the padding key ------------------------------


@custom_op("text_attention", mutates_args=())
def text_attention(q: torch.Tensor, weight: torch.Tensor, eps: float, k: torch.Tensor, v: torch.Tensor,
                   used: torch.Tensor, pad_k: torch.Tensor, pad_v: torch.Tensor, log_pad: torch.Tensor) -> torch.Tensor:
    """Cross-attention of the raw projection q [B, S, N], RMS-normed over N with `weight` here (rounded as
    RMSNorm rounds), to one layer's TextCache: the first used[b] keys of k, v [B, L, H, D] and the padding
    pair pad_k, pad_v [B, 1, H, D] counted exp(log_pad[b]) times. Returns [B, S, H, D] in q's dtype.

    One program takes a tile of queries of one head: the padding key starts its running softmax, the
    prompt's keys follow in tiles (the count is read on the device: graphs stay valid across prompts).
    The norm's per-token scale comes from a first pass over q (it spans every head)."""
    check(q)
    q = q.contiguous()
    batch, rows, n = q.shape
    heads, d = k.shape[-2], k.shape[-1]
    if heads * d != n or k.stride(-1) != 1 or k.stride(-3) != n or k.stride() != v.stride() \
            or pad_k.stride() != pad_v.stride():
        raise ValueError(f"text_attention: q is [B, S, {n}] but the keys are {list(k.shape)}; they must be "
                         f"[B, L, H, D] with H * D = {n} and contiguous tokens")
    rstd = torch.empty(batch * rows, device=q.device, dtype=torch.float32)
    per, warps = _shape(q, "norm")
    _run("rms", (-(-batch * rows // per),), q, rstd, batch * rows, n, eps, ROWS=per, BLOCK=row_block(n),
         num_warps=warps)
    out = q.new_empty(batch, rows, heads, d)
    launch = GPU_LAUNCH["text float32" if q.dtype == torch.float32 else "text"]
    block_q, block_k, warps, stages = launch if q.is_cuda else (INTERPRETER_ROWS, INTERPRETER_ROWS, 1, 1)
    _run("text_attention_kernel", (-(-rows // block_q), batch * heads),
        q, rstd, weight, k, v, used, pad_k, pad_v, log_pad, out, rows, heads, d, k.stride(0),
        pad_k.stride(0), d ** -0.5, BLOCK_Q=block_q, BLOCK_K=block_k, BLOCK_D=max(16, row_block(d)),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=warps, num_stages=stages)
    return out


@text_attention.register_fake
def _(q, weight, eps, k, v, used, pad_k, pad_v, log_pad):
    return q.new_empty(*q.shape[:2], *k.shape[-2:])


# --- e4m3 weights widened to bfloat16 (the engine's umt5, text/umt5.py) --------------------------------------


WIDEN_BLOCK = 4096  # values a program


def widen_e4m3(weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """An e4m3 weight written to `out` (bfloat16, at least as many values) as bfloat16: exact. PyTorch's own cast of
    an e4m3 tensor runs at about a quarter of the memory's speed on an H200 (14.5 ms for umt5-xxl's 4.6 GB, run
    148). Returns out's first values in the weight's shape."""
    check(weight)
    n = weight.numel()
    _run("widen", (-(-n // WIDEN_BLOCK),), weight.contiguous(), out, n, BLOCK=WIDEN_BLOCK)
    return out[:n].view(weight.shape)


# --- The kernels ------------------------------------------------------------------------------------


def row_block(n: int) -> int:
    """The power of two a kernel's block takes to hold a row of n values."""
    return 1 << (n - 1).bit_length()


def _shape(x: torch.Tensor, kernel: str) -> tuple[int, int]:
    return GPU_LAUNCH[kernel] if x.is_cuda else (INTERPRETER_ROWS, 1)


def _run(name: str, grid: tuple, *args, **meta) -> None:
    """Launches jit.<name> (imported only now: it needs the triton package)."""
    from . import jit, launch

    launch.launch(getattr(jit, name), grid, *args, **meta)
