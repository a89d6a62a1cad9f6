"""LongLive engine: causal Wan2.1 video generation with a sink + window KV cache (pure PyTorch).

The entry points, in the order a video is made: load_model (io/) in a precision (quant/), make_fast (fast/), then
a StreamSession (runtime/session.py) or a named Video that owns a session between runs (runtime/video.py).
docs/ARCHITECTURE.md says who owns what. This module is the engine's API: the ComfyUI nodes import only from it.
"""

from .errors import BackendUnavailableError, CheckpointError, ConfigError, LongLiveError, PromptError, RunEndingError
from .fast.setup import make_fast
from .io.checkpoint import export_safetensors, load_model
from .model.attention import BACKENDS
from .model.cache import FRAMES_PER_BLOCK
from .model.config import WanConfig
from .model.fused import FastWan
from .model.wan import CausalWan
from .quant.precision import PRECISIONS, Precision, resolve as resolve_precision
from .runtime.prompt_text import FPS, check_starts, check_text, parse_posted_text, parse_schedule_text, parse_start
from .runtime.devices import DEFAULT_DEVICE, SideStream, device_choices, on_device, resolve_device
from .runtime.durable import restore as restore_video, save as save_video
from .runtime.family import FAMILIES, V1, V2, Family, family_of
from .runtime.registry import SessionEvictedError, SessionRegistry, SessionTooLargeError, UnknownSessionError
from .runtime.schedule import DenoisingSchedule, RecordedNoise, SeededNoise
from .runtime.session import (BLENDS, MAX_BLEND_BLOCKS, POSITION_MODES, SWITCH_POLICIES, StreamSession,
                              hashed_embeds, session_bytes)
from .runtime.shots import SCENE_CUT_PREFIX, ShotSession, ShotSettings, is_cut
from .runtime.unipc import UniPCTable, unipc_table
from .runtime.video import BlockDone, PostedPrompt, Prompt, RunHooks, Video, VideoSettings, video_time
from .text.umt5 import GraphedUmt5, Umt5Encoder
from .vae.stream import DecodeStream
from .vae.stream22 import Wan22DecodeStream
from .vae.tiny import TinyStream

__all__ = [
    "BACKENDS", "BLENDS", "BackendUnavailableError", "BlockDone", "CausalWan", "CheckpointError", "ConfigError",
    "DEFAULT_DEVICE", "DecodeStream", "DenoisingSchedule", "FAMILIES", "FPS", "FRAMES_PER_BLOCK", "Family", "FastWan",
    "GraphedUmt5", "LongLiveError", "MAX_BLEND_BLOCKS", "POSITION_MODES", "PRECISIONS", "PostedPrompt", "Precision",
    "Prompt", "PromptError", "RecordedNoise", "RunEndingError", "RunHooks", "SCENE_CUT_PREFIX", "SWITCH_POLICIES",
    "SeededNoise", "SessionEvictedError", "SessionRegistry", "SessionTooLargeError", "ShotSession", "ShotSettings",
    "SideStream", "StreamSession", "TinyStream", "Umt5Encoder", "UniPCTable", "UnknownSessionError", "V1", "V2",
    "Video", "VideoSettings", "Wan22DecodeStream", "WanConfig", "check_starts", "check_text", "device_choices",
    "export_safetensors", "family_of", "hashed_embeds", "is_cut", "load_model", "make_fast", "on_device",
    "parse_posted_text", "parse_schedule_text", "parse_start", "resolve_device", "resolve_precision", "restore_video",
    "save_video", "session_bytes", "unipc_table", "video_time"
]
