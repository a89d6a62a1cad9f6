"""Chunked causal decoding through ComfyUI's Wan 2.1 decoder module (plain torch, no ComfyUI imports).

Every causal conv keeps the last 2 frames of its input in `cache`, so several latent frames can go
through the decoder in one call and give the frames of a frame-by-frame decode. The very first
frame must go alone: the temporal upsamplers treat it specially (it gives 1 frame, not 4).

The compiled decoder on a GPU replays steady chunks (same shapes, cache full) from a CUDA graph that the
cache holds (a DecoderCache): the first chunks run eagerly, the second steady one is captured.
"""

from __future__ import annotations

import logging
import weakref

import torch

log = logging.getLogger("longlive")
FRAMES_PER_CALL = 3  # latent frames per decoder call: a LongLive block
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # decoder module -> compiled decoder
_CHANNELS_LAST: "weakref.WeakSet" = weakref.WeakSet()


def channels_last(decoder) -> None:
    """3-D conv weights in channels-last layout, once per decoder (cuDNN's faster kernels; 202 vs 222 ms)."""
    if decoder not in _CHANNELS_LAST:
        for p in decoder.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        _CHANNELS_LAST.add(decoder)


def compiled_decoder(vae_model):
    """The decoder under torch.compile, made once per VAE: fused norms, SiLU and pads. On the H100 a steady
    chunk takes 131 ms instead of 202 (after a one-time compile of about 100 s)."""
    decoder = vae_model.decoder
    if decoder not in _COMPILED:
        log.info("compiling the Wan VAE decoder (one time, about 100 s on an H100)")
        _COMPILED[decoder] = torch.compile(decoder, dynamic=False)
    return _COMPILED[decoder]


class DecoderCache:
    """The decoder's causal cache, `entries`: one per causal conv (None, 'Rep' or the last frames of its input),
    and the CUDA graph of its steady chunk once there is one (a graph per cache: its buffers are this video's).
    The decoder gets the plain list (compiled code guards on its type)."""

    def __init__(self, convs: int):
        self.entries: list = [None] * convs
        self.graph: ChunkGraph | None = None
        self.seen: tuple | None = None  # the steady shapes met once (captured when met again)
        self.eager = False  # a capture failed: this video decodes without graphs


def _steady_key(x: torch.Tensor, cache: list) -> tuple | None:
    """The shapes a graph replays, or None while the cache is not full of tensors (the first chunks)."""
    if not all(isinstance(c, torch.Tensor) for c in cache):
        return None
    return tuple(x.shape), tuple(tuple(c.shape) for c in cache)


class ChunkGraph:
    """One steady chunk through the decoder as a CUDA graph. Its buffers: the input chunk and the cache it reads;
    the graph ends by writing the next cache over the one it read, so the cache list can hold the graph's own
    buffers and a replay copies nothing in. The output is the graph's: callers get a copy."""

    def __init__(self, decoder, x: torch.Tensor, cache: list, key: tuple):
        self.key, self.x = key, x.clone()
        self.cache = [c.clone() for c in cache]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # a warm-up on copies: the caller's cache stays as it is
            decoder(self.x, feat_cache=list(self.cache), feat_idx=[0])
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        work = list(self.cache)
        with torch.cuda.graph(self.graph):
            self.out = decoder(self.x, feat_cache=work, feat_idx=[0])
            for buffer, new in zip(self.cache, work):
                buffer.copy_(new)

    def __call__(self, x: torch.Tensor, cache: list) -> torch.Tensor:
        self.x.copy_(x)
        for buffer, current in zip(self.cache, cache):
            if buffer is not current:
                buffer.copy_(current)
        self.graph.replay()
        cache[:] = self.cache
        return self.out.clone()


def _decode_chunk(decoder, x: torch.Tensor, cache: DecoderCache | list) -> torch.Tensor:
    """A list: the decoder, eagerly or compiled as given. A DecoderCache: its graph where the chunk is steady."""
    if not isinstance(cache, DecoderCache):
        return decoder(x, feat_cache=cache, feat_idx=[0])
    entries = cache.entries
    key = None if cache.eager else _steady_key(x, entries)
    if key is None:
        return decoder(x, feat_cache=entries, feat_idx=[0])
    if cache.graph is not None and cache.graph.key == key:
        return cache.graph(x, entries)
    if cache.seen != key:
        cache.seen = key
        return decoder(x, feat_cache=entries, feat_idx=[0])
    cache.graph = None  # another shape's graph: freed before the new one is captured
    try:
        cache.graph = ChunkGraph(decoder, x, entries, key)
    except RuntimeError as exc:  # out of memory for the graph's buffers, a kernel that cannot be captured
        log.warning("the VAE decoder's CUDA graph failed (%s); this video decodes without one", exc)
        cache.eager = True
        return decoder(x, feat_cache=entries, feat_idx=[0])
    log.info("captured the VAE decoder's steady chunk %s as a CUDA graph", list(x.shape))
    return cache.graph(x, entries)


def decode_latents(vae_model, z: torch.Tensor, cache: DecoderCache | list, frames_per_call: int = FRAMES_PER_CALL,
                   fast: bool = False, channels_last_3d: bool | None = None) -> torch.Tensor:
    """z: [B, 16, T, h, w] raw latents (VAE dtype/device) -> decoder output [B, 3, frames, H, W] in [-1, 1].
    fast: the compiled decoder, and on a GPU with a DecoderCache, steady chunks from a CUDA graph.
    channels_last_3d: None = on CUDA or when compiled (the benchmark turns it off to measure without)."""
    x = vae_model.conv2(z)
    if channels_last_3d if channels_last_3d is not None else (x.is_cuda or fast):
        channels_last(vae_model.decoder)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    decoder = compiled_decoder(vae_model) if fast else vae_model.decoder
    entries = cache.entries if isinstance(cache, DecoderCache) else cache
    graphs = fast and x.is_cuda and isinstance(cache, DecoderCache)
    starts = sorted({0, *range(1 if entries[0] is None else 0, x.shape[2], frames_per_call)})
    with torch.backends.cudnn.flags(enabled=True, benchmark=True):
        pieces = [_decode_chunk(decoder, x[:, :, a:b], cache if graphs else entries)
                  for a, b in zip(starts, starts[1:] + [x.shape[2]])]
    return torch.cat(pieces, dim=2)
