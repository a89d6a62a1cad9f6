"""CUDA graph capture: the one way the fast path captures (transformer passes and the VAE's steady chunk), and
what a failed capture leaves behind.

PyTorch captures under either of its CUDA allocators. The native one serves a capture from a private pool. The
cudaMallocAsync one (ComfyUI's default on CUDA) turns every allocation made during a capture into a graph
allocation, which gets memory only when the graph first runs; freeing one before that run is a CUDA error that
PyTorch raises inside a tensor's destructor, where it aborts the process. A capture that fails half way leaves such
tensors behind, so under cudaMallocAsync its graph runs once before they go (_recover). Under the native allocator a
failed capture's pool is simply released. Under cudaMallocAsync the kernels' launchers also cannot ask the driver
about those allocations, so inside a capture Triton's kernels, ours and torch.compile's, launch on addresses
(kernels/launch.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import pathlib
import traceback
from typing import Any, Callable, Sequence

import torch

from ..errors import LongLiveError

log = logging.getLogger(__name__)

_KEPT: list = []  # the storage of tensors that failed captures allocated: never freed (see the module docstring)
_OFF: list[str] = []  # why captures are off for this process, once one failed under cudaMallocAsync


class CaptureError(LongLiveError):
    """A CUDA graph could not be captured; the caller runs the same work without a graph."""


def async_allocator() -> bool:
    """Whether PyTorch allocates CUDA memory with cudaMallocAsync (ComfyUI's default; its --disable-cuda-malloc
    selects the native allocator)."""
    return torch.cuda.memory.get_allocator_backend() == "cudaMallocAsync"


def check_can_capture(device: torch.device) -> None:
    """Raises CaptureError where a capture on `device` could not succeed; run outside any capture."""
    if _OFF:
        raise CaptureError(_OFF[0])
    if async_allocator():
        from ..kernels.launch import raw_launch_works  # noqa: PLC0415 (imports triton)

        if not raw_launch_works(device):
            raise CaptureError("under PyTorch's cudaMallocAsync allocator the Triton kernels cannot be captured by "
                               "this Triton version; start ComfyUI with --disable-cuda-malloc to use CUDA graphs")


def capture(fn: Callable[[], Any], device: torch.device, pool=None, rehearse: bool = False,
            writes: Sequence[torch.Tensor] = ()) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Captures fn() (work already run once eagerly, so compiled and autotuned) on a side stream. Returns (graph,
    fn's output: the tensors each replay rewrites). Raises CaptureError with the cause.

    rehearse: run fn there once first (for work that may run twice: it sets up the stream's library handles).
    writes: tensors fn changes in place that must not change if a failed capture's graph has to run once (see
    _recover); work that may run twice needs none."""
    check_can_capture(device)
    saved = [t.clone() for t in writes] if async_allocator() else []
    graph, stream, failure, out, ended = torch.cuda.CUDAGraph(), torch.cuda.Stream(device), None, None, False
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), _no_collector():  # the stream restored even if ending the capture fails
        if rehearse:
            fn()
        torch.cuda.synchronize(device)
        graph.capture_begin(pool=pool, capture_error_mode="thread_local")  # other threads' CUDA calls stay legal
        try:
            with _launches_on_addresses():
                out = fn()
        except Exception as exc:  # noqa: BLE001 (any failure: the process must outlive it)
            failure = exc
        gc.collect(0)  # cycles made since the collector went off (all young): their frees are legal only in here
        try:
            graph.capture_end()
            ended = True
        except Exception as exc:  # noqa: BLE001
            failure = failure or exc
    torch.cuda.current_stream(device).wait_stream(stream)
    if failure is None:
        return graph, out
    cause = f"{type(failure).__name__}: {failure} (raised at {where(failure)})"
    if async_allocator():
        _recover(failure, graph, out, ended, list(zip(writes, saved)), device)
    del failure, out
    raise CaptureError(cause)


@contextlib.contextmanager
def _no_collector():
    """Python's cycle collector off while a graph is captured, so that it runs at no arbitrary point of it; the
    capture collects the young generation itself before it ends (a tensor the capture allocated and only a cycle
    holds, freed after the capture and before the graph's first run, would abort the process under cudaMallocAsync).
    Collecting everything before each capture instead cost a full collection of the host's heap a graph: inside
    ComfyUI one takes 0.3-0.5 s (run 98), and a session captures six."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _launches_on_addresses():
    """Under cudaMallocAsync, torch.compile's kernels launch on addresses inside the capture (see kernels/launch.py:
    their launchers cannot ask the driver about a graph allocation); nothing changes under the native allocator."""
    if not async_allocator():
        return contextlib.nullcontext()
    from ..kernels.launch import inductor_on_addresses  # noqa: PLC0415 (imports triton)

    return inductor_on_addresses()


def where(failure: BaseException, frames: int = 3) -> str:
    """The innermost frames of an exception's traceback as 'file:line function', innermost first, each called from
    the next (which launcher or library raised inside a capture)."""
    summary = traceback.extract_tb(failure.__traceback__)[-frames:]
    return " < ".join(f"{pathlib.Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(summary))


def _recover(failure: BaseException, graph, out, ended: bool, saved: list, device) -> None:
    """After a failed capture under cudaMallocAsync, makes what it allocated safe to free. A graph that was
    instantiated runs once (its allocations then hold memory and may be freed like any tensor's), and the tensors
    it wrote in place get their values back; one that was not keeps what its frames hold for the life of the
    process, and no further capture is tried in it."""
    if ended:
        graph.replay()
        for tensor, value in saved:
            tensor.copy_(value)
        torch.cuda.synchronize(device)
        return
    _keep(failure, graph, out)
    _OFF.append(f"a CUDA graph capture failed under cudaMallocAsync ({type(failure).__name__}: {failure}); no further "
                f"capture in this process (restart ComfyUI, with --disable-cuda-malloc to be safe)")


def _keep(failure: BaseException, graph, out) -> None:
    """Keeps the storage of every CUDA tensor the failed capture's frames still hold (those it allocated are among
    them), then lets the frames, and whatever else they held (models, sessions), go."""
    storages = []
    for frame, _ in traceback.walk_tb(failure.__traceback__):
        storages += [t.untyped_storage() for t in _tensors(list(frame.f_locals.values()) + [out])]
    if not _KEPT:  # the list outlives the interpreter's clean-up too, which would free them and abort at exit
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(_KEPT))
    _KEPT.append((graph, storages))
    traceback.clear_frames(failure.__traceback__)
    log.warning("a failed CUDA graph capture keeps %.1f MiB of GPU memory for the life of the process",
                sum(s.nbytes() for s in {s.data_ptr(): s for s in storages}.values()) / 2**20)


def _tensors(values: list, depth: int = 2) -> list[torch.Tensor]:
    found = []
    for v in values:
        if isinstance(v, torch.Tensor) and v.is_cuda:
            found.append(v)
        elif depth and isinstance(v, (list, tuple)):
            found += _tensors(list(v), depth - 1)
        elif depth and isinstance(v, dict):
            found += _tensors(list(v.values()), depth - 1)
    return found
