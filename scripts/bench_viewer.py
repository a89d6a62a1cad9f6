"""Frame formats for the live viewer's stream: encode time and size of one 832x480 frame.

    python scripts/bench_viewer.py [--frames 96]

Encodes the same synthetic frames as scripts/bench_encoder.py (smooth moving gradients and shapes with film grain)
one at a time, as nodes/viewer.py does on its worker thread: JPEG (Pillow, the qualities below) and WebP (Pillow,
lossy, its fastest method). Prints milliseconds a frame (one thread) and kilobytes a frame, and the megabits a second
a viewer receives at 16 fps. The browser decodes either with createImageBitmap; its decode time is not measured here.
"""

from __future__ import annotations

import argparse
import io
import time

from PIL import Image

from bench_encoder import frames

FPS = 16
FORMATS = [("JPEG", {"quality": 85}), ("JPEG", {"quality": 75}), ("WEBP", {"quality": 80, "method": 0}),
           ("WEBP", {"quality": 60, "method": 0})]


def measure(images: list[Image.Image], kind: str, options: dict) -> tuple[float, float]:
    """(ms a frame, bytes a frame), the mean over the frames."""
    sizes, start = [], time.perf_counter()
    for image in images:
        out = io.BytesIO()
        image.save(out, kind, **options)
        sizes.append(out.tell())
    return (time.perf_counter() - start) * 1e3 / len(images), sum(sizes) / len(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=96)
    args = parser.parse_args()
    images = [Image.fromarray(f) for f in frames(args.frames)]
    print("| format | options | ms a frame | KB a frame | Mbit/s at 16 fps |")
    print("| --- | --- | --- | --- | --- |")
    for kind, options in FORMATS:
        ms, size = measure(images, kind, options)
        print(f"| {kind} | {', '.join(f'{k} {v}' for k, v in options.items())} | {ms:.1f} | {size / 1e3:.0f} | "
              f"{size * 8 * FPS / 1e6:.1f} |")


if __name__ == "__main__":
    main()
