"""Chunked causal decoding through ComfyUI's Wan decoder modules (plain torch: the module comes from the host, and
its ops' weight-casting attributes are read where they exist): Wan 2.1's here, Wan 2.2's (LongLive 2.0) in
stream22.py on the same stream.

A DecodeStream is the decode of one video: every causal conv keeps the last 2 frames of its input in the stream's
cache, so several latent frames can go through the decoder in one call and give the frames of a frame-by-frame
decode. The very first frame must go alone: the temporal upsamplers treat it specially (it gives 1 frame, not 4).

Compiled (`fast`), steady chunks go through `steady_decode`: the decoder's own modules in its order, with the
steady branch of its causal convs, residual blocks, upsamplers and attention written out. The upsamplers' forward
compares a cache tensor with the string 'Rep', which breaks torch.compile's graph inside the decoder's loop (dynamo
then ran the decoder eagerly between separately compiled blocks); the convs' forward pads a copy of its input. On a
GPU the stream captures its compiled chunk as a CUDA graph (SteadyGraph) that writes the cache in place.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..fast.compile import compiled
from ..fast.graphs import CaptureError, async_allocator, capture
from ..kernels import ops
from ..timing import GpuTimer, Spans
from .head import NARROW, causal_conv3d_narrow

log = logging.getLogger(__name__)
FRAMES_PER_CALL = 3  # latent frames per decoder call: a LongLive block
FIND_FLOOR = 2 * 2**30  # bytes: cuDNN's benchmark finds may use at least this much above what is allocated
FIND_PER_PIXEL_BYTE = 512  # and this much a byte of a chunk's pixels (compiled, it held about 400 at 480x832)
_CHANNELS_LAST: "weakref.WeakSet" = weakref.WeakSet()
_WARMED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # decoder -> (latents' shape, fast) readied


def check_shape(shape: tuple | None, z: torch.Tensor) -> tuple:
    """A stream decodes latents [B, C, T, h, w] of one batch x height x width: its cache holds their frames."""
    now = (z.shape[0], *z.shape[3:])
    if shape is not None and shape != now:
        raise ConfigError(f"this session has been decoding latents of batch x height x width {shape}, these are "
                          f"{now}; decode them without a session id, or reset the session")
    return now


def channels_last(decoder) -> None:
    """3-D conv weights in channels-last layout, once per decoder (cuDNN's faster kernels; 202 vs 222 ms)."""
    if decoder not in _CHANNELS_LAST:
        for p in decoder.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        _CHANNELS_LAST.add(decoder)


@contextlib.contextmanager
def bounded_finds(x: torch.Tensor, pixel_bytes: int):
    """cuDNN's benchmark mode times, for each convolution it has not seen, every plan whose workspace fits what the
    allocator says it could give. PyTorch's cudaMallocAsync allocator (ComfyUI's default) finds that answer by
    mapping all free memory into its pool, and the pool is emptied after each find: a fresh server's first decode
    took 25 s and 139 GiB on an H200 (run 104), against 2 s without benchmark mode and 4.6 s under the native
    allocator, whose fastest plans needed under 1 GiB of workspace. The process's memory fraction bounds that
    answer, and so the finds: what is allocated plus the larger of FIND_FLOOR and FIND_PER_PIXEL_BYTE per byte of
    a chunk's pixels (pixel_bytes). The tighter the bound, the fewer plans are timed: at 480x832 (the compiled
    video peaks at 10.8 GiB) 13.7 GiB made the first compiled video 7.6 s and 17.1 GiB 11.7 s (8.4 s without
    finds), with steady chunks as fast (run 107). Where the allocator already holds more than that (its count
    includes a graph's allocations, memory_allocated does not), the bound is dropped: the allocator's probe would
    never end. The fraction is put back after, at most 1: with no limit set, cudaMallocAsync reports its unbounded
    limit as a fraction far above 1, which cannot be set."""
    device = x.device
    before = min(1.0, torch.cuda.get_per_process_memory_fraction(device))
    total = torch.cuda.get_device_properties(device).total_memory
    bound = (torch.cuda.memory_allocated(device) + max(FIND_FLOOR, FIND_PER_PIXEL_BYTE * pixel_bytes)) / total
    if bound >= before:
        yield
        return
    torch.cuda.set_per_process_memory_fraction(bound, device)
    try:
        try:
            torch.empty(1, dtype=torch.uint8, device=device)
        except torch.OutOfMemoryError:
            torch.cuda.set_per_process_memory_fraction(before, device)
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(before, device)


def _own(x: torch.Tensor, a: int, b: int, layout: torch.memory_format) -> torch.Tensor:
    """Frames a:b of x [B, C, T, h, w] as a chunk of their own (x itself where that is all of it): its strides, and
    the cache entries cut from it, are then the same whatever length of video the call decodes, so the compiled
    steady chunk is compiled once, not again for each length (dynamo guards strides, a batch of 1's too)."""
    return x if b - a == x.shape[2] else x[:, :, a:b].clone(memory_format=layout)


def _plans(heuristic: bool, timed: bool = True):
    """cuDNN's convolution plans: found by timing (benchmark mode), or, for a compiled stream's two eager chunks,
    its heuristics' (finding theirs took 5.5 s of a fresh server's first video, run 107). Those are marked
    deterministic: cuDNN's plan cache keys on that flag and not on benchmark mode, so a shape the eager chunks
    share with the steady ones (the 1x1 shortcuts) or with a later eager decode still gets its timed plan there.
    `timed` off: the heuristics' plans everywhere, unmarked (a decoder that no find makes faster)."""
    if not timed:
        return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False)
    return torch.backends.cudnn.flags(enabled=True, benchmark=not heuristic, deterministic=heuristic)


