"""The fast path's own classes: the fused block and the model that runs it, built from an eager model's weights.

FastWan shares the eager model's tensors (nothing is copied but the concatenated q|k|v) and never changes the eager
model: the eager CausalWan stays the reference the fast path is tested against. A FusedBlock runs the norms,
residuals, RoPE, cache writes and the text cross-attention through the Triton kernels of kernels/ops.py around one
q|k|v GEMM, and the FFN's GELU in its first GEMM's epilogue where the precision allows (Precision, resolved once).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import ops
from ..kernels.library import custom_op
from ..quant.precision import Precision
from .cache import TextCache
from .config import WanConfig
from .wan import Block, CausalWan, Stages

# --- The FFN's first GEMM with its GELU as an epilogue -------------------------------------------


@custom_op("linear_gelu", mutates_args=())
def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x @ weight.T + bias), x: [..., in]. On CUDA one cuBLASLt GEMM applies the GELU to the
    float32 accumulator (Wan's GELU is the tanh form, which is what that epilogue computes); the
    [tokens, ffn_dim] product is never written and read back. Elsewhere: the two ops."""
    flat = x.reshape(-1, x.shape[-1])
    if x.is_cuda:
        out = torch._addmm_activation(bias, flat, weight.t(), use_gelu=True)
    else:
        out = F.gelu(F.linear(flat, weight, bias), approximate="tanh")
    return out.reshape(*x.shape[:-1], weight.shape[0])


@linear_gelu.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


# --- q|k|v as one linear ---------------------------------------------------------------------------


def _linear_like(linear: nn.Module, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None) -> nn.Module:
    """A linear of linear's class and settings (plain, FP8 or int8 dynamic: steps per output row) on other tensors."""
    out = copy.copy(linear)
    out._parameters, out._buffers, out._modules = dict(linear._parameters), dict(linear._buffers), {}
    out.weight = nn.Parameter(weight, requires_grad=False)
    out.bias = nn.Parameter(bias, requires_grad=False)
    if scale is not None:
        out.weight_scale = scale  # [1, out]
    if hasattr(out, "out_features"):
        out.out_features = weight.shape[0]
    return out


def concat_rows(linears: list[nn.Module]) -> nn.Module:
    """One linear whose output is the given linears' outputs side by side (one GEMM instead of several)."""
    scales = [getattr(m, "weight_scale", None) for m in linears]
    return _linear_like(linears[0], torch.cat([m.weight for m in linears]), torch.cat([m.bias for m in linears]),
                        None if scales[0] is None else torch.cat(scales, dim=1))


def split_rows(linear: nn.Module, parts: int) -> list[nn.Module]:
    """The inverse of concat_rows, as views of linear's tensors."""
    scale = getattr(linear, "weight_scale", None)
    scales = [None] * parts if scale is None else scale.chunk(parts, dim=1)
    return [_linear_like(linear, w, b, s) for w, b, s in
            zip(linear.weight.chunk(parts), linear.bias.chunk(parts), scales)]


