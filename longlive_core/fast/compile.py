"""torch.compile, set up in one place: every compiled function of the engine is made here, when the fast path is
set up (never at import).

Compilation only fuses (no cudagraphs mode: graphs.py owns CUDA graphs). Dynamo's recompile limit is raised only
while our compiled functions run, not for the server: each loaded model (module types differ: fp8, bf16) and batch
size adds variants of the same code, and past the limit dynamo silently runs eagerly.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

import torch
import torch._dynamo

RECOMPILE_LIMIT = 64


def compiled(fn: Callable, **options) -> Callable:
    """torch.compile(fn, **options), run under our recompile limit. Compiles at its first call."""
    inner = torch.compile(fn, **options)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch._dynamo.config.patch(recompile_limit=max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)):
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