def _cast(module) -> bool:
    """Whether ComfyUI's ops cast this module's weights when it runs (low VRAM): then only its forward has them."""
    return bool(module.comfy_cast_weights or module.weight_function or module.bias_function)


def _causal(conv, x: torch.Tensor, cache: list, idx: list, head: bool = False) -> torch.Tensor:
    """ComfyUI's CausalConv3d over x [B, C, T, H, W] after the last 2 frames of its previous input
    (cache[idx[0]], which x's own last 2 frames then overwrite in place). The cached frames are its causal time
    padding; the spatial zero padding goes inside the convolution (the module pads a copy of its input). The RGB
    head (`head`: 3 output channels) runs in our Triton kernel where Triton runs: cuDNN is slow at it."""
    i = idx[0]
    last = x[:, :, -2:] if x.shape[2] >= 2 else torch.cat([cache[i][:, :, -1:], x], dim=2)  # one frame: keep one
    if _cast(conv):
        x = conv(x, cache[i])
    elif head and conv.out_channels <= NARROW and conv.kernel_size == (3, 3, 3) and cache[i].shape[2] == 2 \
            and conv.bias is not None and ops.available(x.device):
        x = causal_conv3d_narrow(cache[i], x, conv.weight, conv.bias)
    else:
        pad_w, _, pad_h, _, _, _ = conv._padding
        x = F.conv3d(torch.cat([cache[i], x], dim=2), conv.weight, conv.bias, conv.stride, (0, pad_h, pad_w),
                     conv.dilation, conv.groups)
    if cache[i].shape == last.shape:
        cache[i].copy_(last)
    else:
        cache[i] = last.clone()
    idx[0] += 1
    return x


def _residual(block, x: torch.Tensor, cache: list, idx: list) -> torch.Tensor:
    """A residual block: norm, SiLU, causal conv, norm, SiLU, dropout, causal conv, plus the shortcut."""
    norm1, silu1, conv1, norm2, silu2, dropout, conv2 = block.residual
    h = _causal(conv1, silu1(norm1(x)), cache, idx)
    h = _causal(conv2, dropout(silu2(norm2(h))), cache, idx)
    return h + block.shortcut(x)


