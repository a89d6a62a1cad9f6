"""Decoding a LongLive 2.0 video as it is made: the Wan 2.2 VAE (48 latent channels, 4 x 16 x 16), one latent frame
at a time with its causal feature cache kept between calls, so decoding a video in pieces gives exactly the frames
of one full decode (the first latent frame of a video 1 pixel frame, every later one 4).

The host's decoder module (ComfyUI's `comfy.ldm.wan.vae2_2.WanVAE`: `conv2`, `decoder`) runs the layers; this
stream owns what carries from one call to the next.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .stream import check_shape, export_cache, import_cache

PATCH = 2  # the VAE's pixel (un)patchify: 12 output channels are 3 colours x 2 x 2


class Wan22DecodeStream:
    """One video's decode through the Wan 2.2 VAE, continued across calls."""

    def __init__(self, slots: int):
        self.cache: list = [None] * slots  # the decoder's causal-convolution feature cache
        self.started = False  # the first latent frame of the video has been decoded ("first chunk")
        self.shape: tuple | None = None

    def decode(self, vae_model, z: torch.Tensor) -> torch.Tensor:
        """z: [B, 48, T, h, w] raw latents (the VAE's dtype and device) -> pixels [B, 3, frames, 16h, 16w] in
        [-1, 1] as the decoder gives them. An interrupt leaves the stream where it was."""
        if z.dim() != 5 or z.shape[1] != 48:
            raise ConfigError(f"the Wan 2.2 VAE decodes latents [B, 48, T, h, w]; got {list(z.shape)}")
        self.shape = check_shape(self.shape, z)
        before, started = list(self.cache), self.started
        x, pieces = vae_model.conv2(z), []  # a 1x1x1 convolution: nothing carries across frames
        try:
            for i in range(x.shape[2]):
                pieces.append(vae_model.decoder(x[:, :, i:i + 1], feat_cache=self.cache, feat_idx=[0],
                                                first_chunk=not self.started))
                self.started = True
        except BaseException:
            self.cache[:], self.started = before, started
            raise
        return _unpatchify(torch.cat(pieces, dim=2))

    def export_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The cache, whether the video's first frame was decoded, and the latents' shape."""
        tensors, entries = export_cache(self.cache)
        return tensors, {"kind": "wan2.2", "entries": entries, "started": self.started, "shape": self.shape}

    def import_state(self, tensors: dict[str, torch.Tensor], fields: dict, device: torch.device) -> None:
        self.cache = import_cache(tensors, fields["entries"], len(self.cache), device)
        self.started = fields["started"]
        self.shape = tuple(fields["shape"]) if fields["shape"] else None

    def close(self) -> None:
        """Nothing held beyond the cache, which goes with the stream."""


def _unpatchify(x: torch.Tensor) -> torch.Tensor:
    """[B, 3 * 4, F, h, w] -> [B, 3, F, 2h, 2w] (channel index c * 4 + r * 2 + q -> pixel (2y + q, 2x + r))."""
    b, _, f, h, w = x.shape
    x = x.view(b, 3, PATCH, PATCH, f, h, w)  # c, r, q
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, 3, f, h * PATCH, w * PATCH)
