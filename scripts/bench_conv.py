"""GPU micro-benchmark: the Wan 2.1 decoder's convolutions in several formulations.

    PYTHONPATH=. python scripts/bench_conv.py [--json PATH] [--sections heavy,head,upsample]

Shapes of one steady chunk (12 pixel frames at 480x832). heavy: the 3x3x3 causal convs, the cache's 2 frames
already in front of the input; rows: cuDNN conv3d (channels-last 3D, as the decoder runs), conv3d on contiguous
input, three conv2d taps summed (one per time offset), one conv2d over the three frames stacked in the channels.
head: the RGB head (96 to 3 channels) in cuDNN, zero-padded to more outputs, and in our Triton kernel at several
launch sizes. upsample: the spatial upsamplers, nearest 2x then a 3x3 conv, against the sub-pixel 2x2 convs.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from longlive_core.vae import head  # noqa: E402
from longlive_core.vae.stream import _upsample2d  # noqa: E402

SHAPES = {  # name: (channels in, channels out, frames out, height, width)
    "384ch 120x208 T6": (384, 384, 6, 120, 208),
    "192ch 240x416 T12": (192, 192, 12, 240, 416),
    "96ch 480x832 T12": (96, 96, 12, 480, 832),
}


def timed(fn, reps: int = 10) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def formulations(x: torch.Tensor, w: torch.Tensor, frames: int) -> dict:
    """x [1, C, frames + 2, H, W] channels-last 3D; w [Co, C, 3, 3, 3]."""
    w_last = w.contiguous(memory_format=torch.channels_last_3d)
    x2d = x[0].transpose(0, 1)  # [frames + 2, C, H, W], channels-last 2D as a view
    taps = [w[:, :, dt].contiguous(memory_format=torch.channels_last) for dt in range(3)]
    stacked_w = w.permute(0, 2, 1, 3, 4).reshape(w.shape[0], 3 * w.shape[1], 3, 3).contiguous(
        memory_format=torch.channels_last)
    x_plain = x.contiguous()

    def stack():
        return torch.cat([x2d[dt:dt + frames] for dt in range(3)], dim=1)

    return {
        "conv3d channels-last": lambda: F.conv3d(x, w_last, padding=(0, 1, 1)),
        "conv3d contiguous": lambda: F.conv3d(x_plain, w, padding=(0, 1, 1)),
        "3 conv2d taps summed": lambda: sum(F.conv2d(x2d[dt:dt + frames], taps[dt], padding=1) for dt in range(3)),
        "1 conv2d tap (a third)": lambda: F.conv2d(x2d[:frames], taps[0], padding=1),
        "stack copy": stack,
        "stack + conv2d": lambda: F.conv2d(stack(), stacked_w, padding=1),
        "copy of the input": lambda: x.clone(),
    }


NARROW_LAUNCH = [(64, 32, 4), (64, 32, 2), (128, 32, 4), (128, 32, 8), (256, 32, 4), (256, 32, 8), (128, 16, 4)]
UPSAMPLE = {"384 to 192ch, 120x208 to 240x416": (384, 120, 208), "192 to 96ch, 240x416 to 480x832": (192, 240, 416)}


def heavy_rows() -> list:
    rows = []
    for name, (cin, cout, frames, h, w_) in SHAPES.items():
        x = torch.randn(1, cin, frames + 2, h, w_, device="cuda", dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last_3d)
        w = torch.randn(cout, cin, 3, 3, 3, device="cuda", dtype=torch.bfloat16) * (cin * 27) ** -0.5
        flops = 2 * cin * cout * 27 * frames * h * w_
        ref = F.conv3d(x.float(), w.float(), padding=(0, 1, 1))
        for form, fn in formulations(x, w, frames).items():
            rows.append(row(name, form, fn, flops, ref))
    return rows


def row(shape: str, form: str, fn, flops: float, ref: torch.Tensor | None) -> dict:
    ms = timed(fn)
    out = fn()
    err = None if ref is None or out.shape != ref.shape else \
        (out.float() - ref).abs().max().item() / ref.abs().max().item()
    print(json.dumps({"shape": shape, "form": form, "ms": ms}), flush=True)
    return {"shape": shape, "form": form, "ms": ms, "tflops": flops / ms / 1e9, "rel_err": err}


def head_rows() -> list:
    """The head: 96 to 3 channels, 3x3x3, 12 frames at 480x832 after 2 cached frames."""
    shape, frames = "head 96 to 3ch 480x832 T12", 12
    last = torch.channels_last_3d
    cache = torch.randn(1, 96, 2, 480, 832, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=last)
    x = torch.randn(1, 96, frames, 480, 832, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=last)
    w = (torch.randn(3, 96, 3, 3, 3, device="cuda") * (96 * 27) ** -0.5).to(torch.bfloat16)
    bias = torch.randn(3, device="cuda", dtype=torch.bfloat16)
    full = torch.cat([cache, x], 2)
    flops = 2 * 96 * 3 * 27 * frames * 480 * 832
    ref = F.conv3d(full.float(), w.float(), bias.float(), padding=(0, 1, 1))
    rows = [row(shape, "cat of the cache and the input", lambda: torch.cat([cache, x], 2), flops, None)]
    for outs in (3, 8):
        wp = torch.cat([w, w.new_zeros(outs - 3, *w.shape[1:])]).contiguous(memory_format=last)
        bp = torch.cat([bias, bias.new_zeros(outs - 3)])
        rows.append(row(shape, f"cuDNN conv3d, {outs} outputs", lambda: F.conv3d(full, wp, bp, padding=(0, 1, 1))[:, :3],
                        flops, ref))
    for launch in NARROW_LAUNCH:
        head.GPU_LAUNCH = launch
        rows.append(row(shape, f"triton narrow (pixels, channels, warps) {launch}",
                        lambda: head.causal_conv3d_narrow(cache, x, w, bias), flops, ref))
    return rows


def upsample_rows() -> list:
    """Nearest 2x + 3x3 conv (ComfyUI's Resample) against the sub-pixel form (longlive_core/vae/stream._upsample2d)."""
    rows = []
    for shape, (cin, h, w_) in UPSAMPLE.items():
        resample = torch.nn.Sequential(torch.nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                       torch.nn.Conv2d(cin, cin // 2, 3, padding=1)).to("cuda", torch.bfloat16)
        resample[1].comfy_cast_weights, resample[1].weight_function, resample[1].bias_function = False, [], []
        resample[1].weight.data = resample[1].weight.data.contiguous(memory_format=torch.channels_last)
        x = torch.randn(1, cin, 12, h, w_, device="cuda", dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last_3d)
        frames = x.transpose(1, 2).flatten(0, 1)
        flops = 2 * cin * (cin // 2) * 9 * 12 * 4 * h * w_
        ref = resample.float()(frames.float()).unflatten(0, (1, 12)).transpose(1, 2)
        resample.to(torch.bfloat16)
        resample[1].weight.data = resample[1].weight.data.contiguous(memory_format=torch.channels_last)
        up = F.interpolate(frames, scale_factor=2.0, mode="nearest-exact")
        rows += [row(shape, "nearest 2x copy", lambda: F.interpolate(frames, scale_factor=2.0, mode="nearest-exact"),
                     flops, None),
                 row(shape, "3x3 conv of the upsampled copy", lambda: resample[1](up), flops, None),
                 row(shape, "nearest + 3x3 conv (eager)", lambda: resample(frames).unflatten(0, (1, 12)).transpose(1, 2),
                     flops, ref),
                 row(shape, "sub-pixel 2x2 convs + interleave (eager)", lambda: _upsample2d(resample, x), flops, ref)]
        compiled = torch.compile(_upsample2d)
        rows.append(row(shape, "sub-pixel, compiled (interleave as a copy)", lambda: compiled(resample, x), flops, ref))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="bench_conv.json")
    parser.add_argument("--sections", default="heavy,head,upsample")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    sections = {"heavy": heavy_rows, "head": head_rows, "upsample": upsample_rows}
    rows = []
    with torch.inference_mode():
        for name in args.sections.split(","):
            rows += sections[name]()
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16\n| shape | form | ms | TFLOP/s | rel err |")
    print("|---|---|---|---|---|")
    for r in rows:
        err = "" if r["rel_err"] is None else f"{r['rel_err']:.1e}"
        print(f"| {r['shape']} | {r['form']} | {r['ms']:.3f} | {r['tflops']:.0f} | {err} |")


if __name__ == "__main__":
    main()