# Nearest 2x upsampling then a 3x3 conv, as four 2x2 convs on the small image (sub-pixel): output row 2i reads
# input rows i - 1 (kernel row 0) and i (rows 1 and 2), row 2i + 1 reads i (rows 0 and 1) and i + 1 (row 2); the
# same for columns. 4/9 of the arithmetic and no upsampled copy; the kernel rows summed change float32 rounding.
_PHASE_TAPS = ((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1))  # [phase][2x2 tap][3x3 tap]


def _subpixel_weight(w: torch.Tensor) -> torch.Tensor:
    """[O, C, 3, 3] -> [4 O, C, 2, 2], the outputs in (row phase, column phase, channel) order."""
    m = torch.tensor(_PHASE_TAPS, dtype=torch.float32, device=w.device)
    w4 = torch.einsum("pak,qbl,oikl->pqoiab", m, m, w.float())
    return w4.flatten(0, 2).to(w.dtype)


def _upsample2d(resample, x: torch.Tensor) -> torch.Tensor:
    """ComfyUI's spatial upsampler (nearest 2x, 3x3 conv) over x [B, C, T, H, W] -> [B, C / 2, T, 2H, 2W]."""
    b, _, t, h, w = x.shape
    x = x.transpose(1, 2).flatten(0, 1)  # [B T, C, H, W]: a view of channels-last 3-D frames
    conv = resample[1]
    if _cast(conv):
        return resample(x).unflatten(0, (b, t)).transpose(1, 2)
    o = conv.out_channels
    y = F.conv2d(x, _subpixel_weight(conv.weight), conv.bias.repeat(4), padding=1)  # [B T, 4 O, H + 1, W + 1]
    y = y.unflatten(1, (2, 2, o)).permute(0, 1, 2, 4, 5, 3)  # [B T, row phase, col phase, H + 1, W + 1, O]
    rows = [torch.stack([y[:, p, q, p:p + h, q:q + w] for q in (0, 1)], 3) for p in (0, 1)]  # [B T, H, W, 2, O]
    y = torch.stack(rows, 2).view(b * t, 2 * h, 2 * w, o)  # [B T, H, 2, W, 2, O] -> pixels in order
    return y.permute(0, 3, 1, 2).unflatten(0, (b, t)).transpose(1, 2)  # channels-last 3-D [B, O, T, 2H, 2W]


def _upsample3d(layer, x: torch.Tensor, cache: list, idx: list) -> torch.Tensor:
    """A temporal + spatial upsampler in steady state: its time conv doubles the channels into two frames
    each (interleaved in time), then the spatial half."""
    b, c, t, h, w = x.shape
    x = _causal(layer.time_conv, x, cache, idx).reshape(b, 2, c, t, h, w)
    x = torch.stack((x[:, 0], x[:, 1]), 3).reshape(b, c, t * 2, h, w)
    return _upsample2d(layer.resample, x)


def _attention(block, x: torch.Tensor) -> torch.Tensor:
    """ComfyUI's single-head AttentionBlock within each frame of x [B, C, T, H, W], on channels-last tokens: its 1x1
    convs as linears (cuBLAS; compiled, inductor gave them to slow fused kernels)."""
    b, c, t, h, w = x.shape
    if _cast(block.to_qkv) or _cast(block.proj):
        return block(x)
    tokens = x.permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, c)  # [B T, 1 head, H W, C]
    normed = F.normalize(tokens, dim=-1) * block.norm.scale * block.norm.gamma.flatten().to(x)
    q, k, v = F.linear(normed, block.to_qkv.weight.flatten(1), block.to_qkv.bias).chunk(3, dim=-1)
    out = F.linear(F.scaled_dot_product_attention(q, k, v), block.proj.weight.flatten(1), block.proj.bias)
    return out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3) + x


