"""The ComfyUI side of LongLive: thin V3 nodes over longlive_core."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from . import routes
from .decode import SessionReset, VAEDecode
from .loader import ModelLoader
from .sampler import StreamingSampler
from .schedule import ConditioningSchedule, PromptSchedule


class LongLiveExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ModelLoader, PromptSchedule, ConditioningSchedule, StreamingSampler, VAEDecode, SessionReset]


async def comfy_entrypoint() -> LongLiveExtension:
    """Called once by ComfyUI when it loads the pack: the routes are registered here, not at import."""
    routes.register()
    return LongLiveExtension()
