"""LongLive for ComfyUI. When ComfyUI's custom-node loader imports this folder, it loads the nodes; elsewhere only
longlive_core is used.

ComfyUI imports this folder as a package: the nodes reach the engine as `..longlive_core` (the engine's public API),
so nothing is added to sys.path (where the pack's `nodes` would shadow ComfyUI's own `nodes` module). Outside
ComfyUI the folder can still be imported as a package (pytest imports a test tree's `__init__.py` so): then no node
and no ComfyUI module is loaded. The engine is loaded once per process (kernels/library.py says why): where a script
has imported `longlive_core` from this folder already, the nodes use that copy.
"""

import pathlib
import sys

WEB_DIRECTORY = "./web"


def _loaded_by_comfyui() -> bool:
    """Whether ComfyUI's custom-node loader is importing this package: its `nodes` module is loaded and has it."""
    return callable(getattr(sys.modules.get("nodes"), "load_custom_node", None))


def _share_the_loaded_engine() -> None:
    """Makes `<this package>.longlive_core` the `longlive_core` already imported from this folder, if there is one."""
    engine = sys.modules.get("longlive_core")
    here = pathlib.Path(__file__).resolve().parent / "longlive_core" / "__init__.py"
    if engine is not None and pathlib.Path(engine.__file__).resolve() == here:
        sys.modules.setdefault(f"{__name__}.longlive_core", engine)


if _loaded_by_comfyui():
    _share_the_loaded_engine()
    from .nodes import comfy_entrypoint
else:
    comfy_entrypoint = None

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
