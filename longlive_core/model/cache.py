"""Fixed-size caches: self-attention K/V (sink + rolling window as a ring) and text K/V.

Keys are stored after RoPE, so attention does not depend on where a frame sits in the
buffer: a ring with stable addresses is equivalent to upstream's clone-roll-insert, with
no copies. Frame f lives in slot f while f < sink, else in sink + (f - sink) % (window - sink).
While the video is shorter than the window, frame f sits in slot f, so the valid keys are
always a prefix of the buffer.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError

FRAMES_PER_BLOCK = 3


def check_window(local_attn_size: int, sink_size: int) -> None:
    """Raises ConfigError unless the window can hold the sink frames and one block beside them."""
    if sink_size < 0:
        raise ConfigError(f"sink_size={sink_size} must be >= 0")
    if local_attn_size - sink_size < FRAMES_PER_BLOCK:
        raise ConfigError(
            f"local_attn_size={local_attn_size} must exceed sink_size={sink_size} by at least "
            f"{FRAMES_PER_BLOCK} frames (one block); raise local_attn_size or lower sink_size"
        )


@dataclasses.dataclass
class KVCache:
    """Self-attention K/V of every layer. k, v: [layers, B, window * frame_tokens, H, D].

    Relative positions (StreamSession's position_mode) also keep sink_keys [layers, B, sink * frame_tokens, H, D]:
    the sink frames' keys at their own positions, from which the keys in the sink slots are moved `sinks_at`
    frames later."""

    k: torch.Tensor
    v: torch.Tensor
    window: int
    sink: int
    frame_tokens: int
    sink_keys: torch.Tensor | None = None
    sinks_at: int = 0

    @classmethod
    def allocate(cls, layers: int, batch: int, window: int, sink: int, frame_tokens: int,
                 heads: int, head_dim: int, device, dtype, sink_keys_dtype: torch.dtype | None = None) -> "KVCache":
        check_window(window, sink)
        shape = (layers, batch, window * frame_tokens, heads, head_dim)
        sinks = None
        if sink_keys_dtype is not None and sink:
            sinks = torch.zeros(layers, batch, sink * frame_tokens, heads, head_dim, device=device, dtype=sink_keys_dtype)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype),
                   window, sink, frame_tokens, sinks)

    def slot(self, frame: int) -> int:
        if frame < self.sink:
            return frame
        return self.sink + (frame - self.sink) % (self.window - self.sink)

    def token_index(self, start_frame: int, num_frames: int, device=None) -> torch.Tensor:
        """Token slots of frames [start_frame, start_frame + num_frames): [num_frames * frame_tokens]."""
        slots = torch.tensor([self.slot(f) for f in range(start_frame, start_frame + num_frames)])
        tokens = (slots[:, None] * self.frame_tokens + torch.arange(self.frame_tokens)).flatten()
        device = device or self.k.device
        if device.type == "cuda":  # pinned + non-blocking: no wait on the GPU queue
            return tokens.pin_memory().to(device, non_blocking=True)
        return tokens.to(device)

    def kv_len(self, end_frame: int) -> int:
        """Number of valid key tokens once frames [0, end_frame) are written."""
        return min(end_frame, self.window) * self.frame_tokens

    def zero_(self) -> None:
        self.k.view(torch.uint8).zero_()  # zero bytes are 0.0 in every float format, FP8 included
        self.v.view(torch.uint8).zero_()
        self.sinks_at = 0

    @property
    def nbytes(self) -> int:
        sinks = 0 if self.sink_keys is None else self.sink_keys.numel() * self.sink_keys.element_size()
        return 2 * self.k.numel() * self.k.element_size() + sinks


@dataclasses.dataclass
class TextCache:
    """Cross-attention K/V of the current prompt. k, v: [layers, B, text_len, H, D].

    The text is zero-padded to text_len, so every key and value after the prompt's last token is the
    same pair (the projection of a zero row). used: [B] int32, how many leading keys to attend to (the
    prompt, at least 1); pad_k, pad_v: [layers, B, 1, H, D], that pair; log_pad: [B] float32, the log
    of how often it repeats after `used` (-inf: never). Attention over all text_len keys equals
    attention over the first `used` plus the pair weighted by its count: the flash backends' shortcut.
    """

    k: torch.Tensor
    v: torch.Tensor
    used: torch.Tensor
    pad_k: torch.Tensor
    pad_v: torch.Tensor
    log_pad: torch.Tensor

    @classmethod
    def allocate(cls, layers: int, batch: int, text_len: int, heads: int, head_dim: int, device, dtype) -> "TextCache":
        shape, pad = (layers, batch, text_len, heads, head_dim), (layers, batch, 1, heads, head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype),
                   torch.full((batch,), text_len, device=device, dtype=torch.int32),
                   torch.zeros(pad, device=device, dtype=dtype), torch.zeros(pad, device=device, dtype=dtype),
                   torch.full((batch,), -torch.inf, device=device))

    def state(self) -> dict[str, torch.Tensor]:
        """Its tensors by name (a session's save)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copies a save's tensors into its own buffers (CUDA graphs that read them stay valid)."""
        for name, tensor in self.state().items():
            tensor.copy_(tensors[name])

    def layer(self, i: int) -> "TextCache":
        """Layer i's view: k, v [B, text_len, H, D], pad_k/pad_v [B, 1, H, D], the shared used / log_pad."""
        return dataclasses.replace(self, k=self.k[i], v=self.v[i], pad_k=self.pad_k[i], pad_v=self.pad_v[i])

    def set_used(self, embeds: torch.Tensor) -> torch.Tensor:
        """Records how much of each sample's embeddings [B, text_len, C] precedes its zero padding;
        returns the index of one padding row per sample (any: they are all the same)."""
        text_len = embeds.shape[1]
        last = ((embeds.abs().amax(-1) > 0) * torch.arange(1, text_len + 1, device=embeds.device)).amax(-1)
        used = last.clamp(min=1)
        self.used.copy_(used)
        self.log_pad.copy_(torch.log((text_len - used).float()))
        return used.clamp(max=text_len - 1)

    def zero_(self) -> None:
        for t in (self.k, self.v, self.pad_k, self.pad_v):
            t.zero_()
        self.used.fill_(self.k.shape[2])
        self.log_pad.fill_(-torch.inf)
