"""Where a video's parts run: where the host puts them (ComfyUI's device), or another CUDA device of this machine. A
decoder on a second GPU decodes a block while the first generates the next; on the same GPU it decodes on a stream
of its own (SideStream), beside the next block's generation; a model on another GPU runs its sessions there."""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch

from ..errors import ConfigError

DEFAULT_DEVICE = "ComfyUI's device"


def device_choices() -> list[str]:
    """What a node offers: the host's own device, then each CUDA device of this machine."""
    return [DEFAULT_DEVICE, *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]


def on_device(device: torch.device):
    """Work launched inside goes to `device` (a CUDA device: its current stream, as Triton's kernels and CUDA graphs
    take it from the current device; elsewhere nothing changes)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class SideStream:
    """A CUDA stream of its own for work that may overlap what the current stream does next (a block's decode beside
    the next block's generation: the GPU runs both queues' kernels as its SMs allow)."""

    def __init__(self):
        self._streams: dict[torch.device, torch.cuda.Stream] = {}

    @contextlib.contextmanager
    def beside(self, *inputs: torch.Tensor, reads: Iterable[torch.Tensor] = ()):
        """Work launched inside runs on this stream, after what the current stream has queued, on copies of `inputs`
        taken there (yielded), so that later work on the current stream may change or reuse the originals. `reads`:
        tensors it reads in place (a model's weights): if the host frees one meanwhile (ComfyUI unloading the model),
        its memory is not reused before this work is done. Whoever reads the results elsewhere waits for it first (an
        event recorded inside). Off CUDA: in place, on the inputs.
        """
        device = inputs[0].device
        if device.type != "cuda":
            yield inputs
            return
        copies = tuple(t.clone() for t in inputs)
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        stream = self._streams[device]
        stream.wait_stream(torch.cuda.current_stream(device))
        for t in (*copies, *reads):
            if t.device == device:
                t.record_stream(stream)  # made on the current stream, read on this one
        with torch.cuda.stream(stream):
            yield copies


def resolve_device(choice: str | None, default: torch.device, field: str = "decode_device") -> torch.device:
    """The device a choice names: `default` for DEFAULT_DEVICE (or nothing), else a CUDA device present here; `field`
    names the input in the error."""
    if choice in (None, "", DEFAULT_DEVICE):
        return default
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise ConfigError(f"{field}: '{choice}' is not a device name; choose '{DEFAULT_DEVICE}' or cuda:N") from None
    count = torch.cuda.device_count()
    if device.type != "cuda" or device.index is None or device.index >= count:
        present = ", ".join(f"cuda:{i}" for i in range(count)) or "none"
        raise ConfigError(f"{field}: {choice} is not a CUDA device of this machine (its CUDA devices: {present}); "
                          f"choose '{DEFAULT_DEVICE}' or one of them")
    return device
