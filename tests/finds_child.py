"""Run by tests/test_gpu.py in a process of its own under the allocator it chooses (PYTORCH_CUDA_ALLOC_CONF):

    PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync python tests/finds_child.py [wan2.2 | live]

A fresh Wan 2.1 decode stream (ComfyUI's decoder module, random weights; with `wan2.2` a Wan 2.2 stream, one latent
frame a call; with `live`, see live_main) decodes its first video compiled, as the decode node's `compile` runs it;
prints one JSON line: the memory fraction each call of the decoder's first conv saw (at most 1), the bound expected
for the first call, the fraction after each call, and how far the peak rose above what was allocated before the
video; whether cuDNN's benchmark mode was on in the first two (eager) calls, and the benchmark and deterministic flags
the steady (compiled) chunks saw.
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from longlive_core.vae import stream as streams  # noqa: E402
from longlive_core.vae.stream import FIND_FLOOR, FIND_PER_PIXEL_BYTE, DecodeStream  # noqa: E402
from test_gpu import random_vae  # noqa: E402  (this folder is the script's: first on the path)


def stream_and_latents(family: str) -> tuple:
    """A random decoder of the family, a fresh stream of it, a video's latents and the latent frames a call."""
    if family == "wan2.2":
        from comfy.ldm.wan import vae2_2

        from longlive_core.vae.stream22 import Wan22DecodeStream

        vae = random_vae(vae2_2.WanVAE, dim=32, dec_dim=32, z_dim=48)
        z = torch.randn(1, 48, 5, 16, 24, device="cuda", dtype=torch.bfloat16)
        return vae, Wan22DecodeStream(vae2_2.count_conv3d(vae.decoder)), z, 1
    from comfy.ldm.wan.vae import WanVAE, count_conv3d

    vae = random_vae(WanVAE, dim=32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                     temperal_downsample=[False, True, True])
    z = torch.randn(1, 16, 15, 16, 24, device="cuda", dtype=torch.bfloat16)
    return vae, DecodeStream(count_conv3d(vae.decoder)), z, 3


def main() -> None:
    vae, stream, z, frames = stream_and_latents(sys.argv[1] if len(sys.argv) > 1 else "wan")
    seen: list[float] = []
    benchmark: list[bool] = []

    def record(*_) -> None:
        seen.append(min(1.0, torch.cuda.get_per_process_memory_fraction()))  # unbounded cudaMallocAsync: > 1
        benchmark.append(torch.backends.cudnn.benchmark)

    vae.decoder.conv1.register_forward_hook(record)
    steady_flags: list[tuple[bool, bool]] = []
    compiled = streams.compiled_steady_decode

    def steady(*args, **kwargs):  # the compiled steady chunk, and its capture
        steady_flags.append((torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic))
        return compiled(*args, **kwargs)

    streams.compiled_steady_decode = steady
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    after = []
    with torch.inference_mode():
        for part in z.split(frames, dim=2):
            stream.decode(vae, part, fast=True)
            after.append(min(1.0, torch.cuda.get_per_process_memory_fraction()))
    print(json.dumps({"allocator": torch.cuda.memory.get_allocator_backend(), "seen": seen[:2],
                      "benchmark": benchmark[:2], "steady_flags": sorted(set(steady_flags)),
                      "bound": (start + FIND_FLOOR) / total, "after": after, "graph": stream.has_graph,
                      "rise_gib": (torch.cuda.max_memory_allocated() - start) / 2**30,
                      "floor_gib": FIND_FLOOR / 2**30}))


def live_main() -> None:
    """A live session's decode at full size: Wan 2.1's decoder (its shape, random weights) readied compiled for
    blocks of 3 latent frames at 480x832 decoded a latent frame a call (the sampler's warm-up), then three blocks
    handed on a frame at a time. Prints the memory fraction the warm-up's first call saw, the bound expected for a
    block's pixels, the frames handed on and the peak's rise."""
    from comfy.ldm.wan.vae import WanVAE, count_conv3d

    vae = random_vae(WanVAE, dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                     temperal_downsample=[False, True, True])
    seen: list[float] = []
    fraction = torch.cuda.get_per_process_memory_fraction
    vae.decoder.conv1.register_forward_hook(lambda *_: seen.append(min(1.0, fraction())))
    stream = DecodeStream(count_conv3d(vae.decoder))
    z = torch.randn(1, 16, 9, 60, 104, device="cuda", dtype=torch.bfloat16)
    total = torch.cuda.get_device_properties(0).total_memory
    start = torch.cuda.memory_allocated()
    pixel_bytes = 3 * 60 * 104 * stream.find_pixels_per_latent * z.element_size()  # a block's
    torch.cuda.reset_peak_memory_stats()
    frames = []
    with torch.inference_mode():
        stream.warm_up(vae, z[:, :, :3], fast=True, frames_per_call=1)
        for block in z.split(3, dim=2):
            stream.decode(vae, block, fast=True, frames_per_call=1, each=lambda out: frames.append(out.shape[2]))
    print(json.dumps({"allocator": torch.cuda.memory.get_allocator_backend(), "first_seen": seen[0],
                      "bound": (start + max(FIND_FLOOR, FIND_PER_PIXEL_BYTE * pixel_bytes)) / total, "frames": frames,
                      "rise_gib": (torch.cuda.max_memory_allocated() - start) / 2**30}))


if __name__ == "__main__":
    live_main() if sys.argv[1:] == ["live"] else main()
