"""The time of a span of launched work: on a GPU, two CUDA events on the device's current stream, so that timing
adds no host sync until a figure is read; on the CPU, wall time."""

from __future__ import annotations

import time

import torch

MAX_UNREAD = 64  # spans a Spans keeps unread (a decoder used outside runs is never read): the oldest go


class GpuTimer:
    """Starts at construction; stop() ends the span."""

    def __init__(self, device: torch.device | str):
        device = torch.device(device)
        self.stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        self.events = None
        if self.stream is not None:
            self.events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.events[0].record(self.stream)
        self.t0 = self.t1 = time.perf_counter()

    def stop(self) -> GpuTimer:
        if self.events is not None:
            self.events[1].record(self.stream)
        self.t1 = time.perf_counter()
        return self

    def done(self) -> bool:
        """Whether the span's work has finished (never waits)."""
        return self.events is None or self.events[1].query()

    def ms(self) -> float:
        """The span in milliseconds; on a GPU this waits for its work."""
        if self.events is None:
            return (self.t1 - self.t0) * 1e3
        self.events[1].synchronize()
        return self.events[0].elapsed_time(self.events[1])


class Spans:
    """Stopped timers not yet read (a decoder's calls)."""

    def __init__(self):
        self.unread: list[GpuTimer] = []

    def add(self, timer: GpuTimer) -> None:
        self.unread = [*self.unread, timer.stop()][-MAX_UNREAD:]

    def take_ms(self) -> float | None:
        """The summed time of the spans whose work has finished, which are then read; None where none has. Never
        waits: spans still running stay for a later call."""
        done = [t.done() for t in self.unread]  # asked once each: a span finishing meanwhile waits for a later call
        if not any(done):
            return None
        finished = [t for t, d in zip(self.unread, done) if d]
        self.unread = [t for t, d in zip(self.unread, done) if not d]
        return sum(t.ms() for t in finished)
