"""Launching Triton kernels, also while a CUDA graph is being captured. Imported only when a kernel runs (it needs
the triton package).

Triton's launcher asks the driver about every tensor argument before it launches (cuPointerGetAttribute). Under
PyTorch's cudaMallocAsync allocator (ComfyUI's default on CUDA), memory allocated while a graph is captured is a
graph allocation: it gets physical memory only when the graph first runs, so the driver answers "invalid value"
and Triton raises "Pointer argument cannot be accessed from Triton (cpu tensor?)". Its launcher takes integers as
addresses without asking, so during a capture our kernels are compiled for their arguments as usual and launched
on the raw addresses. Whether this Triton's compiled kernels accept that is checked once per device, outside any
capture (raw_launch_works); until then, and where they do not, kernels launch the ordinary way.

torch.compile's kernels meet the same check (in inductor's static launcher: "CUDA driver error: invalid argument";
in Triton's: the message above). Inductor launches each of its kernels through CachingAutotuner.run, whose launchers
take integers as addresses too, so inside our captures (inductor_on_addresses) its tensor arguments go as addresses.
Its kernels are compiled and tuned by the eager run before each capture, so nothing there needs the tensors.
"""

import contextlib
import functools
import inspect
import logging
import threading

import torch
import triton
import triton.language as tl

log = logging.getLogger(__name__)

_RAW_LAUNCH: dict[int, bool] = {}  # CUDA device index -> whether raw-address launches work there
_CAPTURING = threading.local()  # .on: this thread is inside inductor_on_addresses (our capture)


def launch(kernel, grid: tuple, *args, **meta) -> None:
    """kernel[grid](*args, **meta); args[0] is a tensor (every kernel here takes one first)."""
    x = args[0]
    if x.is_cuda and _RAW_LAUNCH.get(x.device.index) and torch.cuda.is_current_stream_capturing():
        compiled = kernel.warmup(*args, grid=grid, **meta)  # compiles or finds the kernel; launches nothing
        compiled[_three(grid)](*_raw_arguments(kernel, args, meta))
        return
    kernel[grid](*args, **meta)


def _three(grid: tuple) -> tuple:
    """A compiled kernel takes its grid in three dimensions (the JIT function pads it)."""
    return (*grid, 1, 1)[:3]


def _raw_arguments(kernel, args: tuple, meta: dict) -> list:
    """Every parameter of the kernel in order (constexprs and defaults too, as Triton's launcher takes them), with
    tensors replaced by their addresses; launch options such as num_warps are not parameters."""
    signature = _signature(kernel)
    bound = signature.bind(*args, **{k: v for k, v in meta.items() if k in signature.parameters})
    bound.apply_defaults()
    return [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in bound.arguments.values()]


@functools.cache
def _signature(kernel) -> inspect.Signature:
    return inspect.signature(kernel.fn)


def raw_launch_works(device: torch.device) -> bool:
    """Checks once per device, outside any capture, that a compiled kernel launched on raw addresses computes what
    the ordinary launch computes (a Triton whose launch convention differs fails here, not inside a capture)."""
    index = torch.device(device).index or 0
    if index not in _RAW_LAUNCH:
        _RAW_LAUNCH[index] = _probe(torch.device("cuda", index))
    return _RAW_LAUNCH[index]


def _probe(device: torch.device) -> bool:
    x = torch.arange(100, device=device, dtype=torch.float32)
    out = torch.full_like(x, -1.0)
    try:
        meta = dict(SCALE=3, BLOCK=128)
        compiled = _scale.warmup(x, out, x.numel(), grid=(1,), **meta)
        compiled[_three((1,))](*_raw_arguments(_scale, (x, out, x.numel()), meta))
        ok = bool(torch.equal(out, x * 3))
    except Exception as exc:  # any Triton whose compiled-kernel call differs
        log.warning("Triton %s cannot launch compiled kernels on raw addresses (%s: %s)", triton.__version__,
                    type(exc).__name__, exc)
        ok = False
    return ok


@contextlib.contextmanager
def inductor_on_addresses():
    """Within: torch.compile's kernels launched from this thread get their tensor arguments as addresses."""
    if not _wrap_inductor():
        yield
        return
    _CAPTURING.on = True
    try:
        yield
    finally:
        _CAPTURING.on = False


@functools.cache
def _wrap_inductor() -> bool:
    """Wraps inductor's CachingAutotuner.run once per process; outside our captures the wrapper passes its arguments
    through unchanged. False where this torch has no such method (its kernels then launch the ordinary way)."""
    try:
        from torch._inductor.runtime.triton_heuristics import CachingAutotuner  # noqa: PLC0415
    except ImportError as exc:
        log.warning("torch.compile's kernels launch the ordinary way while capturing (%s)", exc)
        return False
    run = CachingAutotuner.run

    @functools.wraps(run)
    def run_on_addresses(self, *args, **kwargs):
        if getattr(_CAPTURING, "on", False):
            args = tuple(a.data_ptr() if isinstance(a, torch.Tensor) and a.is_cuda else a for a in args)
        return run(self, *args, **kwargs)

    CachingAutotuner.run = run_on_addresses
    return True


@triton.jit
def _scale(x_ptr, o_ptr, n, SCALE: tl.constexpr, BLOCK: tl.constexpr):
    # the raw-launch probe: o = x * SCALE
    i = tl.arange(0, BLOCK)
    tl.store(o_ptr + i, tl.load(x_ptr + i, mask=i < n) * SCALE, mask=i < n)
