"""LongLive for ComfyUI. Inside ComfyUI this loads the nodes; elsewhere only longlive_core is used."""

import os
import sys

WEB_DIRECTORY = "./web"

# the engine is imported as the top-level package `longlive_core`, inside ComfyUI as in tests
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

try:
    import comfy_api.latest  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    comfy_entrypoint = None
else:
    from .nodes import comfy_entrypoint

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
