"""Model configuration of the causal Wan2.1 network, read from a state dict's shapes."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch

from ..errors import CheckpointError

PATCH = (1, 2, 2)
TEXT_LEN = 512
ROPE_POSITIONS = 1024
HEAD_DIM = 128


@dataclasses.dataclass(frozen=True)
class WanConfig:
    """Shapes of a Wan2.1 text-to-video transformer (defaults: the 1.3B model)."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    text_dim: int = 4096
    freq_dim: int = 256
    in_dim: int = 16
    out_dim: int = 16
    eps: float = 1e-6

    def __post_init__(self):
        if self.num_heads < 1:
            raise CheckpointError(f"num_heads={self.num_heads} must be at least 1")
        if self.dim % self.num_heads:
            raise CheckpointError(f"num_heads={self.num_heads} does not divide dim={self.dim}; pass num_heads explicitly")
        if (self.dim // self.num_heads) % 2:
            raise CheckpointError(f"head dim {self.dim // self.num_heads} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], num_heads: int | None = None, eps: float = 1e-6) -> "WanConfig":
        """Reads dims from canonical Wan keys; heads default to dim // 128 unless given."""
        dim, in_dim = sd["patch_embedding.weight"].shape[:2]
        layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        heads = num_heads or max(1, dim // HEAD_DIM)
        return cls(
            dim=dim,
            ffn_dim=sd["blocks.0.ffn.0.weight"].shape[0],
            num_heads=heads,
            num_layers=layers,
            text_dim=sd["text_embedding.0.weight"].shape[1],
            freq_dim=sd["time_embedding.0.weight"].shape[1],
            in_dim=in_dim,
            out_dim=sd["head.head.weight"].shape[0] // (PATCH[0] * PATCH[1] * PATCH[2]),
            eps=eps,
        )


LONGLIVE_2_5B = WanConfig(dim=3072, ffn_dim=14336, num_heads=24, in_dim=48, out_dim=48)  # Wan2.2-TI2V-5B's shapes
