"""The engine's torch custom ops are defined here, in the `longlive` namespace, once per process.

torch.library.custom_op replaces an op that is defined again and frees the first definition: the first copy's op
objects then call freed memory (a `ValueError: vector::reserve` or a segmentation fault, whichever the allocator
leaves there). A second copy of the engine defines them again: the pack's root package imported under another name
(pytest imports a test tree's `__init__.py` as a package) next to the `longlive_core` a script imported. So a second
definition is refused with an error that says which copies are loaded.
"""

from __future__ import annotations

import pathlib
import sys

import torch

from ..errors import EngineLoadedTwiceError

NAMESPACE = "longlive"
ENGINE = pathlib.Path(__file__).resolve().parents[1]  # the longlive_core folder


def custom_op(name: str, mutates_args: tuple[str, ...] = ()):
    """torch.library.custom_op(f"longlive::{name}"), refused where this process has the op already."""
    if _defined(name):
        raise EngineLoadedTwiceError(
            f"the torch op {NAMESPACE}::{name} is already defined: the LongLive engine is loaded twice in this process "
            f"({', '.join(engine_copies()) or 'the other copy is no longer in sys.modules'}). Defining it again would "
            f"free the first copy's op under it. Import the engine once: in ComfyUI as the pack's own `longlive_core`, "
            f"in a script as `longlive_core` (the pack's root package reuses that one when it is loaded later)")
    return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=mutates_args)


def _defined(name: str) -> bool:
    try:
        getattr(getattr(torch.ops, NAMESPACE), name)
    except AttributeError:
        return False
    return True


def engine_copies() -> list[str]:
    """The names under which this folder's engine package is loaded (more than one: a second copy)."""
    return sorted(name for name, module in list(sys.modules.items()) if _file(module) == ENGINE / "__init__.py")


def _file(module) -> pathlib.Path | None:
    path = getattr(module, "__file__", None)
    return pathlib.Path(path).resolve() if path else None