class FusedSelfAttention(nn.Module):
    """The self-attention's projections with q, k and v in one linear (qkv); o and the norms are the eager ones."""

    def __init__(self, attn):
        super().__init__()
        self.heads = attn.heads
        self.qkv = concat_rows([attn.q, attn.k, attn.v])
        self.o, self.norm_q, self.norm_k = attn.o, attn.norm_q, attn.norm_k
        self.register_buffer("fp8_scales", attn.fp8_scales, persistent=False)

    def v_dense(self, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.norm_q.weight.numel()
        return precision.dense_weight(self.qkv)[2 * n:], self.qkv.bias[2 * n:].float()


# --- The fused block ----------------------------------------------------------------------------------------


class FusedBlock(nn.Module):
    """One Wan layer of the fast path: the stages of Block, computing what it computes (rounding where it rounds),
    with the memory-bound work in Triton kernels. With FP8 linears (Precision.quantized_rows) the norm kernels hand
    their rows over quantized; the FFN's gated residual is left to the next layer's first norm (carry)."""

    def __init__(self, block: Block, precision: Precision):
        super().__init__()
        self.eps = block.eps
        self.self_attn = FusedSelfAttention(block.self_attn)
        self.norm3, self.cross_attn, self.ffn, self.modulation = block.norm3, block.cross_attn, block.ffn, block.modulation
        self.quantized_rows = precision.quantized_rows
        self.gelu_epilogue = precision.gelu_epilogue

    mods = staticmethod(Block.mods)

    def self_qkv(self, x, carry, mod, cos, sin, write_index, cache_k, cache_v):
        """As Block.self_qkv; with an FP8 cache q is returned quantized too."""
        shift, scale = self.mods(mod)[:2]
        a = self.self_attn
        x, h = ops.norm(x, carry, scale, shift, self.eps, True, fp8=self.quantized_rows)
        return x, ops.qkv_norm_rope_write(_project(a.qkv, h, x), a.norm_q.weight, a.norm_k.weight, cos, sin,
                                          write_index, cache_k, cache_v, a.fp8_scales, a.heads, a.norm_q.eps)

    def self_out_cross_q(self, x, y, mod):
        """Returns (x, the cross-attention's raw q projection [B, S, dim]): the text attention kernel norms it."""
        gate = self.mods(mod)[2]
        o, n3 = self.self_attn.o(y.flatten(2)), self.norm3
        x, h = ops.norm(x, (o, gate), n3.weight, n3.bias, n3.eps, False, fp8=self.quantized_rows)
        return x, _project(self.cross_attn.q, h, x)

    def cross(self, q, text: TextCache, cross_attend=None) -> torch.Tensor:
        n = self.cross_attn.norm_q
        return ops.text_attention(q, n.weight, n.eps, text.k, text.v, text.used, text.pad_k, text.pad_v, text.log_pad)

    def cross_out_ffn(self, x, y, mod):
        _, _, _, shift, scale, gate = self.mods(mod)
        o = self.cross_attn.o(y.flatten(2))
        x, h = ops.norm(x, (o, None), scale, shift, self.eps, True, fp8=self.quantized_rows)
        return x, (self._ffn(h, x), gate)

    def _ffn(self, h, like: torch.Tensor) -> torch.Tensor:
        """h: the normed activations, or an FP8 FFN's quantized rows (like: x, for the output's shape and dtype)."""
        up, down = self.ffn[0], self.ffn[2]
        if isinstance(h, tuple):
            out = up.gelu_rows_into(down, *h, like.dtype)
            return out.view(*like.shape[:-1], out.shape[-1])
        if self.gelu_epilogue:
            return down(linear_gelu(h, up.weight, up.bias))
        return self.ffn(h)

    def reference(self, cfg: WanConfig) -> Block:
        """An eager Block on this block's weights (q, k and v as views of the fused q|k|v)."""
        with torch.device("meta"):
            block = Block(cfg)
        a, fused = block.self_attn, self.self_attn
        a.q, a.k, a.v = split_rows(fused.qkv, 3)
        a.o, a.norm_q, a.norm_k, a.fp8_scales = fused.o, fused.norm_q, fused.norm_k, fused.fp8_scales
        block.norm3, block.cross_attn, block.ffn, block.modulation = self.norm3, self.cross_attn, self.ffn, self.modulation
        return block


def _project(linear: nn.Module, h, like: torch.Tensor) -> torch.Tensor:
    """linear(h), h from ops.norm: normed activations, or an FP8 linear's (values, scales) rows."""
    if not isinstance(h, tuple):
        return linear(h)
    out = linear.matmul(*h, like.dtype)
    return out.view(*like.shape[:-1], out.shape[-1])


# --- The fast path's model ------------------------------------------------------------------------------------

SHARED = ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "head")


class FastWan(CausalWan):
    """The eager model's embeddings and head with fused blocks (or, where the Triton kernels cannot run or the
    precision does not fuse, the eager blocks themselves); fast/setup.py sets its attention and compiles its stages."""

    @property
    def calls_compiled(self) -> bool:
        return True  # its dense stages and the text attention's merge, where they compile

    @classmethod
    def of(cls, eager: CausalWan, fused: bool) -> "FastWan":
        with torch.device("meta"):
            fast = cls(eager.cfg)
        for name in SHARED:
            setattr(fast, name, getattr(eager, name))
        fast.quantized = eager.quantized
        fast.blocks = nn.ModuleList(FusedBlock(b, eager.precision) if fused else b for b in eager.blocks)
        fast.stages = Stages.of(FusedBlock if fused else Block)
        return fast

    @property
    def fused(self) -> bool:
        return isinstance(self.blocks[0], FusedBlock)

    def unfuse(self) -> None:
        """Runs eager blocks on the same weights from now on (the Triton kernels or their compiled stages failed)."""
        if self.fused:
            self.blocks = nn.ModuleList(b.reference(self.cfg) for b in self.blocks)
        self.stages = Stages.of(Block)