def _stage(layer, x: torch.Tensor, cache: list, idx: list) -> torch.Tensor:
    if hasattr(layer, "residual"):
        return _residual(layer, x, cache, idx)
    mode = getattr(layer, "mode", None)
    if mode == "upsample3d":
        return _upsample3d(layer, x, cache, idx)
    if mode == "upsample2d":
        return _upsample2d(layer.resample, x)
    return _attention(layer, x)  # the middle block's attention


def steady_decode(decoder, x: torch.Tensor, cache: list) -> torch.Tensor:
    """One chunk through ComfyUI's Wan 2.1 Decoder3d once every cache entry in use holds frames (after the
    first two calls): the decoder's modules in its order, computing what decoder(x, feat_cache=cache) does."""
    idx = [0]
    x = _causal(decoder.conv1, x, cache, idx)
    for layer in [*decoder.middle, *decoder.upsamples]:
        x = _stage(layer, x, cache, idx)
    norm, silu, conv = decoder.head
    return _causal(conv, silu(norm(x)), cache, idx, head=True)


def steady_decode22(decoder, x: torch.Tensor, cache: list) -> torch.Tensor:
    """steady_decode for ComfyUI's Wan 2.2 Decoder3d (LongLive 2.0): the same stages, each up block adding its
    upsampled input (DupUp3D, no weights) to its main path, the head giving 12 channels (3 colours x 2 x 2 pixels)."""
    idx = [0]
    x = _causal(decoder.conv1, x, cache, idx)
    for layer in decoder.middle:
        x = _stage(layer, x, cache, idx)
    for up in decoder.upsamples:
        main = x
        for layer in up.upsamples:
            main = _stage(layer, main, cache, idx)
        x = main if up.avg_shortcut is None else main + up.avg_shortcut(x)
    norm, silu, conv = decoder.head
    return _causal(conv, silu(norm(x)), cache, idx, head=True)


def is_steady(cache: list) -> bool:
    """Whether the decoder has run its first two calls: cache[0] holds frames and no upsampler is still
    marked 'Rep' (the mark of its first frame)."""
    return cache[0] is not None and not any(isinstance(entry, str) for entry in cache)


@functools.cache
def _compiled(steady):
    log.info("compiling %s for the Wan VAE decoder's steady chunks (once per process and size)", steady.__name__)
    return compiled(steady, dynamic=False)


def compiled_steady_decode(decoder, x: torch.Tensor, cache: list, steady=steady_decode) -> torch.Tensor:
    """A steady decode (steady_decode, steady_decode22) under torch.compile, one graph a chunk: the norms, SiLU,
    residuals and cache frames fused around cuDNN's convolutions (Wan 2.1 on the H100: 99 ms a chunk against 202
    eager, run 55; compiling the decoder module itself, which dynamo splits at every upsampler, gave 130)."""
    return _compiled(steady)(decoder, x, cache)


def _addresses(decoder, x: torch.Tensor, cache: list) -> tuple:
    """What a captured chunk depends on: the chunk's shape and where the weights and the cache live."""
    return (tuple(x.shape), x.dtype, tuple(p.data_ptr() for p in decoder.parameters()),
            tuple(entry.data_ptr() for entry in cache if entry is not None))


class SteadyGraph:
    """The compiled steady chunk of one decoder and one cache, captured as a CUDA graph: it reads the chunk from a
    fixed buffer and writes the cache in place, so it replays while the weights and the cache stay where they are."""

    def __init__(self, decoder, x: torch.Tensor, cache: list, steady=steady_decode):
        self.key = _addresses(decoder, x, cache)
        self.x = x.clone()
        self.graph, self.out = capture(lambda: compiled_steady_decode(decoder, self.x, cache, steady), x.device,
                                       writes=[entry for entry in cache if isinstance(entry, torch.Tensor)])
        log.info("captured the Wan VAE decoder's steady chunk %s as a CUDA graph", tuple(x.shape))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.graph.replay()
        return self.out.clone()


