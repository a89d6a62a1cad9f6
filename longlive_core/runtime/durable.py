"""A named video in a safetensors file: everything its next block and its next decode depend on, so that a video
saved, then restored after a restart, continues exactly as if the server had kept it.

The file holds tensors only (no pickle) and one JSON metadata entry; it is read with the rules model files are read
with (told apart by content, shapes checked against the session it is restored into, values finite).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import torch

from ..errors import ConfigError
from ..vae.stream import DecodeStream
from ..vae.stream22 import Wan22DecodeStream
from ..vae.tiny import TinyStream
from .video import Video, VideoSettings, key_of

VERSION = 2  # 2: a StreamSession's owed clean pass is a field (format 1 kept a tensor for it); both are read
READ_VERSIONS = (1, 2)
META_KEY = "longlive_video"
_LISTS = ("undelivered", "undelivered_images", "delivered")


def save(video: Video, path: str, held: Callable[[], bool] | None = None) -> int:
    """Writes the video to `path` (atomically: a file beside it, then renamed), while no run generates it or has
    claimed it (Video.claim: a host's run or decode; a run that starts meanwhile waits), and, where `held` is given,
    while it says the host still holds the video (a video freed before the save began is not written back). Returns
    the bytes written."""
    name = video.settings.session_id
    if not video.busy.acquire(blocking=False):
        raise ConfigError(f"session '{name}' is generating; save it when its run has ended")
    try:
        if video.claims:
            raise ConfigError(f"session '{name}' is in use by a run or a decode; save it when that has ended")
        if held is not None and not held():
            raise ConfigError(f"session '{name}' was deleted or reset as the save began; nothing was written")
        return _save(video, path)
    finally:
        video.busy.release()


def _save(video: Video, path: str) -> int:
    from safetensors.torch import save_file

    tensors, session = video.session.export_state()
    tensors = {f"session.{k}": v for k, v in tensors.items()}
    for name in _LISTS:
        tensors.update({f"{name}.{i}": x for i, x in enumerate(getattr(video, name))})
    decoders = []
    for n, (key, stream) in enumerate(video.decoders.items()):
        parts, fields = stream.export_state()
        tensors.update({f"decoder.{n}.{k}": v for k, v in parts.items()})
        decoders.append({"key": key, **fields})
    meta = {"version": VERSION, "settings": dataclasses.asdict(video.settings), "session": session,
            "prompt_key": video.prompt_key, "upcoming": {str(k): key_of(v) for k, v in video.upcoming.items()},
            "switches": video.switches, "decoders": decoders, **{name: len(getattr(video, name)) for name in _LISTS}}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial"
    save_file(tensors, partial, metadata={META_KEY: json.dumps(meta)})
    os.replace(partial, path)
    return os.path.getsize(path)


def restore(video: Video, path: str) -> None:
    """Reads a saved video into a new Video made with the same settings (its caches allocated, its graphs captured).
    Raises ConfigError naming the file and the fix where the file is not such a save or does not fit."""
    tensors, meta = _read(path)
    saved = VideoSettings(**{**meta["settings"], "model": tuple(meta["settings"]["model"])})
    changed = saved.changes(video.settings)
    if changed:
        raise ConfigError(f"{path}: saved with other settings ({', '.join(changed)}); run the session with the "
                          f"settings it was saved with, or reset it to start a new video")
    session = {k.removeprefix("session."): v for k, v in tensors.items() if k.startswith("session.")}
    _check_shapes(path, session, video.session.export_state()[0])
    video.session.import_state(session, meta["session"])
    video.in_force, video.switches = meta["prompt_key"], meta["switches"]
    video.upcoming = {int(k): v for k, v in meta["upcoming"].items()}
    for name in _LISTS:
        setattr(video, name, [tensors[f"{name}.{i}"] for i in range(meta[name])])
    try:
        video.decoders = {d["key"]: _stream(d, n, tensors, video.session.model.device)
                          for n, d in enumerate(meta["decoders"])}
    except ValueError as exc:
        raise ConfigError(f"{path}: its decoder's cache does not fit ({exc}); delete it, or reset the session to start "
                          f"a new video") from exc


def _read(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from ..io.checkpoint import file_format

    fix = "delete it, or reset the session to start a new video"
    if file_format(path) != "safetensors":
        raise ConfigError(f"{path}: not a saved LongLive session (not a safetensors file); {fix}")
    try:
        with safe_open(path, "pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "null"))
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable saved session ({exc}); {fix}") from exc
    if not isinstance(meta, dict) or meta.get("version") not in READ_VERSIONS:
        raise ConfigError(f"{path}: not a saved LongLive session of format {' or '.join(map(str, READ_VERSIONS))}; "
                          f"{fix}")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not k.endswith("log_pad")
           and not torch.isfinite(v.float()).all()]
    if bad:
        raise ConfigError(f"{path}: {bad[0]} holds NaN or infinite values; the file is damaged: {fix}")
    return tensors, meta


def _check_shapes(path: str, saved: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> None:
    for name, tensor in fresh.items():
        if name.startswith(("cache.", "text.")) and (saved.get(name) is None or saved[name].shape != tensor.shape
                                                     or saved[name].dtype != tensor.dtype):
            got = "missing" if saved.get(name) is None else f"{tuple(saved[name].shape)} {saved[name].dtype}"
            raise ConfigError(f"{path}: {name} is {got}, the session holds {tuple(tensor.shape)} {tensor.dtype} (another "
                              f"model or precision); load the model it was saved with, or reset the session")


def _stream(fields: dict, n: int, tensors: dict[str, torch.Tensor], device: torch.device):
    prefix = f"decoder.{n}."
    parts = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    kinds = {"wan": lambda: DecodeStream(len(fields["entries"])), "tiny": TinyStream,
             "wan2.2": lambda: Wan22DecodeStream(len(fields["entries"]))}
    stream = kinds[fields["kind"]]()
    stream.import_state(parts, fields, device)
    return stream
