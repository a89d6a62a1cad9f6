"""Server-side state of the pack: the loaded-model wrapper, the prompt-schedule value and the registry of named
videos (module-level objects live as long as the ComfyUI server; V3 node classes hold no state)."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
import os
import re
import threading
import weakref
from typing import Any, Callable

import torch
from comfy_api.latest import io

from ..longlive_core import (DEFAULT_DEVICE, V1, ConfigError, Family, Prompt, SessionRegistry, device_choices,
                             resolve_device)

log = logging.getLogger("longlive")

UMT5_DIM = 4096
DEFAULT_CAP_GB = 24.0
MAX_SESSION_ID = 128


def session_cap(value: str | None) -> int:
    """Bytes of the session cap from LONGLIVE_SESSION_CAP_GB; a value that is not a positive, finite number of GiB
    is reported and the default used (the nodes must load whatever the environment says)."""
    if value is None:
        return int(DEFAULT_CAP_GB * 2**30)
    try:
        gib = float(value)
    except ValueError:
        gib = math.nan
    if not (math.isfinite(gib) and 0 < gib <= 2**20):
        log.error("LONGLIVE_SESSION_CAP_GB=%r is not a number of GiB between 0 and 1048576; using %g (unset it or "
                  "write e.g. 24)", value, DEFAULT_CAP_GB)
        gib = DEFAULT_CAP_GB
    return int(gib * 2**30)


def check_session_id(session_id: str, field: str = "session_id") -> str:
    """A session id as the nodes and routes take it: stripped, at most 128 printable characters."""
    key = session_id.strip()
    if len(key) > MAX_SESSION_ID or not key.isprintable():
        raise ConfigError(f"{field} must be at most {MAX_SESSION_ID} printable characters (got {len(key)} characters"
                          f"{'' if key.isprintable() else ', some of them control characters'}); use a short name")
    return key


def save_path(session_id: str) -> str:
    """Where a session's save goes: ComfyUI's output folder, longlive_sessions/<id as a file name>-<hash>.safetensors
    (the hash keeps ids apart that differ only in characters a file name cannot hold)."""
    import folder_paths

    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", session_id)[:40]
    digest = hashlib.sha256(session_id.encode()).hexdigest()[:12]
    return os.path.join(folder_paths.get_output_directory(), "longlive_sessions", f"{slug}-{digest}.safetensors")


def claim_session(key: str, make: Callable[[], Any] | None = None) -> tuple[Any, bool]:
    """The named video claimed for a run or a decode (Video.claim: a DELETE or a save then refuses it), made where
    there is none and `make` is given (else UnknownSessionError). One that a DELETE freed as it was claimed is left
    for the registry's next. Returns (video, created)."""
    while True:
        video, created = (SESSIONS.get(key), False) if make is None else \
            SESSIONS.get_or_create(key, make, lambda v: v.nbytes)
        video.claim()
        if SESSIONS.holds(key, video):
            return video, created
        video.unclaim()


def forget_save(session_id: str) -> bool:
    """A save lasts until its session is reset or deleted: then the session's video is gone for good. Returns
    whether there was one."""
    path = save_path(session_id)
    try:
        os.remove(path)
    except FileNotFoundError:  # none, or another DELETE removed it meanwhile
        return False
    log.info("LongLive session '%s': its save %s was removed with it", session_id, path)
    return True


def free_session(key: str) -> bool:
    """Frees a session and its save for a reset, once a save under way is done (it holds the video's `busy`: freed
    meanwhile, its file would bring the video back). Returns whether a session was held (or evicted)."""
    entry = dict(SESSIONS.items()).get(key)
    if entry is None:
        freed = SESSIONS.forget_evicted(key)
    else:
        with entry.value.busy:
            freed = SESSIONS.delete(key, only=entry.value)
    forget_save(key)
    return freed


def first_error(*checks: bool | str) -> bool | str:
    """For a node's validate_inputs: True, or the first failed check's message (a check is True or a message)."""
    return next((c for c in checks if c is not True), True)


def device_input(name: str, tooltip: str):
    """A device choice: ComfyUI's device, or a CUDA device of this machine."""
    return io.Combo.Input(name, options=device_choices(), default=DEFAULT_DEVICE, optional=True, tooltip=tooltip)


def device_error(choice: str | None, field: str) -> bool | str:
    """A device choice as a validate_inputs check: True, or why it names no device of this machine."""
    try:
        resolve_device(choice, torch.device("cpu"), field)
    except ConfigError as exc:
        return str(exc)
    return True


@dataclasses.dataclass
class LongLiveModel:
    """What the loader hands to the sampler (type LONGLIVE_MODEL)."""

    model: Any  # longlive_core.CausalWan, or its FastWan (its precision: model.precision)
    fast: bool
    signature: tuple = ()  # what the loader was asked for: the same signature means the same weights
    patcher: Any = None  # comfy ModelPatcher, so ComfyUI can unload us when memory is short
    videos: weakref.WeakSet = dataclasses.field(default_factory=weakref.WeakSet)  # the videos made with it
    spare: Any = None  # the last unnamed video (a Video): the next unnamed run of its size starts it over
    weights_at: tuple | None = None

    @property
    def synthetic(self) -> bool:
        """Models whose text width is not umt5-xxl's can only be driven by hashed test embeddings."""
        return self.model.cfg.text_dim != UMT5_DIM

    def refresh_graphs(self) -> None:
        """CUDA graphs hold weight addresses: once ComfyUI has moved the weights (a full or partial unload,
        then a load), every video's graphs are dropped and captured again. (torchao's int8 tensors
        report address 0; the biases and norms beside them still tell.)"""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        away = sum(t.device != self.model.device for t in tensors)
        if away:
            raise ConfigError(f"ComfyUI's model management left {away} of LongLive's {len(tensors)} weight tensors off "
                              f"{self.model.device}; LongLive runs only fully loaded (free memory, or restart ComfyUI "
                              f"without --novram)")
        where = tuple(t.data_ptr() for t in tensors)
        if self.weights_at is not None and where != self.weights_at:
            log.info("LongLive weights moved: dropping %d sessions' CUDA graphs", len(self.videos))
            for video in list(self.videos):
                video.drop_graphs()
        self.weights_at = where


Encoder = Callable[[str], torch.Tensor]


@dataclasses.dataclass
class PromptList:
    """LONGLIVE_SCHEDULE: the prompts (starts as LongLive 1.x reads them), the text encoder that live prompt changes
    will use, and the schedule read for another model family (its block and frame rate give other starts)."""

    prompts: list[Prompt]
    encoder: Encoder | None = None
    read_for: Callable[[Family], list[Prompt]] | None = None

    def for_family(self, family: Family) -> list[Prompt]:
        return self.prompts if family is V1 or self.read_for is None else self.read_for(family)


class EmbeddingCache:
    """Text embeddings per encoder: encoding the same prompt twice costs nothing."""

    def __init__(self, size: int = 64):
        self.size = size
        self._by_encoder: "weakref.WeakKeyDictionary[Any, collections.OrderedDict]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, owner: Any, text: str, encode: Encoder) -> torch.Tensor:
        with self._lock:
            cache = self._by_encoder.setdefault(owner, collections.OrderedDict())
            if text in cache:
                cache.move_to_end(text)
                return cache[text]
        embeds = encode(text)
        with self._lock:
            cache[text] = embeds
            while len(cache) > self.size:
                cache.popitem(last=False)
        return embeds


EMBEDDINGS = EmbeddingCache()
SESSIONS = SessionRegistry(session_cap(os.environ.get("LONGLIVE_SESSION_CAP_GB")))  # session id -> Video
