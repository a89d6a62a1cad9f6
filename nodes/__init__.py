"""The ComfyUI side of LongLive: thin V3 nodes over longlive_core."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from . import boolean_guard, routes
from .decode import SessionReset, VAEDecode
from .loader import ModelLoader
from .sampler import StreamingSampler
from .save import SaveVideo
from .schedule import ConditioningSchedule, PromptSchedule


NODES = [ModelLoader, PromptSchedule, ConditioningSchedule, StreamingSampler, SaveVideo, VAEDecode, SessionReset]


class LongLiveExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> LongLiveExtension:
    """Called once by ComfyUI when it loads the pack: the routes and the prompt handler are registered here, not at
    import."""
    routes.register(boolean_guard.prompt_handler(NODES))
    return LongLiveExtension()
