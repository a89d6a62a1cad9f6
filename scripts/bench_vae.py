"""GPU benchmark of Wan 2.1 VAE decoding at 480x832 (random weights, ComfyUI's decoder module).

    PYTHONPATH=<ComfyUI dir>:. python scripts/bench_vae.py [--json PATH] [--profile]

Rows: frame-by-frame decoding (how ComfyUI's WanVAE.decode and upstream work) and our chunked
decoding (a block of 3 latent frames per call), each with and without channels-last 3D, then
compiled, then Wan 2.1's tiny decoder streamed; ms for the first chunk (1 + 2 latent frames -> 9
pixel frames) and per steady chunk (3 -> 12), and the max abs difference of the pixels from
frame-by-frame decoding. --profile: the compiled decoder's kernel time of one chunk, by kind.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch

sys.argv, ARGS = [sys.argv[0], "--disable-cuda-malloc"], sys.argv[1:]
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
from comfy.ldm.wan.vae import WanVAE, count_conv3d  # noqa: E402

from longlive_core import DecodeStream, TinyStream  # noqa: E402

CHUNKS = 8


def model(dtype) -> WanVAE:
    vae = WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True]).to("cuda", dtype)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.copy_(torch.ones_like(p) if name.endswith("gamma") else torch.randn_like(p) * (1 / max(1, p[0].numel())) ** 0.5)
    return vae.eval()


def to_channels_last(vae) -> None:
    for p in vae.parameters():
        if p.dim() in (4, 5):
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d if p.dim() == 5 else torch.channels_last)


def run(vae, z, frames_per_call, channels_last=True, fast=False, graphs=True) -> tuple[list[float], torch.Tensor]:
    """fast: the compiled decoder (the decode node's `compile`), its steady chunks replayed as CUDA graphs (graphs)."""
    stream, times, outs = DecodeStream(count_conv3d(vae.decoder)), [], []
    for chunk in z.split(3, dim=2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        outs.append(stream.decode(vae, chunk, fast, frames_per_call, channels_last_3d=channels_last, graphs=graphs))
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times, torch.cat(outs, dim=2)


def compiled_row(vae, z, reference, graphs: bool) -> dict:
    """The chunked channels-last decoder under torch.compile (inductor fuses norms, SiLU, pads), with CUDA graphs as
    the decode node's `compile` runs it, or without."""
    row = {"row": f"chunked, channels_last_3d, torch.compile{' + CUDA graph' if graphs else ''}"}
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        run(vae, z[:, :, :6], 3, fast=True, graphs=graphs)  # the first chunk runs eagerly, the second compiles
        row["compile_s"] = time.perf_counter() - start
        times, pixels = run(vae, z, 3, fast=True, graphs=graphs)
    except Exception as exc:  # noqa: BLE001  (a measurement: report what failed)
        return {**row, "error": f"{type(exc).__name__}: {str(exc)[:300]}", "first_chunk_ms": float("nan"),
                "steady_chunk_ms": float("nan"), "max_abs_diff": float("nan")}
    return {**row, "first_chunk_ms": times[0], "steady_chunk_ms": statistics.median(times[1:]),
            "max_abs_diff": (pixels.float() - reference.float()).abs().max().item(),
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "reserved_gib": torch.cuda.memory_reserved() / 2**30}


def tiny_row(z) -> dict:
    """Wan 2.1's tiny decoder (ComfyUI's TAEHV, random weights, bf16), streamed chunk by chunk."""
    from comfy.taesd.taehv import TAEHV

    tiny = TAEHV(latent_channels=16, show_progress_bar=False).to("cuda", torch.bfloat16).eval()
    with torch.no_grad():
        for p in tiny.parameters():
            p.copy_(torch.randn_like(p) * (1 / max(1, p[0].numel())) ** 0.5)
    z = z.contiguous()
    for _ in range(2):  # the second pass is timed (the first autotunes cuDNN)
        stream, times = TinyStream(), []
        for chunk in z.split(3, dim=2):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            stream.decode(tiny, chunk)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    return {"row": "tiny decoder (TAEHV, lighttaew2_1 architecture), chunked", "first_chunk_ms": times[0],
            "steady_chunk_ms": statistics.median(times[1:]), "max_abs_diff": float("nan")}


def profile_chunk(vae, z) -> tuple[dict, list]:
    """Kernel time of one steady chunk through the compiled decoder: by kind, and the 40 longest kernels and
    convolutions (by input shapes)."""
    from torch.profiler import ProfilerActivity, profile

    stream = DecodeStream(count_conv3d(vae.decoder))  # compiled by now (compiled_row)
    stream.decode(vae, z[:, :, :3], fast=True, graphs=False)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        stream.decode(vae, z[:, :, 3:6], fast=True, graphs=False)
        torch.cuda.synchronize()
    kinds: dict[str, float] = {}
    kernels = []
    for evt in prof.key_averages():
        if evt.device_type != torch.autograd.DeviceType.CUDA or evt.key.startswith("## Call CompiledFxGraph"):
            continue  # the compiled graphs' own ranges span their kernels
        n = evt.key.lower()
        # inductor's kernels first: their names list the ops they fused, "convolution" among them (runs before 52
        # counted those as convolutions)
        kind = ("fused (triton)" if n.startswith("triton") else "conv" if any(
                    s in n for s in ("conv", "cudnn", "xmma", "implicit", "sm90", "cutlass", "gemm", "nvjet"))
                else "copy / cat / pad" if any(s in n for s in ("copy", "cat", "pad", "memcpy", "memset")) else "other")
        kinds[kind] = kinds.get(kind, 0.0) + evt.self_device_time_total / 1e3
        kernels.append({"kernel": evt.key[:90], "calls": evt.count, "ms": evt.self_device_time_total / 1e3})
    for evt in prof.key_averages(group_by_input_shape=True):
        if evt.key == "aten::convolution":
            kernels.append({"kernel": f"convolution {evt.input_shapes[:2]}", "calls": evt.count,
                            "ms": evt.device_time_total / 1e3})
    return kinds, sorted(kernels, key=lambda k: -k["ms"])[:40]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="bench_vae.json")
    parser.add_argument("--profile", action="store_true", help="kernel time by kind, compiled decoder, one chunk")
    parser.add_argument("--compiled-only", action="store_true", help="only the compiled row (the pixels against "
                        "the chunked channels-last decoder)")
    args = parser.parse_args(ARGS)
    torch.manual_seed(0)
    vae = model(torch.bfloat16)
    z = torch.randn(1, 16, 3 * CHUNKS, 60, 104, device="cuda", dtype=torch.bfloat16)
    rows, reference = [], None
    with torch.inference_mode():
        for layout in ("channels_last_3d",) if args.compiled_only else ("contiguous", "channels_last_3d"):
            if layout == "channels_last_3d":
                to_channels_last(vae)
                z = z.contiguous(memory_format=torch.channels_last_3d)
            forms = [("frame by frame", 1), ("chunked (3 latent frames a call)", 3)]
            for name, per_call in forms[1:] if args.compiled_only else forms:
                last = layout == "channels_last_3d"
                run(vae, z[:, :, :6], per_call, last)  # warm-up: cuDNN autotuning
                times, pixels = run(vae, z, per_call, last)
                reference = pixels if reference is None else reference
                rows.append({"row": f"{name}, {layout}", "first_chunk_ms": times[0],
                             "steady_chunk_ms": statistics.median(times[1:]),
                             "max_abs_diff": (pixels.float() - reference.float()).abs().max().item()})
                print(json.dumps(rows[-1]), flush=True)
        for graphs in (False, True):
            rows.append(compiled_row(vae, z, reference, graphs))
            print(json.dumps(rows[-1]), flush=True)
        rows.append(tiny_row(z))
        print(json.dumps(rows[-1]), flush=True)
        kinds, kernels = profile_chunk(vae, z) if args.profile else ({}, [])
    pathlib.Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                                   "rows": rows, "profile_ms": kinds,
                                                   "kernels": kernels}, indent=1))
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, 480x832, 12 pixel frames per steady chunk")
    print("| decoder | first chunk ms (9 frames) | steady chunk ms (12 frames) | max abs diff |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['first_chunk_ms']:.1f} | {r['steady_chunk_ms']:.1f} | {r['max_abs_diff']:.2e} |")
    if kinds:
        print("compiled decoder, one steady chunk, kernel ms: " + ", ".join(f"{k} {v:.1f}" for k, v in kinds.items()))
        print("| kernel | calls | ms |\n|---|---|---|")
        for k in kernels:
            print(f"| {k['kernel']} | {k['calls']} | {k['ms']:.2f} |")


if __name__ == "__main__":
    main()
