"""umt5-xxl's encoder (Wan's text encoder) run on the weights a host holds: the float32 computation ComfyUI's T5
makes (comfy/text_encoders/t5.py, with the rounding it has), its linears through a Triton kernel that reads each
weight as stored (e4m3 with a scale, or 16-bit) and widens it in registers.

ComfyUI casts every weight to float32 in memory before each product: for a text's few tokens (a prompt is 10-100)
its encode is those casts, 40-99 ms on an H200 (runs 131-132; 4.6 GB of e4m3 weights written out as 18 GB of
float32 and read again). Here the weights are read once. On a device Triton does not run on, the linears cast as
ComfyUI does (the reference the kernel is tested against).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from ..kernels import ops

BUCKETS, MAX_DISTANCE = 32, 128  # T5's relative position buckets (both directions)
EPS = 1e-6
# (x rows, weight rows, columns a step, warps, stages) of a program by the rows (tokens) it takes; not yet tuned
GPU_LAUNCH = {16: (16, 32, 128, 4, 3), 32: (32, 32, 128, 4, 3), 64: (64, 32, 64, 4, 3)}
WEIGHT_PARTS = {torch.float8_e4m3fn: 1, torch.float8_e5m2: 1, torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}
STORED = tuple(WEIGHT_PARTS)


@dataclasses.dataclass(frozen=True)
class Linear:
    """A bias-free linear as stored: the weight [out, in] in any of STORED, and its float32 scale (a scalar
    tensor, the scaled-FP8 format's) or None."""
    weight: torch.Tensor
    scale: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] float32 -> [..., out] float32: (x * scale) @ weight^T, the scale on the input as ComfyUI
        applies it to fewer tokens than the weight has rows."""
        if not (_kernel_runs(x.device) and x.device == self.weight.device):
            scaled = x if self.scale is None else x * self.scale.to(torch.float32)
            return F.linear(scaled, self.weight.to(torch.float32))
        return _stored_weight_linear(x, self.weight, self.scale)


@dataclasses.dataclass(frozen=True)
class Layer:
    attention_norm: torch.Tensor
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    position_bias: torch.Tensor  # [BUCKETS, heads]
    ff_norm: torch.Tensor
    gate: Linear  # wi_0, through GELU (tanh)
    up: Linear  # wi_1
    down: Linear  # wo


class Umt5Encoder:
    """token ids [B, T] -> float32 [B, T, d] (the last layer, after its final norm), every token attended: a text
    without padding. The weights are the host's tensors (none copied), looked up by their checkpoint names (T5's:
    encoder.block.{i}.layer.0.SelfAttention.q.weight, its .scale_weight where scaled, ...)."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self.embedding = _tensor(state, "shared.weight")
        count = 0
        while f"encoder.block.{count}.layer.0.layer_norm.weight" in state:
            count += 1
        if not count:
            raise CheckpointError("umt5: no encoder.block.0.layer.0.layer_norm.weight: not a T5 encoder's weights")
        self.layers = [_layer(state, f"encoder.block.{i}.layer.") for i in range(count)]
        self.final_norm = _tensor(state, "encoder.final_layer_norm.weight")
        self.heads = self.layers[0].position_bias.shape[1]

    def tensors(self) -> list[torch.Tensor]:
        """Every weight it reads (the host checks where they are before a call)."""
        out = [self.embedding, self.final_norm]
        for layer in self.layers:
            for field in dataclasses.fields(layer):
                value = getattr(layer, field.name)
                out += [value.weight] if isinstance(value, Linear) else [value]
        return out

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        x = F.embedding(ids, self.embedding).to(torch.float32)
        buckets = position_buckets(ids.shape[1], ids.device)
        for layer in self.layers:
            bias = F.embedding(buckets, layer.position_bias.to(torch.float32)).permute(2, 0, 1).unsqueeze(0)
            x += layer.o(self._attention(_norm(x, layer.attention_norm), layer, bias))
            h = _norm(x, layer.ff_norm)
            x += layer.down(F.gelu(layer.gate(h), approximate="tanh") * layer.up(h))
        return _norm(x, self.final_norm)

    def _attention(self, h: torch.Tensor, layer: Layer, bias: torch.Tensor) -> torch.Tensor:
        """T5's attention is unscaled: k times sqrt(head dim) against SDPA's default scale, as ComfyUI has it (both
        powers of two: exact)."""
        batch, tokens, width = h.shape
        q, k, v = (t.view(batch, tokens, self.heads, -1).transpose(1, 2) for t in (layer.q(h), layer.k(h), layer.v(h)))
        out = F.scaled_dot_product_attention(q, k * (width / self.heads) ** 0.5, v, attn_mask=bias)
        return out.transpose(1, 2).reshape(batch, tokens, width)


