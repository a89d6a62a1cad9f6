"""GPU benchmark of the whole stream: the fast generator and the Wan 2.1 VAE decode, block by block.

    PYTHONPATH=<ComfyUI dir>:. python scripts/bench_stream.py [--json PATH] [--compiled-vae]
        [--precision bf16|fp8|...] [--attention auto|flash-attn 3 fp8|...]

Random full-size weights, bf16, 480x832, window 12, sink 3. Rows: sequential (each block generated,
then decoded) and overlapped (a block decodes on a second CUDA stream while the next one generates):
ms per block and pixel frames per second in steady state. Then prompt-to-pixel latency: from
set_prompt at a block boundary to the first decoded frame under the new prompt (a prompt that
arrives mid-block waits up to one more block). --compiled-vae: then the compiled decoder (the decode
node's `compile`, its steady chunks replayed as a CUDA graph), sequential, overlapped and its prompt-to-pixel latency.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import time

import torch

ARGV = sys.argv[1:]  # bench_vae replaces sys.argv for comfy's own argument parser
from bench_vae import model as random_vae, to_channels_last  # noqa: E402  (sets up comfy's args first)
from comfy.latent_formats import Wan21  # noqa: E402
from comfy.ldm.wan.vae import count_conv3d  # noqa: E402

from longlive_core import DecodeStream, StreamSession, WanConfig, make_fast, resolve_precision  # noqa: E402
from longlive_core.fast.runner import GraphRunner, warm_up  # noqa: E402
from longlive_core.tools.bench import PROMPT_TOKENS  # noqa: E402
from longlive_core.tools.synthetic import random_model  # noqa: E402

BLOCKS = 12


class Decoder:
    """Normalized latent blocks -> pixels, with the causal cache kept (channels-last, chunked)."""

    def __init__(self, fast: bool = False):
        self.fast = fast
        self.vae = random_vae(torch.bfloat16)
        to_channels_last(self.vae)
        fmt = Wan21()
        self.mean = torch.tensor(fmt.latents_mean, device="cuda").view(1, 16, 1, 1, 1)
        self.std = torch.tensor(fmt.latents_std, device="cuda").view(1, 16, 1, 1, 1)
        self.stream = DecodeStream(count_conv3d(self.vae.decoder))

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        raw = block.transpose(1, 2) * self.std + self.mean  # [B, 16, 3, h, w] raw VAE space
        raw = raw.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
        return self.stream.decode(self.vae, raw, fast=self.fast)


def steady_ms(session, decoder, overlap: bool) -> float:
    side = torch.cuda.Stream()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(BLOCKS):
        block = session.step_block()
        if overlap:
            side.wait_stream(torch.cuda.current_stream())
            block.record_stream(side)
            with torch.cuda.stream(side):
                decoder(block)
        else:
            decoder(block)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / BLOCKS


def prompt_to_pixel_ms(session, decoder, embeds) -> list[float]:
    out = []
    for e in embeds:
        torch.cuda.synchronize()
        start = time.perf_counter()
        session.set_prompt(e)
        pixels = decoder(session.step_block())
        pixels[:, :, :1].float().sum().item()  # the first decoded frame is on the host side of the sync
        out.append((time.perf_counter() - start) * 1e3)
        decoder(session.step_block())
    return out


def option(name: str, default: str) -> str:
    return ARGV[ARGV.index(name) + 1] if name in ARGV else default


def main() -> None:
    out_json = option("--json", "bench_stream.json")
    with torch.inference_mode():
        model = random_model(WanConfig(), device="cuda", dtype=torch.bfloat16)
        resolve_precision(option("--precision", "bf16"), model.device).apply(model)
        model = make_fast(model, attention=option("--attention", "auto"))
        attention = model.attention_backend
        session = StreamSession(model, height=480, width=832, runner=GraphRunner(model))
        warm_up(session)
        gen = torch.Generator(device="cuda").manual_seed(0)
        prompts = [torch.randn(1, PROMPT_TOKENS, 4096, device="cuda", generator=gen) * 0.1 for _ in range(4)]
        session.set_prompt(prompts[0])
        decoder = Decoder()
        for _ in range(6):  # past the window fill; cuDNN autotuning of the decoder
            decoder(session.step_block())
        rows = {"sequential_ms_per_block": steady_ms(session, decoder, overlap=False),
                "overlapped_ms_per_block": steady_ms(session, decoder, overlap=True)}
        latencies, compiled_latencies = prompt_to_pixel_ms(session, decoder, prompts[1:]), []
        if "--compiled-vae" in ARGV:  # the decoder under torch.compile (LongLive VAE Decode's `compile`)
            decoder = Decoder(fast=True)
            for _ in range(3):
                decoder(session.step_block())
            rows["compiled_vae_sequential_ms_per_block"] = steady_ms(session, decoder, overlap=False)
            rows["compiled_vae_overlapped_ms_per_block"] = steady_ms(session, decoder, overlap=True)
            compiled_latencies = prompt_to_pixel_ms(session, decoder, prompts[1:])
    rows.update({f"{k.split('_ms')[0]}_pixel_fps": 12e3 / v for k, v in list(rows.items())})
    rows["prompt_to_pixel_ms"] = latencies
    rows["prompt_to_pixel_ms_median"] = statistics.median(latencies)
    if compiled_latencies:
        rows["compiled_vae_prompt_to_pixel_ms"] = compiled_latencies
        rows["compiled_vae_prompt_to_pixel_ms_median"] = statistics.median(compiled_latencies)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "precision": option("--precision", "bf16"), "attention": attention, **rows}
    pathlib.Path(out_json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
