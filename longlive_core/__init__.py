"""LongLive engine: causal Wan2.1 video generation with a sink + window KV cache (pure PyTorch)."""

from .checkpoint import export_safetensors, load_model
from .config import WanConfig
from .errors import BackendUnavailableError, CheckpointError, ConfigError, LongLiveError, PromptError
from .model import CausalWan
from .schedule import RecordedNoise, Schedule, SeededNoise
from .session import SWITCH_POLICIES, StreamSession

__all__ = [
    "BackendUnavailableError", "CausalWan", "CheckpointError", "ConfigError", "LongLiveError", "PromptError",
    "RecordedNoise", "SWITCH_POLICIES", "Schedule", "SeededNoise", "StreamSession", "WanConfig",
    "export_safetensors", "load_model",
]
