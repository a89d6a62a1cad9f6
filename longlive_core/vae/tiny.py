"""Decoding with a tiny Wan video decoder (ComfyUI's TAEHV module, taken as the host gives it: lighttaew2_1 / taew2_1
for Wan 2.1 latents, lighttaew2_2 / taew2_2 for Wan 2.2's), chunk by chunk with its temporal memory kept, so that
chunks give the frames of one whole decode.

Each memory block of the decoder looks at the previous frame's input; a chunk takes that frame from
`memory` (the last frame of the previous chunk) where the whole decode would take it from the same
video. The first chunk drops the decoder's leading frames as a whole decode does (4T - 3 frames for T
latent frames; 4T for every later chunk). Wan 2.2's decoder makes 2x2 pixel patches of each output position
(its patch_size), which the decode unfolds as TAEHV's own decode does.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..timing import GpuTimer, Spans
from .stream import check_shape


class TinyStream:
    """The draft decode of one video: its memory between chunks (see tiny_decode_chunk)."""

    def __init__(self):
        self.memory: dict = {}
        self.shape: tuple | None = None
        self.timing = Spans()  # each decode call's time, as DecodeStream's

    def decode(self, model, z: torch.Tensor, fast: bool = False, frames_per_call: int | None = None,
               each: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor | None:
        """As tiny_decode_chunk; an interrupt leaves the memory as it was (its entries are replaced, not written).
        fast, frames_per_call, each: taken as the VAE streams take them (the tiny decoder has no compiled path and
        decodes z in one call, handed to `each` where given, and then not returned)."""
        self.shape = check_shape(self.shape, z)
        before, timer = dict(self.memory), GpuTimer(z.device)
        try:
            out = tiny_decode_chunk(model, z, self.memory)
            if each is not None:
                each(out)
        except BaseException:
            self.memory = before
            raise
        self.timing.add(timer)
        return None if each is not None else out

    def export_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {str(k): v for k, v in self.memory.items() if isinstance(v, torch.Tensor)}
        return tensors, {"kind": "tiny", "started": bool(self.memory.get("started")), "shape": self.shape}

    def import_state(self, tensors: dict[str, torch.Tensor], fields: dict, device: torch.device) -> None:
        self.memory = {int(k): v.to(device) for k, v in tensors.items()}
        if fields["started"]:
            self.memory["started"] = True
        self.shape = tuple(fields["shape"]) if fields["shape"] else None

    def move_to(self, device: torch.device) -> None:
        """Continues this video's decode on another device: its remembered frames go there."""
        self.memory = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.memory.items()}

    def close(self) -> None:
        """Holds no GPU memory beyond its last frames: nothing to free."""


def _remembers(block) -> bool:
    """TAEHV's MemBlock: a block that also reads the previous frame's input (it has a skip path; nothing else does)."""
    return hasattr(block, "skip")


def _time_stride(block) -> int:
    """TAEHV's TGrow multiplies the frames by its integer stride (a convolution's stride is a tuple)."""
    stride = getattr(block, "stride", 1)
    return stride if isinstance(stride, int) else 1


@torch.inference_mode()
def tiny_decode_chunk(model, z: torch.Tensor, memory: dict) -> torch.Tensor:
    """z: [B, 16 or 48, T, h, w] latents (as ComfyUI's VAE takes them for this decoder) -> pixels
    [B, 3, frames, 8ph, 8pw] in [0, 1] (p: the decoder's patch size, 2 for Wan 2.2). `memory` starts empty and carries
    on between chunks."""
    b, t = z.shape[0], z.shape[2]
    x = model.process_in(z).movedim(2, 1).flatten(0, 1)  # [B * T, C, h, w]
    for i, block in enumerate(model.decoder):
        if _remembers(block):
            frames = x.unflatten(0, (b, t))
            previous = memory.get(i, torch.zeros_like(frames[:, :1]))
            past = torch.cat([previous, frames[:, :-1]], dim=1).flatten(0, 1)
            memory[i] = frames[:, -1:].clone()
            x = block(x, past)
        else:
            x = block(x)
            t *= _time_stride(block)
    if model.patch_size > 1:
        x = F.pixel_shuffle(x, model.patch_size)
    out = x.unflatten(0, (b, t))
    if not memory.get("started"):
        out, memory["started"] = out[:, model.frames_to_trim:], True
    return out.movedim(1, 2).clamp(0, 1)
