"""torch.compile, set up in one place: every compiled function of the engine is made here, when the fast path is
set up (never at import).

Compilation only fuses (no cudagraphs mode: graphs.py owns CUDA graphs). Dynamo's recompile limit is raised only
while our compiled functions run, not for the server: each loaded model (module types differ: fp8, bf16) and batch
size adds variants of the same code, and past the limit dynamo silently runs eagerly.
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import Callable

import torch
import torch._dynamo

RECOMPILE_LIMIT = 64
# The engine's compiled calls run one at a time in a process (a thread that calls one while another thread's runs
# waits for it): dynamo's check for a compile being traced is one flag for the process (torch 2.11), so a compiled
# function called while another thread compiles fails ("Detected that you are using FX to symbolically trace a
# dynamo-optimized function", run 136), and its config (the limit patched here) is one for the process too. The
# decoder is readied on a thread of its own beside a run's first blocks (runtime/video.py).
_ONE_AT_A_TIME = threading.RLock()


def compiled(fn: Callable, **options) -> Callable:
    """torch.compile(fn, **options), run under our recompile limit, one compiled call at a time. Compiles at its
    first call."""
    inner = torch.compile(fn, **options)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        limit = max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)
        with _ONE_AT_A_TIME, torch._dynamo.config.patch(recompile_limit=limit):
            return inner(*args, **kwargs)

    return run


def unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot compile for `device` on this machine (None: it can)."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support this Python ({sys.version.split()[0]})"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "the triton package is not installed (torch.compile needs it for CUDA)"
    return None
