"""Where a video's decoder runs: the model's device by default, or another CUDA device of this machine (on a second
GPU the decode of a block overlaps the generation of the next)."""

from __future__ import annotations

import torch

from ..errors import ConfigError

SAME_DEVICE = "same as the model"


def device_choices() -> list[str]:
    """What a node offers: the model's device, then each CUDA device of this machine."""
    return [SAME_DEVICE, *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]


def resolve_device(choice: str | None, model_device: torch.device, field: str = "decode_device") -> torch.device:
    """The device a choice names: the model's for SAME_DEVICE (or nothing), else a CUDA device present here."""
    if choice in (None, "", SAME_DEVICE):
        return model_device
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise ConfigError(f"{field}: '{choice}' is not a device name; choose '{SAME_DEVICE}' or cuda:N") from None
    count = torch.cuda.device_count()
    if device.type != "cuda" or device.index is None or device.index >= count:
        present = ", ".join(f"cuda:{i}" for i in range(count)) or "none"
        raise ConfigError(f"{field}: {choice} is not a CUDA device of this machine (its CUDA devices: {present}); "
                          f"choose '{SAME_DEVICE}' or one of them")
    return device
