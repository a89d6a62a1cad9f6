"""FP8 (e4m3) quantization helpers shared by the FP8 linears, the FP8 attention and the Triton kernels."""

from __future__ import annotations

import torch

E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max
SCALE_FLOOR = 1e-12  # the smallest row scale: an all-zero row (padded text tokens) must not divide by zero


def to_fp8(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """x [..., H, D] -> e4m3 values of x / step (step [H] per head), clamped to the e4m3 range."""
    return (x.float() / step[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def rowwise_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [M, K] -> (e4m3 values [M, K], float32 scales [M, 1]) with x ~= values * scales."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=SCALE_FLOOR) / E4M3_MAX
    return (x.float() / scale).to(torch.float8_e4m3fn), scale
