"""LongLive for ComfyUI. Inside ComfyUI this loads the nodes; elsewhere only longlive_core is used.

ComfyUI imports this folder as a package: the nodes reach the engine as `..longlive_core` (the engine's public API),
so nothing is added to sys.path (where the pack's `nodes` would shadow ComfyUI's own `nodes` module).
"""

WEB_DIRECTORY = "./web"

try:
    import comfy_api.latest  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    comfy_entrypoint = None
else:
    from .nodes import comfy_entrypoint

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
