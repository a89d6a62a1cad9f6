"""Encoder settings for LongLive Save Video: libx264 presets and CRFs at 832x480, speed against size.

    python scripts/bench_encoder.py [--frames 192] [--threads 4]

Encodes the same frames the way nodes/recording.py does (fragmented MP4, a fragment per frame, zerolatency, a
keyframe a second) into a temporary folder, and prints frames per second (wall, one encoder) and megabytes per
minute of video. The frames are synthetic: smooth moving gradients and shapes with film grain (no real video ships
with the repository); real LongLive output compresses differently.
"""

from __future__ import annotations

import argparse
import fractions
import os
import tempfile
import time

import av
import numpy as np

FPS = 16
SETTINGS = [(preset, crf) for preset in ("ultrafast", "superfast", "veryfast", "faster", "medium") for crf in (18, 23)]


def frames(count: int, height: int = 480, width: int = 832) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for t in range(count):
        r = 128 + 100 * np.sin((x + 6 * t) / 90) * np.cos(y / 70)
        g = 128 + 100 * np.sin((y - 3 * t) / 60 + x / 200)
        b = 128 + 90 * np.cos((x + y + 4 * t) / 120)
        img = np.stack([r, g, b], -1)
        cy, cx = 240 + 120 * np.sin(t / 20), 416 + 300 * np.cos(t / 25)
        img[(y - cy) ** 2 + (x - cx) ** 2 < 60 ** 2] = (230, 200, 40)
        img += rng.normal(0, 4, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def encode(images: list[np.ndarray], path: str, preset: str, crf: int, threads: int) -> float:
    start = time.perf_counter()
    with av.open(path, "w", format="mp4", options={"movflags": "frag_every_frame+empty_moov+default_base_moof"}) as c:
        stream = c.add_stream("libx264", rate=fractions.Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        stream.options = {"preset": preset, "crf": str(crf), "tune": "zerolatency", "g": str(FPS)}
        stream.thread_count = threads
        for image in images:
            c.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        c.mux(stream.encode(None))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=192)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    images = frames(args.frames)
    print(f"{args.frames} frames 832x480, libx264 {args.threads} threads, av {av.__version__}, {os.cpu_count()} CPUs")
    print("| preset | crf | encode fps | MB per minute |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for preset, crf in SETTINGS:
            path = os.path.join(tmp, f"{preset}_{crf}.mp4")
            seconds = encode(images, path, preset, crf, args.threads)
            mb_per_minute = os.path.getsize(path) / 2**20 * 60 * FPS / args.frames
            print(f"| {preset} | {crf} | {args.frames / seconds:.0f} | {mb_per_minute:.1f} |")


if __name__ == "__main__":
    main()
