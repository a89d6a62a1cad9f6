"""The causal Wan2.1 transformer that LongLive generates with: the eager reference (the fast path's own classes are
in fused.py and are tested against this).

Read in data-flow order: RoPE tables -> pass plan -> norms -> attention layers -> block -> model. Latents cross
this module as [B, F, C, H, W] (normalized latent space).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..quant.fp8 import E4M3_MAX, to_fp8
from ..quant.precision import Precision, plain
from .attention import FP8, TextAttentionFn, cross_attention, for_device
from .cache import KVCache, TextCache
from .config import PATCH, ROPE_POSITIONS, WanConfig

# --- RoPE ---------------------------------------------------------------------------------


def _inv_freqs(pairs: int, theta: float = 10000.0) -> torch.Tensor:
    """[pairs] float64 frequencies, as upstream's rope_params (dim = 2 * pairs)."""
    return 1.0 / theta ** (torch.arange(0, 2 * pairs, 2, dtype=torch.float64) / (2 * pairs))


class RopeTable:
    """Per-axis RoPE angles; head_dim / 2 pairs split between time, height and width. Time angles are computed for
    the frames asked, in float64 (frame 100,000 rotates as exactly as frame 0; a LongLive 1.x session in absolute
    positions stops at 1024 as upstream's table does: its end_position); height and width come from 1024-row
    tables."""

    def __init__(self, head_dim: int, device=None):
        pairs = head_dim // 2
        hw = pairs // 3
        self.time_freqs = _inv_freqs(pairs - 2 * hw).to(device)
        rows = torch.arange(ROPE_POSITIONS, dtype=torch.float64)
        self.height = torch.outer(rows, _inv_freqs(hw)).to(device)
        self.width = torch.outer(rows, _inv_freqs(hw)).to(device)

    def time(self, start_frame: int, num_frames: int) -> torch.Tensor:
        """Angles [num_frames, time pairs] of frames start_frame .. start_frame + num_frames - 1, float64."""
        frames = torch.arange(start_frame, start_frame + num_frames, dtype=torch.float64, device=self.time_freqs.device)
        return torch.outer(frames, self.time_freqs)

    def cos_sin(self, start_frame: int, num_frames: int, grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [num_frames * grid_h * grid_w, head_dim / 2] for tokens in (f, h, w) order."""
        f, h, w = num_frames, grid_h, grid_w
        angles = torch.cat([
            self.time(start_frame, f).view(f, 1, 1, -1).expand(f, h, w, -1),
            self.height[:h].view(1, h, 1, -1).expand(f, h, w, -1),
            self.width[:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ], dim=-1).reshape(f * h * w, -1)
        return angles.cos().float(), angles.sin().float()

    def move(self, keys: torch.Tensor, frames: int) -> torch.Tensor:
        """Keys [..., H, D] after RoPE, moved `frames` later in time: their time pairs rotated on by the angle of
        that many frames (RoPE of p, then of d, is RoPE of p + d). Float32, cast back to the keys' dtype."""
        angle = frames * self.time_freqs  # float64: exact for any distance
        pairs = keys.float().unflatten(-1, (-1, 2))
        t = angle.numel()
        c, s = angle.cos().float(), angle.sin().float()
        x0, x1 = pairs[..., :t, 0], pairs[..., :t, 1]
        moved = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
        return torch.cat([moved, pairs[..., t:, :]], dim=-2).flatten(-2).to(keys.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates adjacent pairs of x [B, S, H, D] by per-token angles (cos/sin [S, D/2])."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None], sin[None, :, None]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2).type_as(x)


# --- Where a pass sits in the video --------------------------------------------------------


@dataclasses.dataclass
class PassPlan:
    """Positions of one forward pass, held as tensors so a captured graph can replay it.

    rope_cos/rope_sin: [tokens, head_dim / 2]; write_index: [tokens] cache slots of the pass's
    tokens; kv_len: how many cache tokens the queries attend to (a prefix of the buffer);
    cache_only: the pass only writes the cache (a clean pass, a recache), so the last layer stops
    once its K/V are written and the model returns nothing. sink_shift is placed before the pass, outside it.
    """

    rope_cos: torch.Tensor
    rope_sin: torch.Tensor
    write_index: torch.Tensor
    kv_len: int
    cache_only: bool = False
    sink_shift: int = 0  # relative positions: how many frames the sink keys sit later for this pass (StreamSession)

    def copy_(self, other: "PassPlan") -> None:
        """Writes another plan of the same shape into this one's buffers (graph inputs)."""
        self.rope_cos.copy_(other.rope_cos)
        self.rope_sin.copy_(other.rope_sin)
        self.write_index.copy_(other.write_index)


# --- Norms -------------------------------------------------------------------------------


def layer_norm(x: torch.Tensor, eps: float, weight=None, bias=None) -> torch.Tensor:
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps)


def _by_frame(x: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """x [B, S, dim] as [B, F, S / F, dim] where `row` holds one row a frame ([B, F, 1, dim]); else x as it is
    (a row a sample, [B, 1, dim])."""
    return x if row.dim() == 3 else x.unflatten(1, (row.shape[1], -1))


def _tokens(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.flatten(1, 2).type_as(like) if x.dim() == 4 else x.type_as(like)


def gated_add(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """The gated residual x + y * gate in float32, rounded to x's dtype (gate: a row a sample or a frame)."""
    return _tokens(_by_frame(x, gate).float() + _by_frame(y, gate).float() * gate, x)


def modulate(x: torch.Tensor, eps: float, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """layer_norm(x) * (1 + scale) + shift in float32, rounded to x's dtype (shift, scale: a row a sample or a
    frame)."""
    return _tokens(layer_norm(_by_frame(x, shift), eps) * (1 + scale) + shift, x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class AffineLayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.eps, self.weight, self.bias).type_as(x)


# --- Attention layers ------------------------------------------------------------------------


class Attention(nn.Module):
    """q/k/v/o projections with RMSNorm on q and k; the attention itself runs in CausalWan.layer. The FP8
    attention's per-head steps (set_fp8_scales) are not part of the state dict."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.heads = cfg.num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(cfg.dim, cfg.eps), RMSNorm(cfg.dim, cfg.eps)
        self.register_buffer("fp8_scales", None, persistent=False)  # [3, H]: FP8 attention's q/k/v steps

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1))

    def text_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # context: [B, L, dim] -> k, v: [B, L, H, D]
        return self.split(self.norm_k(self.k(context))), self.split(self.v(context))

    def v_dense(self, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
        """v's weight [dim, dim] and bias [dim] in float32 (for the FP8 attention's bounds)."""
        return precision.dense_weight(self.v), self.v.bias.float()


# --- Transformer block -------------------------------------------------------------------------


class Block(nn.Module):
    """One Wan layer. The three dense stages around the two attentions are separate methods (CausalWan.layer runs
    them, compiled on the fast path); the first one also writes the KV cache."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = Attention(cfg)
        self.norm3 = AffineLayerNorm(cfg.dim, cfg.eps)
        self.cross_attn = Attention(cfg)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, cfg.dim))

    @staticmethod
    def mods(mod: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # shift, scale, gate of attention, then of the FFN: each [B, 1, dim], or [B, F, 1, dim] from a mod [B, F, 6,
        # dim] with a row a frame (image-to-video's first block: frame 0 at timestep 0)
        return mod.unsqueeze(-2).unbind(-3)

    def self_qkv(self, x, carry, mod, cos, sin, write_index, cache_k, cache_v):
        """x: [B, S, dim]; carry: None, or the previous layer's FFN output and gate not yet added to x; mod: [B, 6,
        dim] float32, this layer's modulation plus the time embedding; cache_k/v: [B, window tokens, H, D]. Returns
        (x with the carry added, q [B, S, H, D]); k (after RoPE) and v go straight into their cache slots (an FP8
        cache: quantized with the FP8 attention's per-head steps)."""
        shift, scale = self.mods(mod)[:2]
        a = self.self_attn
        x = x if carry is None else gated_add(x, *carry)
        h = modulate(x, self.eps, shift, scale)
        q, k, v = a.q(h), a.k(h), a.v(h)
        self._write(cache_k, write_index, apply_rope(a.split(a.norm_k(k)), cos, sin), 1)
        self._write(cache_v, write_index, a.split(v), 2)
        return x, apply_rope(a.split(a.norm_q(q)), cos, sin)

    def _write(self, cache: torch.Tensor, index: torch.Tensor, x: torch.Tensor, which: int) -> None:
        if cache.dtype == torch.float8_e4m3fn:
            x = to_fp8(x, self.self_attn.fp8_scales[which])
            # eager index_copy has no FP8 kernels: write the bytes. Compiled code writes FP8 directly (through
            # a byte view inductor would copy the whole layer's cache back on every write).
            if not torch.compiler.is_compiling():
                cache, x = cache.view(torch.uint8), x.view(torch.uint8)
        cache.index_copy_(1, index, x)

    def self_out_cross_q(self, x, y, mod):
        """y: the self-attention's output [B, S, H, D]. Returns (x, the cross-attention's normed q [B, S, H, D])."""
        gate = self.mods(mod)[2]
        c = self.cross_attn
        x = gated_add(x, self.self_attn.o(y.flatten(2)), gate)
        return x, c.split(c.norm_q(c.q(self.norm3(x))))

    def cross(self, q, text: TextCache, cross_attend: TextAttentionFn) -> torch.Tensor:
        return cross_attend(q, text)

    def cross_out_ffn(self, x, y, mod):
        """Returns (x, carry): carry is None here (the fused block leaves its FFN's gated residual to the next
        layer's first norm)."""
        _, _, _, shift, scale, gate = self.mods(mod)
        x = x + self.cross_attn.o(y.flatten(2))
        return gated_add(x, self.ffn(modulate(x, self.eps, shift, scale)), gate), None


@dataclasses.dataclass(frozen=True)
class Stages:
    """The three dense stages of a layer as functions of (block, ...): a block class's own methods, or the fast
    path's compiled versions of them (fast/compile.py)."""

    self_qkv: Callable
    self_out_cross_q: Callable
    cross_out_ffn: Callable

    @classmethod
    def of(cls, block_class: type) -> "Stages":
        return cls(block_class.self_qkv, block_class.self_out_cross_q, block_class.cross_out_ffn)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(PATCH))
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x, carry, e):
        # x: [B, S, dim]; carry: see Block.forward; e: [B, dim] float32 time embedding, or [B, F, dim] a frame
        x = x if carry is None else gated_add(x, *carry)
        shift, scale = (self.modulation.float() + e.unsqueeze(-2)).unsqueeze(-2).unbind(-3)
        return self.head(modulate(x, self.eps, shift, scale))


# --- Time embedding ------------------------------------------------------------------------------


def sinusoid(freq_dim: int, t: torch.Tensor) -> torch.Tensor:
    """[N] timesteps -> [N, freq_dim] cos|sin embedding, computed in float64 as upstream."""
    half = freq_dim // 2
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


@dataclasses.dataclass
class TimeEmbedding:
    """e: [B, dim] for the head, e0: [B, 6, dim] for the blocks; float32. mods: [layers, B, 6, dim], each
    layer's modulation + e0, where computed up front (sessions do: a step's timestep is the same every block,
    and a graph then reads them instead of adding them on every pass)."""

    e: torch.Tensor
    e0: torch.Tensor
    mods: torch.Tensor | None = None


# --- The model ----------------------------------------------------------------------------------


class CausalWan(nn.Module):
    """Wan2.1 text-to-video made block-causal, attending through a KVCache."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=PATCH, stride=PATCH)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.attention_backend, self.attend = "sdpa", for_device("sdpa", torch.device("cpu"))[1]
        self.cross_attend = cross_attention("sdpa", torch.device("cpu"))
        self.stages = Stages.of(Block)
        self.quantized: Precision | None = None  # set by Precision.apply

    @property
    def precision(self) -> Precision:
        return self.quantized or plain(self.dtype)

    @property
    def device(self) -> torch.device:
        return self.head.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.head.weight.dtype

    @property
    def kv_dtype(self) -> torch.dtype:
        """What the self-attention KV cache holds: FP8 for the FP8 attention (written quantized), else dtype."""
        return torch.float8_e4m3fn if self.attention_backend == FP8 else self.dtype

    def set_attention(self, backend: str, cross: str | None = None, fast: bool = False) -> str:
        """Chooses the attention kernels (cross-attention: the same unless given; `fast`: see cross_attention);
        float32 always uses SDPA (flash kernels need 16-bit). Returns the backend chosen."""
        half = self.dtype in (torch.bfloat16, torch.float16)
        if backend == FP8 and self.dtype == torch.float16:
            raise ConfigError(f"attention '{FP8}' returns bf16 and needs precision bf16 or fp8, not fp16")
        self.attention_backend, self.attend = for_device(backend if half else "sdpa", self.device, self.dtype)
        self.cross_attend = cross_attention((cross or backend) if half else "sdpa", self.device, fast, self.dtype)
        if self.attention_backend == FP8 and self.blocks[0].self_attn.fp8_scales is None:
            self.set_fp8_scales()
        return self.attention_backend

    @property
    def calls_compiled(self) -> bool:
        """Whether its passes call torch.compile'd code (FP8 self-attention quantizes its inputs in a compiled
        function): such a call waits while another thread's compiled call runs (fast/compile.py), so Video.run
        readies its decoder beside the blocks only where they replay CUDA graphs."""
        return self.attention_backend == FP8

    def key_steps(self) -> torch.Tensor:
        """[layers, H] float32: the FP8 attention's per-head key steps of every layer (set_fp8_scales)."""
        return torch.stack([block.self_attn.fp8_scales[1] for block in self.blocks])

    @torch.no_grad()
    def set_fp8_scales(self) -> None:
        """Per-head FP8 steps of every layer's q, k and v, from bounds that no input can exceed, so that a
        graph can use them from the first block to the last (e4m3 keeps 3 mantissa bits over 15 octaves:
        a loose bound costs no precision for typical values). A normalized vector n has |n|_2 <= sqrt(dim):
        RMSNorm bounds each q/k element by sqrt(dim) * |weight| (RoPE rotates pairs within that); v_j =
        sum_i W_ji (1 + scale_i) n_i + (W shift + b)_j is bounded by sqrt(dim) |W_j (1 + scale)|_2 + |...|
        for the modulation of any timestep in [0, 1000]."""
        root = math.sqrt(self.cfg.dim)
        e0 = self.time_embed(torch.arange(0, 1001, device=self.device, dtype=torch.float32)).e0  # [T, 6, dim]
        for block in self.blocks:
            a = block.self_attn
            mod = block.modulation.float() + e0
            w, b = a.v_dense(self.precision)
            spread = root * ((w * w) @ ((1 + mod[:, 1]) ** 2).t()).sqrt()  # [dim, T]
            offset = (mod[:, 0] @ w.t() + b).abs().t()
            v_max = (spread + offset).amax(1)
            bounds = torch.stack([root * a.norm_q.weight.float().abs(), root * a.norm_k.weight.float().abs(), v_max])
            a.fp8_scales = bounds.unflatten(1, (a.heads, -1)).amax(-1) * 1.01 / E4M3_MAX

    @torch.no_grad()
    def time_embed(self, t: torch.Tensor, layers: bool = False) -> TimeEmbedding:
        """t: [B] timesteps (floats), or [B, F] a timestep a frame -> TimeEmbedding (e [B, (F,) dim], e0 [B, (F,) 6,
        dim]; with every layer's modulation if `layers`)."""
        e = self.time_embedding(sinusoid(self.cfg.freq_dim, t.flatten()).to(self.dtype)).unflatten(0, t.shape)
        e0 = self.time_projection(e).unflatten(-1, (6, self.cfg.dim)).float()
        return TimeEmbedding(e.float(), e0, self.layer_mods(e0) if layers else None)

    def layer_mods(self, e0: torch.Tensor) -> torch.Tensor:
        """e0 [B, (F,) 6, dim] -> [layers, B, (F,) 6, dim]: each layer's modulation + e0."""
        modulation = torch.stack([block.modulation.float() for block in self.blocks])  # [layers, 1, 6, dim]
        return modulation.view(len(self.blocks), *[1] * (e0.dim() - 2), 6, -1) + e0

    @torch.no_grad()
    def fill_text_cache(self, embeds: torch.Tensor, text: TextCache) -> None:
        """embeds: [B, 512, text_dim] -> every layer's cross-attention K/V, written in place."""
        embeds = embeds.to(self.device, self.dtype)
        pad_row = text.set_used(embeds)
        context = self.text_embedding(embeds)
        samples = torch.arange(embeds.shape[0], device=self.device)
        for i, block in enumerate(self.blocks):
            k, v = block.cross_attn.text_kv(context)
            text.k[i].copy_(k)
            text.v[i].copy_(v)
            text.pad_k[i].copy_(k[samples, pad_row].unsqueeze(1))
            text.pad_v[i].copy_(v[samples, pad_row].unsqueeze(1))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, F, C, H, W] -> tokens [B, F * H/2 * W/2, dim] in (f, h, w) order
        return self.patch_embedding(x.transpose(1, 2)).flatten(2).transpose(1, 2)

    def unpatchify(self, x: torch.Tensor, frames: int, grid_h: int, grid_w: int) -> torch.Tensor:
        # x: [B, S, C * 4] with (p_h, p_w, c) fastest-last -> [B, F, C, H, W]
        b, c = x.shape[0], self.cfg.out_dim
        x = x.view(b, frames, grid_h, grid_w, PATCH[1], PATCH[2], c).permute(0, 1, 6, 2, 4, 3, 5)
        return x.reshape(b, frames, c, grid_h * PATCH[1], grid_w * PATCH[2])

    @torch.no_grad()
    def forward(self, x: torch.Tensor, time: TimeEmbedding, plan: PassPlan, cache: KVCache, text: TextCache):
        """x: [B, F, C, H, W] noisy latents -> flow velocity [B, F, C, H, W] (model dtype), or None for a
        cache_only plan: then the last layer writes its K/V and stops (nothing reads its output)."""
        frames, grid_h, grid_w = x.shape[1], x.shape[3] // PATCH[1], x.shape[4] // PATCH[2]
        h = self.patchify(x.to(self.dtype))
        full = len(self.blocks) - 1 if plan.cache_only else len(self.blocks)
        mods = self.layer_mods(time.e0) if time.mods is None else time.mods
        carry = None
        for i, block in enumerate(self.blocks[:full]):
            h, carry = self.layer(block, h, carry, mods[i], plan, cache.k[i], cache.v[i], text.layer(i))
        if plan.cache_only:
            self.stages.self_qkv(self.blocks[-1], h, carry, mods[-1], plan.rope_cos, plan.rope_sin, plan.write_index,
                                 cache.k[-1], cache.v[-1])
            return None
        return self.unpatchify(self.head(h, carry, time.e), frames, grid_h, grid_w)

    def layer(self, block, x, carry, mod, plan: PassPlan, cache_k, cache_v, text: TextCache):
        """One layer: x [B, S, dim]; carry: see Block.self_qkv; mod: [B, 6, dim] float32 (TimeEmbedding.mods);
        cache_k/v: [B, window tokens, H, D], written in place at plan.write_index. Returns (x, carry)."""
        s = self.stages
        x, q = s.self_qkv(block, x, carry, mod, plan.rope_cos, plan.rope_sin, plan.write_index, cache_k, cache_v)
        y = self.attend(q, cache_k[:, :plan.kv_len], cache_v[:, :plan.kv_len], block.self_attn.fp8_scales)
        x, q = s.self_out_cross_q(block, x, y, mod)
        return s.cross_out_ffn(block, x, block.cross(q, text, self.cross_attend), mod)
