"""Attention backends: PyTorch SDPA, FlashAttention-3 and FlashAttention-2, all on [B, S, H, D].

`flash-attn 3 fp8` runs the self-attention through FA3's FP8 kernel: q is quantized here (or arrives quantized
from the fused q/k/v kernel), k and v come from the FP8 KV cache (quantized when written), all with per-head
steps (CausalWan.set_fp8_scales).

Text cross-attention takes one layer's TextCache. With a flash backend it attends only to the prompt's keys
(the kernel reads a device-side length, so graphs stay valid across prompts) and adds the zero-padding
keys, which are all one key, in closed form: exact, and most of the 512 keys are never read.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import BackendUnavailableError
from ..fast.compile import compiled
from ..quant.fp8 import to_fp8
from .cache import TextCache

log = logging.getLogger(__name__)

BACKENDS = ("auto", "sdpa", "flash-attn 3", "flash-attn 3 fp8", "flash-attn 2")
FP8 = "flash-attn 3 fp8"  # self-attention in FP8 (Hopper); the text cross-attention stays bf16
# (q, k, v, scales): scales [3, H] float32 are the per-head FP8 steps of q, k, v; only FP8 reads them
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
TextAttentionFn = Callable[[torch.Tensor, TextCache], torch.Tensor]  # one layer's TextCache


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scales=None) -> torch.Tensor:
    # q: [B, Sq, H, D], k/v: [B, Sk, H, D] -> [B, Sq, H, D]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _sdpa_hopper(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scales=None) -> torch.Tensor:
    # cuDNN's fused attention is the fastest SDPA kernel on Hopper; the others stay as fallbacks.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        return _sdpa(q, k, v)


def _flash_module(name: str):
    modules = {"flash-attn 3": ("flash_attn_interface", "fa3_fwd_interface"), "flash-attn 2": ("flash_attn",)}[name]
    for module in modules:
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    return None


BUILD_CONFIG = {"flash_attn_interface": "flash_attn_config", "fa3_fwd_interface": "fa3_fwd_config"}  # FA3's build flags


def _lacks_fp16(module) -> bool:
    """Whether a FlashAttention-3 build was made without float16 kernels (FLASHATTENTION_DISABLE_FP16, as the fa3-fwd
    wheel is): FA3 builds record their flags in a config module beside the interface."""
    try:
        flags = importlib.import_module(BUILD_CONFIG[module.__name__]).CONFIG["build_flags"]
    except (KeyError, ImportError, AttributeError, TypeError):
        return False
    return bool(flags.get("FLASHATTENTION_DISABLE_FP16"))


Q_TILE = 128  # the queries one FA3 work unit (CTA) takes at head dim 128, in bf16 and in FP8


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


MAX_SPLITS = 5  # more key splits did not pay for the tail (run 29)
MIN_SPLIT_KEYS = 4096  # the cut was measured on the self-attention's 18720 keys; the text's 512 stay one call


def wave_split(batch: int, queries: int, heads: int, sms: int) -> tuple[int, int] | None:
    """FA3 runs one work unit per (sample, head, 128 queries) and one unit per SM at a time, so the units
    run in waves; a last wave that is partly empty costs a whole one (4680 queries x 12 heads: 444 units on
    132 SMs take 4 waves, as long as 5632 queries do; run 25). Returns (cut, splits): the queries before `cut`
    fill whole waves; the rest run with their keys in `splits` parts, smaller units that make the last wave
    shorter (the split count whose rounds of units take the least time). None where that does not pay (no
    full wave, or nothing left over)."""
    tiles, per_tile = -(-queries // Q_TILE), batch * heads
    whole = max(t for t in range(tiles + 1) if t * per_tile % sms == 0)  # t = 0 always qualifies
    rest = (tiles - whole) * per_tile
    if whole == 0 or rest == 0:
        return None
    splits = min(range(1, MAX_SPLITS + 1), key=lambda s: -(-rest * s // sms) / s)
    return (whole * Q_TILE, splits) if splits > 1 else None


def _raw_fa3():
    """The fa3-fwd package's forward op, which writes into a given output (the one measured and tested; other
    FA3 builds make one plain call); None without it."""
    return getattr(torch.ops.fa3_fwd, "fwd", None)


def _in_waves(fwd, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **scales) -> torch.Tensor | None:
    """Attention through the raw FA3 op, with the queries cut by wave_split into one output; None where the
    cut does not pay (the caller makes one plain call)."""
    if fwd is None or not q.is_cuda or k.shape[1] < MIN_SPLIT_KEYS:
        return None
    split = wave_split(q.shape[0], q.shape[1], q.shape[2], _sm_count(q.device))
    if split is None:
        return None
    cut, splits = split
    out = torch.empty(q.shape, device=q.device, dtype=torch.bfloat16 if q.dtype == torch.float8_e4m3fn else q.dtype)
    fwd(q[:, :cut], k, v, out=out[:, :cut], num_splits=1, **scales)
    fwd(q[:, cut:], k, v, out=out[:, cut:], num_splits=splits, **scales)
    return out


def _flash(module, waves: bool) -> AttentionFn:
    """waves: cut the queries by wave_split (FA3; FA2 has no key splits)."""
    fwd = _raw_fa3() if waves else None

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scales=None) -> torch.Tensor:
        out = _in_waves(fwd, q, k, v)
        if out is None:
            out = module.flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out

    return run


def _descales(scales: torch.Tensor, batch: int) -> torch.Tensor:
    """The per-head steps [3, H] of q, k, v as FA3's descales [3, B, H]."""
    return scales[:, None, :].expand(3, batch, -1).contiguous()


