"""The Wan VAE's RGB head (96 to 3 channels, 3x3x3, causal) as a Triton kernel: cuDNN runs it far below its memory
speed. The op runs where Triton runs (kernels.ops.available); the streaming decoder picks it (stream.py)."""

from __future__ import annotations

import torch

from ..kernels import ops
from ..kernels.library import custom_op

NARROW = 4  # the most output channels (3 time taps x 4 outputs: 16 product columns)
GPU_LAUNCH = (256, 32, 4)  # (pixels, input channels a step, warps): the fastest measured on the H100


@custom_op("causal_conv3d_narrow", mutates_args=())
def causal_conv3d_narrow(cache: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """conv3d(cat([cache, x], 2), weight, bias, padding=(0, 1, 1)) without the cat, for few output channels.
    cache: [B, C, 2, H, W], x: [B, C, T, H, W] (channels-last 3-D, else copied so); weight: [O, C, 3, 3, 3],
    O <= 4; returns [B, O, T, H, W] contiguous, in x's dtype.

    cuDNN runs the Wan VAE's head (96 to 3 channels at 480x832) far below its memory speed: as a GEMM of 3 columns
    that reads each input 27 times. Here each frame is read once per spatial tap, for all 3 time taps."""
    ops.check(x)
    batch, channels, frames, height, width = x.shape
    outs = weight.shape[0]
    if outs > NARROW or weight.shape[1:] != (channels, 3, 3, 3) or cache.shape != (batch, channels, 2, height, width):
        raise ValueError(f"causal_conv3d_narrow: cache {list(cache.shape)}, x {list(x.shape)} and weight "
                         f"{list(weight.shape)} are not a 3x3x3 convolution to at most {NARROW} channels")
    last = torch.channels_last_3d
    packed = weight.new_zeros(9, channels, 4, 4, dtype=x.dtype)  # [spatial tap, in, time tap (padded), out]
    packed[:, :, :3, :outs] = weight.permute(3, 4, 1, 2, 0).reshape(9, channels, 3, outs)
    out = x.new_empty(batch, outs, frames, height, width)
    block_m, block_k, warps = GPU_LAUNCH if x.is_cuda else (8192, 16, 1)
    _launch((-(-height * width // block_m), batch),
        cache.contiguous(memory_format=last), x.contiguous(memory_format=last), packed, bias, out, frames, height,
        width, channels, outs, BLOCK_M=block_m, BLOCK_K=block_k, CHUNKS=-(-channels // block_k),
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=warps)
    return out


@causal_conv3d_narrow.register_fake
def _(cache, x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0], *x.shape[2:])


def _launch(grid: tuple, *args, **meta) -> None:
    from ..kernels.launch import launch  # imports triton: only when the kernel runs
    from .head_jit import conv3_narrow

    launch(conv3_narrow, grid, *args, **meta)
