"""The model families a video can be made with, told apart by their latent channels: what a run needs to know of
each (its block, its frame rate). runtime/video.py makes each family's session."""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from ..model.cache import FRAMES_PER_BLOCK


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    latent_channels: int
    block: int  # latent frames a block
    fps: int  # pixel frames a second of the decoded video (a latent frame is 4 pixel frames, the first one 1)

    def blocks_for(self, latent_frames: float) -> int:
        """Latent frames rounded up to whole blocks (at least one)."""
        return max(1, -(-int(latent_frames) // self.block)) * self.block


V1 = Family("LongLive 1.x (Wan2.1 T2V 1.3B)", 16, FRAMES_PER_BLOCK, 16)
V2 = Family("LongLive 2.0 (Wan2.2 TI2V 5B)", 48, 8, 24)
FAMILIES = (V1, V2)


def family_of(model) -> Family:
    """The family of a loaded network (CausalWan), by its latent channels."""
    for family in FAMILIES:
        if model.cfg.in_dim == family.latent_channels:
            return family
    raise ConfigError(f"a network with {model.cfg.in_dim} latent channels is none of the families this engine runs: "
                      f"{', '.join(f'{f.name} ({f.latent_channels})' for f in FAMILIES)}")
