"""Decoding a LongLive 2.0 video as it is made: the Wan 2.2 VAE (48 latent channels, 4 x 16 x 16) with its causal
feature cache kept between calls, so decoding a video in pieces gives the frames of one full decode (the first
latent frame of a video 1 pixel frame, every later one 4).

The host's decoder module (ComfyUI's `comfy.ldm.wan.vae2_2.WanVAE`: `conv2`, `decoder`) runs the layers; the stream
(stream.DecodeStream's, with the Wan 2.2 decoder's steady path) owns what carries from one call to the next.
"""

from __future__ import annotations

from typing import Callable

import torch

from .stream import DecodeStream, steady_decode22

PATCH = 2  # the VAE's pixel (un)patchify: 12 output channels are 3 colours x 2 x 2


class Wan22DecodeStream(DecodeStream):
    """One video's decode through the Wan 2.2 VAE, continued across calls: its first latent frame alone, marked as
    the video's first chunk, then one latent frame a call (at 1280x704 one frame's activations are already large:
    four pixel frames at half size and 256 channels); compiled (`fast`) steady chunks as Wan 2.1's."""

    name, kind, channels = "Wan 2.2 VAE", "wan2.2", 48
    frames_per_call = 1
    # cuDNN's heuristic plans: at 1280x704 timed ones made no chunk faster (eager 168 ms, compiled 109 either way)
    # and cost a fresh process's first video 12 s and 117 GiB under cudaMallocAsync (run 122)
    timed_plans = False
    steady = staticmethod(steady_decode22)

    def decode(self, vae_model, z: torch.Tensor, fast: bool = False, frames_per_call: int | None = None,
               channels_last_3d: bool | None = None, graphs: bool = True,
               each: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor | None:
        """z: [B, 48, T, h, w] raw latents (the VAE's dtype and device) -> pixels [B, 3, frames, 16h, 16w] in
        [-1, 1] as the decoder gives them, or each call's pixels to `each` (see DecodeStream.decode)."""
        piece = None if each is None else lambda out: each(_unpatchify(out))
        out = super().decode(vae_model, z, fast, frames_per_call, channels_last_3d, graphs, piece)
        return None if out is None else _unpatchify(out)

    def _plain(self, decoder, x: torch.Tensor) -> torch.Tensor:
        return decoder(x, feat_cache=self.cache, feat_idx=[0], first_chunk=self.cache[0] is None)


def _unpatchify(x: torch.Tensor) -> torch.Tensor:
    """[B, 3 * 4, F, h, w] -> [B, 3, F, 2h, 2w] (channel index c * 4 + r * 2 + q -> pixel (2y + q, 2x + r))."""
    b, _, f, h, w = x.shape
    x = x.unflatten(1, (3, PATCH, PATCH))  # c, r, q (any memory format)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, 3, f, h * PATCH, w * PATCH)
