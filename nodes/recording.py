"""A video file written while the video is generated: H.264 in fragmented MP4 through PyAV (ComfyUI's own video
library), encoded on a worker thread from uint8 frames, one fragment per frame, so the file on disk is playable after
every frame (an interrupted run, a full disk or a killed server leave a playable file of what was written).
"""

from __future__ import annotations

import dataclasses
import fractions
import os
import queue
import threading

import av
import numpy as np
import torch

from ..longlive_core import FPS, LongLiveError

# libx264 settings, chosen with scripts/bench_encoder.py (docs/BENCHMARKS.md run 73): at CRF 18 'veryfast' encoded
# 832x480 at 173 frames a second on 4 threads (over three times what generation makes) and was the smallest file of
# the CRF-18 rows; 'ultrafast' is faster and larger, 'faster' and 'medium' slower and no smaller.
ENCODER = {"codec": "libx264", "preset": "veryfast", "crf": 18, "keyframe_s": 1}
QUEUE_FRAMES = 512  # frames waiting for the encoder before generation waits for it (about 600 MB at 832x480), counted
# as writes of a Wan 2.1 block's 12 frames (writes of a latent frame's 4, a live block's or LongLive 2.0's, wait sooner)


class RecordingError(LongLiveError):
    """The video file could not be written (the message names the path and the fix)."""


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """Where a recording goes: the path, and its place in ComfyUI's output folder for the UI."""

    path: str
    filename: str
    subfolder: str


class Recording:
    """One MP4 file that grows frame by frame. write() hands uint8 frames [N, H, W, 3] (CPU) to the encoder thread;
    close() finishes the file. An encoder error is raised by the next write() or close(), naming the path."""

    def __init__(self, spec: FileSpec, width: int, height: int, fps: int = FPS, encoder: dict = ENCODER):
        self.spec = spec
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, QUEUE_FRAMES // 12))
        self._error: BaseException | None = None
        try:
            os.makedirs(os.path.dirname(spec.path) or ".", exist_ok=True)
            self._container = av.open(spec.path, "w", format="mp4", options={
                "movflags": "frag_every_frame+empty_moov+default_base_moof", "flush_packets": "1"})
        except OSError as err:
            raise self._failed(err) from err
        stream = self._container.add_stream(encoder["codec"], rate=fractions.Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": encoder["preset"], "crf": str(encoder["crf"]), "tune": "zerolatency",
                          "g": str(encoder["keyframe_s"] * fps)}
        stream.thread_count = min(4, os.cpu_count() or 1)
        self._stream = stream
        self._thread = threading.Thread(target=self._encode_all, name=f"longlive-encode {spec.filename}", daemon=True)
        self._thread.start()

    def write(self, frames: torch.Tensor) -> None:
        """Queues frames [N, H, W, 3] uint8 on the CPU; waits only when the encoder is QUEUE_FRAMES behind."""
        self._raise_error()
        if not self._thread.is_alive():
            raise RecordingError(f"the video file {self.spec.path} is already finished")
        self._queue.put(frames)

    def close(self) -> None:
        """Encodes what is queued and finishes the file; raises the encoder's error once."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise self._failed(error)

    def _encode_all(self) -> None:
        try:
            while (frames := self._queue.get()) is not None:
                if self._error is None:
                    self._encode(frames.numpy())
            self._container.mux(self._stream.encode(None))
        except Exception as err:  # any failure of the file or the encoder: the next write or the close reports it
            self._error = err
            while self._queue.get() is not None:  # drain: writers never block on a dead encoder
                pass
        finally:
            try:
                self._container.close()
            except (OSError, av.FFmpegError) as err:
                self._error = self._error or err

    def _encode(self, frames: np.ndarray) -> None:
        for frame in frames:
            packets = self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))
            self._container.mux(packets)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._failed(self._error)

    def _failed(self, err: BaseException) -> RecordingError:
        reason = getattr(err, "strerror", None) or str(err)
        return RecordingError(f"could not write the video file {self.spec.path} ({reason}); free disk space or make "
                              f"ComfyUI's output folder writable (--output-directory). The frames up to here are "
                              f"in the file and the session continues")