def position_buckets(tokens: int, device: torch.device) -> torch.Tensor:
    """T5's bidirectional relative position buckets [tokens, tokens] (query, key): half a direction; within each,
    exact offsets up to a quarter of the buckets, then log-spaced up to MAX_DISTANCE."""
    position = torch.arange(tokens, device=device, dtype=torch.long)
    offset = position[None, :] - position[:, None]
    half = BUCKETS // 2
    exact = half // 2
    distance = offset.abs()
    log_scale = torch.log(distance.float() / exact) / math.log(MAX_DISTANCE / exact)
    far = exact + (log_scale * (half - exact)).to(torch.long)
    far = torch.minimum(far, torch.full_like(far, half - 1))
    return (offset > 0).to(torch.long) * half + torch.where(distance < exact, distance, far)


def _norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """T5's RMSNorm, rounded as ComfyUI's: x / rms in float32, times the weight cast to float32."""
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
    return weight.to(x.dtype) * x


def _layer(state: Mapping[str, torch.Tensor], prefix: str) -> Layer:
    attention, ff = prefix + "0.SelfAttention.", prefix + "1.DenseReluDense."
    return Layer(attention_norm=_tensor(state, prefix + "0.layer_norm.weight"),
                 **{name: _linear(state, attention + name) for name in ("q", "k", "v", "o")},
                 position_bias=_tensor(state, attention + "relative_attention_bias.weight"),
                 ff_norm=_tensor(state, prefix + "1.layer_norm.weight"), gate=_linear(state, ff + "wi_0"),
                 up=_linear(state, ff + "wi_1"), down=_linear(state, ff + "wo"))


def _linear(state: Mapping[str, torch.Tensor], name: str) -> Linear:
    weight, scale = _tensor(state, name + ".weight"), state.get(name + ".scale_weight")
    if scale is not None and scale.numel() != 1:
        raise CheckpointError(f"umt5: {name}.scale_weight holds {scale.numel()} values; a scaled weight has one")
    return Linear(weight, scale)


def _tensor(state: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    tensor = state.get(name)
    if tensor is None:
        raise CheckpointError(f"umt5: the weights have no {name} (not umt5-xxl's encoder, or a umt5 without "
                              f"per-layer position biases)")
    if tensor.dtype not in STORED:
        raise CheckpointError(f"umt5: {name} is {tensor.dtype}; the encoder reads {', '.join(map(str, STORED))}")
    return tensor


def _kernel_runs(device: torch.device) -> bool:
    """Whether the kernel runs there: Triton's (a CUDA GPU with bfloat16 tensor cores, or its interpreter)."""
    if not ops.available(device):
        return False
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 0)


def _stored_weight_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    from ..kernels.launch import launch  # imports triton: only when the kernel runs
    from .umt5_jit import stored_weight_linear

    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    rows, (cols, width) = x2.shape[0], weight.shape
    y = x2.new_empty(rows, cols)
    block_m, block_n, block_k, warps, stages = GPU_LAUNCH[16 if rows <= 16 else 32 if rows <= 32 else 64]
    if not x.is_cuda:  # the interpreter pays per program
        block_n, block_k, warps, stages = ops.row_block(cols), ops.row_block(width), 1, 1
    launch(stored_weight_linear, (-(-cols // block_n), -(-rows // block_m)),
           x2, weight.contiguous(), weight if scale is None else scale, y, rows, cols, width,
           SCALED=scale is not None, W_PARTS=WEIGHT_PARTS[weight.dtype], BLOCK_M=block_m, BLOCK_N=block_n,
           BLOCK_K=block_k, INTERPRETED=not x.is_cuda, num_warps=warps, num_stages=stages)
    return y.view(*x.shape[:-1], cols)
