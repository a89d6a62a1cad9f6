"""GPU micro-benchmark: the Wan 2.1 decoder's heavy 3x3x3 causal convolutions in several formulations.

    python scripts/bench_conv.py [--json PATH]

Shapes of one steady chunk (12 pixel frames at 480x832): the cache's 2 frames are already in front of the
input. Rows: cuDNN conv3d (channels-last 3D, as the decoder runs), conv3d on contiguous input, three conv2d
taps summed (one per time offset), and one conv2d over the three frames stacked in the channels.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="bench_conv.json")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    rows = []
    with torch.inference_mode():
        for name, (cin, cout, frames, h, w_) in SHAPES.items():
            x = torch.randn(1, cin, frames + 2, h, w_, device="cuda", dtype=torch.bfloat16).contiguous(
                memory_format=torch.channels_last_3d)
            w = torch.randn(cout, cin, 3, 3, 3, device="cuda", dtype=torch.bfloat16) * (cin * 27) ** -0.5
            flops = 2 * cin * cout * 27 * frames * h * w_
            ref = F.conv3d(x.float(), w.float(), padding=(0, 1, 1))
            for form, fn in formulations(x, w, frames).items():
                ms = timed(fn)
                out = fn()
                err = (out.float() - ref).abs().max().item() / ref.abs().max().item() if out.shape == ref.shape else None
                rows.append({"shape": name, "form": form, "ms": ms, "tflops": flops / ms / 1e9, "rel_err": err})
                print(json.dumps(rows[-1]), flush=True)
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16\n| shape | form | ms | TFLOP/s | rel err |")
    print("|---|---|---|---|---|")
    for r in rows:
        err = "" if r["rel_err"] is None else f"{r['rel_err']:.1e}"
        print(f"| {r['shape']} | {r['form']} | {r['ms']:.3f} | {r['tflops']:.0f} | {err} |")


if __name__ == "__main__":
    main()