def _fp8_inputs(q, scales, batch: int):
    """q [B, S, H, D] -> its e4m3 values and the descales [3, B, H] of q, k, v."""
    return to_fp8(q, scales[0]), _descales(scales, batch)


def _flash_fp8(module) -> AttentionFn:
    fwd = _raw_fa3()
    fp8_inputs = compiled(_fp8_inputs, fullgraph=True)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scales=None) -> torch.Tensor:
        # k, v: the FP8 cache, quantized when written (Block.self_qkv); q too where the fused kernel made it
        if q.dtype == torch.float8_e4m3fn:
            q8, descale = q, _descales(scales, q.shape[0])
        else:
            q8, descale = fp8_inputs(q, scales, q.shape[0])
        steps = {"q_descale": descale[0], "k_descale": descale[1], "v_descale": descale[2]}
        out = _in_waves(fwd, q8, k, v, **steps)
        if out is None:
            out = module.flash_attn_func(q8, k, v, **steps)
        return out[0] if isinstance(out, tuple) else out

    return run


def _is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


@functools.lru_cache(maxsize=None)
def resolve(name: str, device_type: str = "cpu", hopper: bool = False, fp16: bool = False) -> tuple[str, AttentionFn]:
    """Maps a backend name to (resolved name, function); `auto` picks the fastest importable one that runs the
    model's dtype (`fp16`: float16, which some FA3 builds leave out)."""
    if name not in BACKENDS:
        raise BackendUnavailableError(f"attention backend '{name}' is unknown; choose one of {', '.join(BACKENDS)}")
    if name == "sdpa" or (name == "auto" and device_type != "cuda"):
        return "sdpa", _sdpa_hopper if hopper else _sdpa
    if name == "auto":
        for candidate in ("flash-attn 3", "flash-attn 2") if hopper else ("flash-attn 2",):
            module = _flash_module(candidate)
            if module is not None and fp16 and _lacks_fp16(module):
                log.info("attention: %s (%s) was built without float16 kernels; fp16 takes the next backend",
                         candidate, module.__name__)
            elif module is not None:
                return candidate, _flash(module, candidate == "flash-attn 3")
        return "sdpa", _sdpa_hopper if hopper else _sdpa
    if device_type != "cuda":
        raise BackendUnavailableError(f"attention backend '{name}' needs a CUDA GPU; use 'sdpa' on {device_type}")
    if name == FP8 and not hopper:
        raise BackendUnavailableError(f"attention backend '{FP8}' needs a Hopper GPU (H100, H200); use 'auto'")
    module = _flash_module("flash-attn 3" if name == FP8 else name)
    if module is None:
        pkg = "flash-attn" if name == "flash-attn 2" else "fa3-fwd (PyPI) or flash-attn 3"
        raise BackendUnavailableError(f"attention backend '{name}' is not installed; pip install {pkg}, or use 'auto'")
    if fp16 and _lacks_fp16(module):
        raise BackendUnavailableError(f"attention backend '{name}': the installed build ({module.__name__}) has no "
                                      f"float16 kernels; use precision bf16, or attention 'auto' or 'sdpa' for fp16")
    return name, _flash_fp8(module) if name == FP8 else _flash(module, name == "flash-attn 3")