class DecodeStream:
    """The decode of one video through a Wan 2.1 decoder: its causal cache (`slots`: the decoder's causal convs, which
    the host counts) and, compiled on a GPU, its steady chunk's CUDA graph (captured at the second steady chunk:
    the first compiles and autotunes cuDNN; captured anew where the weights or the cache moved). A capture that
    fails leaves the chunks to the compiled decoder (the capture ran nothing, the cache is as it was), logged, and
    is not tried again for that placement. stream22.Wan22DecodeStream is the same for the Wan 2.2 decoder."""

    name, kind, channels = "Wan 2.1 VAE", "wan", 16
    frames_per_call = FRAMES_PER_CALL
    steady = staticmethod(steady_decode)
    timed_plans = True  # cuDNN's finds for the steady chunks and eager decodes (_plans): steady chunks 23% faster
    find_pixels_per_latent = 3 * 4 * 8 * 8  # a latent frame's pixel values: 4 frames, 8x8 pixels a latent, RGB

    def __init__(self, slots: int):
        self.cache: list = [None] * slots
        self.shape: tuple | None = None  # batch, height, width of the latents it decodes
        self._graph: SteadyGraph | None = None
        self._seen: tuple | None = None  # the placement of the last steady chunk, captured when it comes again
        self._failed: tuple | None = None
        self.timing = Spans()  # each decode call's time (GPU time on CUDA), read by the video's stats

    def decode(self, vae_model, z: torch.Tensor, fast: bool = False, frames_per_call: int | None = None,
               channels_last_3d: bool | None = None, graphs: bool = True,
               each: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor | None:
        """z: [B, 16, T, h, w] raw latents (VAE dtype/device) -> decoder output [B, 3, frames, H, W] in [-1, 1].
        fast: steady chunks through the compiled decoder (the first two calls stay eager, with cuDNN's heuristic
        plans: _plans), replayed as a CUDA graph where `graphs`; frames_per_call: latent frames a decoder call
        (None: the stream's own). channels_last_3d: None = on CUDA or when compiled (the benchmark turns it off).
        each: called with each call's output as soon as that call is launched, which is then not kept (nothing is
        returned): a block's pieces go on to the viewers from there. A decode that fails, in a call or in `each`,
        leaves the stream where it was (an interrupt) or starts it over (after a steady chunk): never part way."""
        if z.dim() != 5 or z.shape[1] != self.channels:
            raise ConfigError(f"the {self.name} decodes latents [B, {self.channels}, T, h, w]; got {list(z.shape)}")
        self.shape = check_shape(self.shape, z)
        frames_per_call = frames_per_call or self.frames_per_call
        timer = GpuTimer(z.device)
        x, layout = vae_model.conv2(z), torch.contiguous_format
        if channels_last_3d if channels_last_3d is not None else (x.is_cuda or fast):
            channels_last(vae_model.decoder)
            x, layout = x.contiguous(memory_format=torch.channels_last_3d), torch.channels_last_3d
        starts = sorted({0, *range(1 if self.cache[0] is None else 0, x.shape[2], frames_per_call)})
        before, pieces, in_place = list(self.cache), [], False
        try:
            with self._finds(x, frames_per_call):
                for a, b in zip(starts, starts[1:] + [x.shape[2]]):
                    steady = fast and is_steady(self.cache)
                    in_place = in_place or steady
                    with _plans(heuristic=fast and not steady, timed=self.timed_plans):
                        piece = self._chunk(vae_model.decoder, _own(x, a, b, layout), steady, graphs)
                    if each is None:
                        pieces.append(piece)
                    else:
                        each(piece)
        except BaseException:
            if in_place:  # a steady chunk wrote the cache in place: it cannot go back, so the decode starts over
                self.cache[:] = [None] * len(self.cache)
                log.warning("the Wan VAE decoder failed after a steady chunk moved its cache on: this video's decode "
                            "starts over at its next frames (as a video's first frame)")
            else:
                self.cache[:] = before  # an interrupt: the next decode starts where this one did
            raise
        self.timing.add(timer)
        if each is not None:
            return None
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)  # a steady chunk: no second copy

    def _finds(self, x: torch.Tensor, frames_per_call: int):
        """cuDNN's finds bounded (bounded_finds) under cudaMallocAsync, unless every chunk of this call replays the
        steady chunk's graph (which finds nothing). The bound is taken on the stream's own chunk (a block) where a
        call cuts finer (a live block's latent frames): bounded on one frame's pixels, the compiled chunk itself did
        not fit (out of memory in a live session's first decode, run 128). The native allocator is left alone: its
        fraction bounds reserved memory, cached blocks included, and its finds were quick. A stream without timed
        plans finds nothing."""
        replays = self.has_graph and self.cache[0] is not None and x.shape[2] % self._graph.x.shape[2] == 0
        if not x.is_cuda or replays or not self.timed_plans or not async_allocator():
            return contextlib.nullcontext()
        frames = min(max(frames_per_call, self.frames_per_call), x.shape[2])
        pixel_bytes = x.shape[0] * frames * x.shape[3] * x.shape[4] * self.find_pixels_per_latent * x.element_size()
        return bounded_finds(x, pixel_bytes)

    def _chunk(self, decoder, x: torch.Tensor, steady: bool, graphs: bool) -> torch.Tensor:
        """The host's decoder module replaces cache entries (and checks the host's interrupt in its ops), so the
        entries taken before a decode restore it; the steady path (`steady`: compiled and past the first two calls)
        writes them in place, compiled or replayed, where no interrupt is checked."""
        if steady:
            return self._steady(decoder, x, graphs and x.is_cuda)
        return self._plain(decoder, x)

    def _plain(self, decoder, x: torch.Tensor) -> torch.Tensor:
        """The host's decoder module on a chunk."""
        return decoder(x, feat_cache=self.cache, feat_idx=[0])

    def _steady(self, decoder, x: torch.Tensor, graphs: bool) -> torch.Tensor:
        if not graphs:
            return compiled_steady_decode(decoder, x, self.cache, self.steady)
        key = _addresses(decoder, x, self.cache)
        if self._graph is not None and self._graph.key == key:
            return self._graph(x)
        self._graph = None  # a graph of another placement: its memory goes before a new capture
        if self._seen == key and self._failed != key:
            try:  # a capture that fails, or finds no memory for its buffers, leaves the cache as it was
                graph = SteadyGraph(decoder, x, self.cache, self.steady)
            except (CaptureError, torch.OutOfMemoryError) as exc:
                log.warning("the Wan VAE decoder's steady chunk could not be captured as a CUDA graph; decoding it "
                            "compiled without one: %s", exc)
                self._failed = key
            else:
                self._graph = graph
                return graph(x)
        self._seen = key
        return compiled_steady_decode(decoder, x, self.cache, self.steady)

    def is_warm(self, vae_model, z_shape: tuple, fast: bool = True, frames_per_call: int | None = None) -> bool:
        """Whether this process has readied this decoder (warm_up) for blocks of latents `z_shape`."""
        key = (tuple(z_shape), fast, frames_per_call or self.frames_per_call)
        return key in _WARMED.get(vae_model.decoder, ())

    def warm_up(self, vae_model, z: torch.Tensor, fast: bool = True, frames_per_call: int | None = None) -> None:
        """Readies the decoder for a video decoded in blocks shaped as `z` [B, C, T, h, w] (raw latents, the VAE's
        dtype and device), `frames_per_call` latent frames a call, before the video's first block: compiles the
        steady chunk and runs cuDNN's finds for it (fast), or runs the finds of an eager video's chunks (timed plans).
        A scratch stream decodes `z` twice, as a video's first two blocks go, without a CUDA graph, so this stream's
        chunks find their code compiled and their plans found (the same shapes, strides and grad mode: call it under
        the decodes' mode). This stream is left as it was."""
        frames_per_call = frames_per_call or self.frames_per_call
        scratch = type(self)(len(self.cache))
        for _ in range(2):
            scratch.decode(vae_model, z, fast=fast, frames_per_call=frames_per_call, graphs=False)
        _WARMED.setdefault(vae_model.decoder, set()).add((tuple(z.shape), fast, frames_per_call))
        log.info("readied the %s decoder (%s) for latents %s, %d a call, before the video's first block", self.name,
                 "compiled" if fast else "cuDNN's finds", tuple(z.shape), frames_per_call)

    def export_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The cache (tensors, empty slots and the decoder's 'Rep' marks, and each tensor's strides) and the latents'
        shape."""
        tensors, entries = export_cache(self.cache)
        strides = {i: list(t.stride()) for i, t in tensors.items()}
        return tensors, {"kind": self.kind, "entries": entries, "strides": strides, "shape": self.shape}

    def import_state(self, tensors: dict[str, torch.Tensor], fields: dict, device: torch.device) -> None:
        """The inverse of export_state. The tensors come back with the strides they had (saves before those were
        kept: contiguous), so the compiled steady chunk's code fits the cache as it fitted the saved stream's."""
        self.cache = import_cache(tensors, fields["entries"], len(self.cache), device, fields.get("strides", {}))
        self.shape = tuple(fields["shape"]) if fields["shape"] else None

    @property
    def has_graph(self) -> bool:
        return self._graph is not None

    def move_to(self, device: torch.device) -> None:
        """Continues this video's decode on another device: the cache goes there (a graph is captured anew)."""
        held = [entry for entry in self.cache if isinstance(entry, torch.Tensor)]
        if held and held[0].device != device:
            self.cache = [entry.to(device) if isinstance(entry, torch.Tensor) else entry for entry in self.cache]
            self.close()

    def close(self) -> None:
        """Frees the steady chunk's graph (about 2.7 GB at 480x832); the stream stays usable (its next steady chunks
        capture anew)."""
        self._graph = None
        self._seen = None


