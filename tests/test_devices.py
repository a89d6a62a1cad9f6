"""Where a video's decoder runs (runtime/devices.py, the nodes' decode_device), and a decode stream moving there."""

from __future__ import annotations

import pytest
import torch

from longlive_core import DEFAULT_DEVICE, ConfigError, DecodeStream, device_choices, resolve_device


def test_a_decode_device_is_the_models_or_a_cuda_device_of_this_machine():
    cpu, count = torch.device("cpu"), torch.cuda.device_count()
    assert resolve_device(DEFAULT_DEVICE, cpu) == cpu and resolve_device(None, cpu) == cpu
    assert device_choices() == [DEFAULT_DEVICE, *(f"cuda:{i}" for i in range(count))]
    present = ", ".join(f"cuda:{i}" for i in range(count)) or "none"
    with pytest.raises(ConfigError, match=rf"^decode_device: cuda:{count} is not a CUDA device of this machine "
                                          rf"\(its CUDA devices: {present}\); choose 'ComfyUI's device'"):
        resolve_device(f"cuda:{count}", cpu)
    with pytest.raises(ConfigError, match="^decode_device: 'gpu two' is not a device name; choose 'ComfyUI's device' "
                                          "or cuda:N"):
        resolve_device("gpu two", cpu)
    with pytest.raises(ConfigError, match="^decode_device: cpu is not a CUDA device of this machine"):
        resolve_device("cpu", cpu)


def test_a_decode_stream_continues_on_the_device_it_moves_to():
    stream = DecodeStream(3)
    stream.cache = [torch.ones(1, 2, 2, 3, 3), None, "Rep"]
    stream.move_to(torch.device("meta"))
    assert stream.cache[0].device.type == "meta" and stream.cache[0].shape == (1, 2, 2, 3, 3)
    assert stream.cache[1:] == [None, "Rep"]  # empty slots and the decoder's marks stay as they are
