"""Chunked causal decoding through ComfyUI's Wan 2.1 decoder module (plain torch, no ComfyUI imports).

Every causal conv keeps the last 2 frames of its input in `cache`, so several latent frames can go
through the decoder in one call and give the frames of a frame-by-frame decode. The very first
frame must go alone: the temporal upsamplers treat it specially (it gives 1 frame, not 4).
"""

from __future__ import annotations

import torch

FRAMES_PER_CALL = 3  # latent frames per decoder call: a LongLive block


def decode_latents(vae_model, z: torch.Tensor, cache: list, frames_per_call: int = FRAMES_PER_CALL) -> torch.Tensor:
    """z: [B, 16, T, h, w] raw latents (VAE dtype/device) -> decoder output [B, 3, frames, H, W] in [-1, 1]."""
    x = vae_model.conv2(z)
    starts = sorted({0, *range(1 if cache[0] is None else 0, x.shape[2], frames_per_call)})
    with torch.backends.cudnn.flags(enabled=True, benchmark=True):
        pieces = [vae_model.decoder(x[:, :, a:b], feat_cache=cache, feat_idx=[0])
                  for a, b in zip(starts, starts[1:] + [x.shape[2]])]
    return torch.cat(pieces, dim=2)