def export_cache(cache: list) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A decoder's causal cache as tensors by index and the kind of each entry ('tensor', 'none', or a mark the
    decoder left, such as 'Rep')."""
    entries = ["tensor" if isinstance(e, torch.Tensor) else "none" if e is None else str(e) for e in cache]
    return {str(i): e for i, e in enumerate(cache) if isinstance(e, torch.Tensor)}, entries


def import_cache(tensors: dict[str, torch.Tensor], entries: list[str], slots: int, device: torch.device,
                 strides: dict[str, list[int]] | None = None) -> list:
    """The inverse of export_cache, for a decoder with `slots` entries; `strides`: a tensor's by index, where known."""
    if len(entries) != slots:
        raise ValueError(f"{len(entries)} cache entries, the decoder has {slots}")
    return [_laid_out(tensors[str(i)], (strides or {}).get(str(i)), device) if kind == "tensor"
            else None if kind == "none" else kind for i, kind in enumerate(entries)]


def _laid_out(t: torch.Tensor, strides: list[int] | None, device: torch.device) -> torch.Tensor:
    """t on `device`, its elements laid out with these strides (a dense layout of its shape), or contiguous."""
    if strides is None:
        return t.to(device)
    if not _dense(t.shape, strides):
        raise ValueError(f"strides {strides} do not lay out a tensor of shape {list(t.shape)} densely")
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=device).copy_(t)


def _dense(shape: torch.Size, strides: list[int]) -> bool:
    """Whether the strides put each element of a tensor of this shape at its own place, with no gaps."""
    if len(strides) != len(shape):
        return False
    step = 1
    for size, stride in sorted(zip(shape, strides), key=lambda d: d[1]):
        if size != 1 and stride != step:
            return False
        step *= size
    return True