def for_device(name: str, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> tuple[str, AttentionFn]:
    """Resolves a backend for the device and dtype the model runs in (the loader logs the final choice, once per
    load)."""
    resolved, fn = resolve(name, device.type, _is_hopper(device), dtype == torch.float16)
    log.debug("attention backend: %s (asked for %s)", resolved, name)
    return resolved, fn


# --- Text cross-attention ---------------------------------------------------------------------


def merge_pad(out: torch.Tensor, lse: torch.Tensor, q: torch.Tensor, pad_k: torch.Tensor, pad_v: torch.Tensor,
              log_pad: torch.Tensor) -> torch.Tensor:
    """Adds the padding key to an attention over the first `used` text keys: out [B, S, H, D] and its
    log-sum-exp lse [B, H, S] (float32) -> attention over all keys. The padding key pad_k [B, 1, H, D]
    repeats n = exp(log_pad) times, so it weighs n * exp(q.pad_k * scale) against exp(lse)."""
    scale = q.shape[-1] ** -0.5
    pad = (q.float() * pad_k.float()).sum(-1) * scale + log_pad[:, None, None]  # [B, S, H]
    seen = lse.transpose(1, 2)
    top = torch.maximum(seen, pad)
    a, b = torch.exp(seen - top)[..., None], torch.exp(pad - top)[..., None]
    # contiguous: compiled, the result would otherwise take lse's layout and cost the next stage a copy
    return ((a * out.float() + b * pad_v.float()) / (a + b)).type_as(out).contiguous()


def _prefix_text(module) -> TextAttentionFn:
    merge = compiled(merge_pad, fullgraph=True)

    def run(q: torch.Tensor, text: TextCache) -> torch.Tensor:
        res = module.flash_attn_with_kvcache(q, text.k, text.v, cache_seqlens=text.used, num_splits=1,
                                             return_softmax_lse=True)
        return merge(res[0], res[1], q, text.pad_k, text.pad_v, text.log_pad)

    return run


def cross_attention(name: str, device: torch.device, fast: bool = False,
                    dtype: torch.dtype = torch.bfloat16) -> TextAttentionFn:
    """The cross-attention for a backend name. `fast` (the fast path) takes the prefix shortcut where
    the flash module has a length-aware kernel, with the merge compiled into one kernel (graphs hide the
    compiled call's overhead). Otherwise, and in eager use, where the merge's separate ops cost more than
    the skipped keys save (run 15), plain attention over every key."""
    resolved, fn = resolve("flash-attn 3" if name == FP8 else name, device.type, _is_hopper(device),
                           dtype == torch.float16)
    module = _flash_module(resolved) if resolved.startswith("flash") else None
    if fast and module is not None and hasattr(module, "flash_attn_with_kvcache"):
        return _prefix_text(module)
    return lambda q, text: fn(q, text.k, text.v)
