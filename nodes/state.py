"""Server-side state of the pack: the loaded-model wrapper and the session registry.

Module-level objects live as long as the ComfyUI server; V3 node classes hold no state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Any

import torch

from longlive_core import StreamSession
from longlive_core.cache import FRAMES_PER_BLOCK
from longlive_core.registry import SessionRegistry

log = logging.getLogger("longlive")

UMT5_DIM = 4096
SESSION_CAP_BYTES = int(float(os.environ.get("LONGLIVE_SESSION_CAP_GB", "24")) * 2**30)


@dataclasses.dataclass
class LongLiveModel:
    """What the loader hands to the sampler (type LONGLIVE_MODEL)."""

    model: Any  # longlive_core.CausalWan
    name: str
    precision: str
    fast: bool
    patcher: Any = None  # comfy ModelPatcher, so ComfyUI can unload us when memory is short
    runners: list = dataclasses.field(default_factory=list)  # graph runners to drop when weights move

    @property
    def synthetic(self) -> bool:
        """Models whose text width is not umt5-xxl's can only be driven by hashed test embeddings."""
        return self.model.cfg.text_dim != UMT5_DIM

    def drop_graphs(self, *_args) -> None:
        for runner in self.runners:
            runner.clear()


@dataclasses.dataclass(frozen=True)
class Segment:
    """One prompt of a LONGLIVE_SCHEDULE: start latent frame, text (may be empty), embeddings or None."""

    start: int
    text: str
    embeds: torch.Tensor | None

    def key(self) -> str:
        """Identity of the prompt, to tell whether a continuing run changed it."""
        if self.embeds is None:
            return "text:" + self.text
        data = self.embeds.detach().float().cpu().contiguous().numpy().tobytes()
        return "embeds:" + hashlib.sha256(data).hexdigest()


def hashed_embeds(text: str, text_dim: int, tokens: int = 16) -> torch.Tensor:
    """Deterministic pseudo-embeddings of a text, for tiny random test models only."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return torch.randn(1, tokens, text_dim, generator=torch.Generator().manual_seed(seed))


@dataclasses.dataclass
class NodeSession:
    """A streaming session as the nodes keep it between queue runs."""

    session: StreamSession
    settings: dict
    prompt_key: str | None = None
    undelivered: list = dataclasses.field(default_factory=list)  # blocks of an interrupted run
    decoders: dict = dataclasses.field(default_factory=dict)  # VAE id -> streaming decode cache
    stats: dict = dataclasses.field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.session.cache.nbytes + 2 * self.session.text.k.numel() * self.session.text.k.element_size()

    def describe(self) -> dict:
        s = self.session
        return {"frames": s.frame, "blocks": s.frame // FRAMES_PER_BLOCK, "settings": self.settings,
                "undelivered_frames": sum(b.shape[1] for b in self.undelivered),
                "cache_gib": round(self.nbytes / 2**30, 4), **self.stats}


SESSIONS = SessionRegistry(SESSION_CAP_BYTES)
