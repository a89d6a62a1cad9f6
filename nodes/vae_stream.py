"""Chunked causal decoding through ComfyUI's Wan 2.1 decoder module (plain torch, no ComfyUI imports).

Every causal conv keeps the last 2 frames of its input in `cache`, so several latent frames can go
through the decoder in one call and give the frames of a frame-by-frame decode. The very first
frame must go alone: the temporal upsamplers treat it specially (it gives 1 frame, not 4).

Compiled (`fast`), steady chunks go through `steady_decode`: the decoder's own modules in its order, with the
steady branch of its causal convs, residual blocks and temporal upsamplers written out. The upsamplers' forward
compares a cache tensor with the string 'Rep', which breaks torch.compile's graph inside the decoder's loop (dynamo
then ran the decoder eagerly between separately compiled blocks); the convs' forward pads a copy of its input.
"""

from __future__ import annotations

import logging
import weakref

import torch
import torch.nn.functional as F

log = logging.getLogger("longlive")
FRAMES_PER_CALL = 3  # latent frames per decoder call: a LongLive block
_COMPILED: "weakref.WeakSet" = weakref.WeakSet()  # decoders whose steady chunks have been compiled
_CHANNELS_LAST: "weakref.WeakSet" = weakref.WeakSet()


def channels_last(decoder) -> None:
    """3-D conv weights in channels-last layout, once per decoder (cuDNN's faster kernels; 202 vs 222 ms)."""
    if decoder not in _CHANNELS_LAST:
        for p in decoder.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        _CHANNELS_LAST.add(decoder)


def _causal(conv, x: torch.Tensor, cache: list, idx: list) -> torch.Tensor:
    """ComfyUI's CausalConv3d over x [B, C, T, H, W] after the last 2 frames of its previous input
    (cache[idx[0]], which x's own last 2 frames then replace). The cached frames are its causal time padding;
    the spatial zero padding goes inside the convolution (the module pads a copy of its input)."""
    i = idx[0]
    last = x[:, :, -2:].clone()
    if last.shape[2] < 2:  # one frame a call: keep the frame before it too
        last = torch.cat([cache[i][:, :, -1:], last], dim=2)
    if conv.comfy_cast_weights or conv.weight_function or conv.bias_function:  # ComfyUI casts them (low VRAM)
        x = conv(x, cache[i])
    else:
        pad_w, _, pad_h, _, _, _ = conv._padding
        x = F.conv3d(torch.cat([cache[i], x], dim=2), conv.weight, conv.bias, conv.stride, (0, pad_h, pad_w),
                     conv.dilation, conv.groups)
    cache[i] = last
    idx[0] += 1
    return x


def _residual(block, x: torch.Tensor, cache: list, idx: list) -> torch.Tensor:
    """A residual block: norm, SiLU, causal conv, norm, SiLU, dropout, causal conv, plus the shortcut."""
    norm1, silu1, conv1, norm2, silu2, dropout, conv2 = block.residual
    h = _causal(conv1, silu1(norm1(x)), cache, idx)
    h = _causal(conv2, dropout(silu2(norm2(h))), cache, idx)
    return h + block.shortcut(x)


def _upsample3d(layer, x: torch.Tensor, cache: list, idx: list) -> torch.Tensor:
    """A temporal + spatial upsampler in steady state: its time conv doubles the channels into two frames
    each (interleaved in time), then its own forward without a cache does the spatial half."""
    b, c, t, h, w = x.shape
    x = _causal(layer.time_conv, x, cache, idx).reshape(b, 2, c, t, h, w)
    x = torch.stack((x[:, 0], x[:, 1]), 3).reshape(b, c, t * 2, h, w)
    return layer(x)


def _stage(layer, x: torch.Tensor, cache: list, idx: list) -> torch.Tensor:
    if hasattr(layer, "residual"):
        return _residual(layer, x, cache, idx)
    if getattr(layer, "mode", None) == "upsample3d":
        return _upsample3d(layer, x, cache, idx)
    return layer(x)  # the middle attention, the last (spatial only) upsampler: no cache


def steady_decode(decoder, x: torch.Tensor, cache: list) -> torch.Tensor:
    """One chunk through ComfyUI's Wan 2.1 Decoder3d once every cache entry in use holds frames (after the
    first two calls): the decoder's modules in its order, computing what decoder(x, feat_cache=cache) does."""
    idx = [0]
    x = _causal(decoder.conv1, x, cache, idx)
    for layer in [*decoder.middle, *decoder.upsamples]:
        x = _stage(layer, x, cache, idx)
    norm, silu, conv = decoder.head
    return _causal(conv, silu(norm(x)), cache, idx)


def is_steady(cache: list) -> bool:
    """Whether the decoder has run its first two calls: cache[0] holds frames and no upsampler is still
    marked 'Rep' (the mark of its first frame)."""
    return cache[0] is not None and not any(isinstance(entry, str) for entry in cache)


_steady_compiled = torch.compile(steady_decode, dynamic=False)  # compiles at its first call, once per decoder


def compiled_steady_decode(decoder, x: torch.Tensor, cache: list) -> torch.Tensor:
    """steady_decode under torch.compile, one graph a chunk: the norms, SiLU, residuals and cache frames fused
    around cuDNN's convolutions (on the H100 106 ms a chunk against 202 eager, run 51; compiling the decoder
    module itself, which dynamo splits at every upsampler, gave 130)."""
    if decoder not in _COMPILED:
        log.info("compiling the Wan VAE decoder's steady chunks (one time, 20-30 s on an H100)")
        _COMPILED.add(decoder)
    return _steady_compiled(decoder, x, cache)


def decode_latents(vae_model, z: torch.Tensor, cache: list, frames_per_call: int = FRAMES_PER_CALL,
                   fast: bool = False, channels_last_3d: bool | None = None) -> torch.Tensor:
    """z: [B, 16, T, h, w] raw latents (VAE dtype/device) -> decoder output [B, 3, frames, H, W] in [-1, 1].
    fast: steady chunks through the compiled decoder (the first two calls stay eager).
    channels_last_3d: None = on CUDA or when compiled (the benchmark turns it off to measure without)."""
    x = vae_model.conv2(z)
    if channels_last_3d if channels_last_3d is not None else (x.is_cuda or fast):
        channels_last(vae_model.decoder)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    starts = sorted({0, *range(1 if cache[0] is None else 0, x.shape[2], frames_per_call)})
    pieces = []
    with torch.backends.cudnn.flags(enabled=True, benchmark=True):
        for a, b in zip(starts, starts[1:] + [x.shape[2]]):
            if fast and is_steady(cache):
                pieces.append(compiled_steady_decode(vae_model.decoder, x[:, :, a:b], cache))
            else:
                pieces.append(vae_model.decoder(x[:, :, a:b], feat_cache=cache, feat_idx=[0]))
    return torch.cat(pieces, dim=2)
