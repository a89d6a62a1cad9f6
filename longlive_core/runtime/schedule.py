"""The 4-step warped flow-matching schedule and the noise that drives it."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch

TRAIN_STEPS = 1000
SHIFT = 5.0
DENOISING_STEPS = (1000, 750, 500, 250)


@dataclasses.dataclass(frozen=True)
class DenoisingSchedule:
    """timesteps[i] and sigmas[i] of each denoising step; the clean-context pass uses t = 0."""

    timesteps: tuple[float, ...]
    sigmas: tuple[float, ...]

    @classmethod
    def warped(cls, steps=DENOISING_STEPS, shift: float = SHIFT) -> "DenoisingSchedule":
        """Upstream's table: sigma = linspace(1, 0, 1001)[:-1] shifted, indexed at 1000 - step."""
        sigma = torch.linspace(1.0, 0.0, TRAIN_STEPS + 1)[:-1]
        sigma = shift * sigma / (1 + (shift - 1) * sigma)
        timesteps = sigma * TRAIN_STEPS
        idx = [TRAIN_STEPS - s for s in steps]
        return cls(tuple(timesteps[i].item() for i in idx), tuple(sigma[i].item() for i in idx))

    def __len__(self) -> int:
        return len(self.timesteps)


class NoiseSource(Protocol):
    """Gives the Gaussian draws of one block: [steps, B, 3, C, H, W] = initial noise, then re-noising."""

    def block_noise(self, block: int, shape: tuple[int, ...], device, dtype) -> torch.Tensor: ...


class SeededNoise:
    """Each block's draws come from (seed, block index) alone: a session continues reproducibly, and a
    block that is retried (after an error) gets the noise it would have had."""

    def __init__(self, seed: int, device: torch.device):
        self.seed = seed
        self.generator = torch.Generator(device=device)

    def block_noise(self, block: int, shape, device, dtype) -> torch.Tensor:
        self.generator.manual_seed((self.seed * 1_000_003 + block) % 2**63)
        return torch.randn(shape, generator=self.generator, device=device, dtype=torch.float32)


class RecordedNoise:
    """Replays recorded draws: noise [B, F, C, H, W] and renoise [blocks * 3, B, 3, C, H, W]
    (or upstream's flattened [blocks * 3, B * 3, C, H, W])."""

    def __init__(self, noise: torch.Tensor, renoise: torch.Tensor, frames_per_block: int = 3):
        self.noise, self.renoise, self.fpb = noise, renoise, frames_per_block

    def block_noise(self, block: int, shape, device, dtype) -> torch.Tensor:
        steps = shape[0]
        first = self.noise[:, block * self.fpb:(block + 1) * self.fpb]
        renoise = self.renoise[block * (steps - 1):(block + 1) * (steps - 1)].reshape(steps - 1, *first.shape)
        return torch.cat([first[None], renoise]).to(device, torch.float32)
