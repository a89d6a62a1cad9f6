"""HTTP routes (also under /api): GET /longlive/sessions lists sessions, DELETE frees one or all (with their saves),
POST /longlive/sessions/{id}/prompt and .../stop steer a live session (.../typed: a prompt being typed, encoded
ahead), POST .../save writes one to a file."""

from __future__ import annotations

import asyncio
import logging
import time

import comfy.model_management as mm
import torch
from aiohttp import web

from ..longlive_core import (BLENDS, MAX_BLEND_BLOCKS, V2, ConfigError, PostedPrompt, PromptError, RunEndingError,
                             SessionEvictedError, UnknownSessionError, check_text, parse_posted_text, save_video)
from . import viewer
from .state import SESSIONS, check_session_id, forget_save, save_path

MAX_PROMPT_CHARS = 2000

log = logging.getLogger("longlive")


async def list_sessions(_request: web.Request) -> web.Response:
    return web.json_response({"sessions": {key: entry.value.describe() for key, entry in SESSIONS.items()},
                              "gpu": gpu_memory()})


def gpu_memory() -> dict | None:
    """PyTorch's view of the GPU in this server: its allocator, what is allocated and held, the peak allocated since
    the last sampler run began (under cudaMallocAsync a first decode's peak includes cuDNN's probes for workspace,
    which briefly take what is free), and what ComfyUI has loaded of each model (by class). On a machine with several
    GPUs the figures of ComfyUI's device, and each device's under `devices`."""
    if not torch.cuda.is_available():
        return None
    gib = 2**30
    loaded: dict[str, float] = {}
    for entry in mm.current_loaded_models:
        net = getattr(entry.model.model, "net", entry.model.model)  # the loader's Holder: its network's class
        name = type(net).__name__
        loaded[name] = round(loaded.get(name, 0.0) + entry.model_loaded_memory() / gib, 2)

    def figures(device=None) -> dict:
        return {"allocated_gib": round(torch.cuda.memory_allocated(device) / gib, 2),
                "reserved_gib": round(torch.cuda.memory_reserved(device) / gib, 2),
                "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / gib, 2)}

    count = torch.cuda.device_count()
    devices = {"devices": {f"cuda:{i}": figures(i) for i in range(count)}} if count > 1 else {}
    return {"allocator": torch.cuda.get_allocator_backend(), **figures(), "loaded_models_gib": loaded, **devices}


def _session_key(request: web.Request) -> tuple[str, web.Response | None]:
    """The URL's session id as the nodes name sessions (stripped), or an error response (400) saying what is wrong."""
    try:
        return check_session_id(request.match_info["session_id"], "session id"), None
    except ConfigError as err:
        return "", web.json_response({"error": str(err)}, status=400)


async def delete_session(request: web.Request) -> web.Response:
    """Frees a session and its save (off the event loop: closing a session finishes the video files it appends to)."""
    key, error = _session_key(request)
    if error:
        return error
    status, body = await asyncio.to_thread(_delete_one, key)
    return web.json_response(body, status=status)


IN_USE = "is in use by a run or a decode, or being saved; delete it once that is done"


def _delete_one(key: str) -> tuple[int, dict]:
    entry = dict(SESSIONS.items()).get(key)
    if entry is None:
        if key in SESSIONS:  # being made by a sampler run
            return 409, {"error": f"session '{key}' {IN_USE}"}
        evicted, saved = SESSIONS.forget_evicted(key), forget_save(key)  # a save: from before a restart
        return (200, {"deleted": key}) if evicted or saved else (404, {"error": f"no session '{key}'"})
    if entry.value.live:
        return 409, {"error": f"session '{key}' is generating live; stop it first"}
    if entry.value.running:
        return 409, {"error": f"session '{key}' is generating; wait for its run to end, or interrupt it (POST "
                              f"/interrupt: its finished blocks are kept), then delete it"}
    if not _hold_idle(entry.value):
        return 409, {"error": f"session '{key}' {IN_USE}"}
    try:
        if not SESSIONS.delete(key, only=entry.value):  # a run made a new one, or the cap evicted it, meanwhile
            return 409, {"error": f"session '{key}' changed as it was being deleted; list the sessions and try again"}
        forget_save(key)
    finally:
        entry.value.busy.release()
    return 200, {"deleted": key}


def _hold_idle(video) -> bool:
    """Takes the video's `busy` where no save holds it and no run or decode has claimed it (Video.claim: a run from
    the video's opening, before it generates): then none can start on it until the caller releases it."""
    if not video.busy.acquire(blocking=False):
        return False
    if video.claims:
        video.busy.release()
        return False
    return True


async def delete_all(_request: web.Request) -> web.Response:
    """Frees every idle session; those generating keep going (stop or interrupt them first), as do those being saved
    or starting a run (kept_running). Off the event loop, as one."""
    return web.json_response(await asyncio.to_thread(_delete_all))


def _delete_all() -> dict:
    deleted, kept_live, kept_running = 0, [], []
    for key, entry in SESSIONS.items():
        if entry.value.live:
            kept_live.append(key)
        elif entry.value.running or not _hold_idle(entry.value):
            kept_running.append(key)
        else:
            try:
                if SESSIONS.delete(key, only=entry.value):
                    deleted += 1
                    forget_save(key)
            finally:
                entry.value.busy.release()
    return {"deleted": deleted, "kept_live": kept_live, "kept_running": kept_running}


def _live_session(request: web.Request, playing_out: bool = False):
    """The named session, or an error response: 404 unknown, 409 not live (nor, where `playing_out`, sending a live
    run's last frames)."""
    key, error = _session_key(request)
    if error:
        return None, error
    try:
        video = SESSIONS.get(key)
    except (UnknownSessionError, SessionEvictedError) as err:
        return None, web.json_response({"error": str(err)}, status=404)
    if not (video.live or playing_out and video.playing_out):
        return None, web.json_response({"error": f"session '{key}' is not generating live; queue the LongLive "
                                                 f"sampler with live on"}, status=409)
    return video, None


async def post_prompt(request: web.Request) -> web.Response:
    """{"text": "...", "blend_blocks": 1, "blend": "linear"}: the live session switches to the text at its
    next block (with its switch policy), or blends into it over blend_blocks blocks (linear or slerp); LongLive 2.0:
    a text "cut: ..." starts a new shot there."""
    body, text, error = await _text_of(request)
    if error:
        return error
    try:
        text, cut = parse_posted_text(text)
    except PromptError as err:
        return web.json_response({"error": str(err)}, status=400)
    blocks, blend = body.get("blend_blocks", 1), body.get("blend", "linear")
    if type(blocks) is not int or not 1 <= blocks <= MAX_BLEND_BLOCKS or blend not in BLENDS:
        return web.json_response({"error": f"blend_blocks must be an integer from 1 to {MAX_BLEND_BLOCKS} and blend "
                                           f"one of {', '.join(BLENDS)}"}, status=400)
    video, error = _live_session(request)
    if error:
        return error
    try:
        frame = video.post(PostedPrompt(text, time.time(), blocks, blend, cut))
    except RunEndingError as err:
        return web.json_response({"error": str(err)}, status=409)
    except PromptError as err:
        return web.json_response({"error": str(err)}, status=400)
    return web.json_response({"queued": text, "cut": cut, "at_frame": frame}, status=202)


async def post_typed(request: web.Request) -> web.Response:
    """{"text": "..."}: a prompt being typed (the panel sends it as it is typed): the live session encodes it while
    it waits for its viewers, so that posting it to .../prompt switches without waiting for its encoding."""
    _body, text, error = await _text_of(request)
    if error:
        return error
    video, error = _live_session(request)
    if error:
        return error
    try:
        text, cut = parse_posted_text(text)  # a cut's text is encoded with its prefix, as its post will be
    except PromptError:
        return web.json_response({"typed": text}, status=202)  # 'cut:' typed, nothing after it yet
    if not cut or video.family is V2:  # a LongLive 1.x session refuses the cut's post: nothing to encode ahead
        video.type_ahead(text)
    return web.json_response({"typed": text}, status=202)


async def _text_of(request: web.Request) -> tuple[dict, str, web.Response | None]:
    """The JSON body and its stripped "text", or an error response (400) saying what is wrong with them."""
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to parse
        return {}, "", web.json_response({"error": 'the body must be JSON: {"text": "a new prompt"}'}, status=400)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        return {}, "", web.json_response({"error": "text: a non-empty string is required"}, status=400)
    try:
        check_text(text, "text")
    except PromptError as err:
        return {}, "", web.json_response({"error": str(err)}, status=400)
    if len(text) > MAX_PROMPT_CHARS:
        return {}, "", web.json_response({"error": f"text has {len(text)} characters; the limit is "
                                                   f"{MAX_PROMPT_CHARS}"}, status=400)
    return body, text.strip(), None


async def post_save(request: web.Request) -> web.Response:
    """Writes the session to ComfyUI's output folder (longlive_sessions/); after a restart the same session id
    resumes from it. A save lasts until the session is reset or deleted."""
    key, error = _session_key(request)
    if error:
        return error
    try:
        video = SESSIONS.get(key)
    except (UnknownSessionError, SessionEvictedError) as err:
        return web.json_response({"error": str(err)}, status=404)
    path = save_path(key)
    try:
        size = await asyncio.to_thread(save_video, video, path,  # seconds for a full-size cache: off the event loop
                                       lambda: SESSIONS.holds(key, video))
    except ConfigError as err:  # a run generates it
        return web.json_response({"error": str(err)}, status=409)
    except OSError as err:
        return web.json_response({"error": f"could not write {path} ({err.strerror or err}); free disk space or make "
                                           f"ComfyUI's output folder writable"}, status=507)
    return web.json_response({"saved": path, "frames": video.session.frame, "bytes": size})


async def post_stop(request: web.Request) -> web.Response:
    """Ends the live run after its block in flight; while its last frames are being sent, ends that wait."""
    video, error = _live_session(request, playing_out=True)
    if error:
        return error
    video.stop.set()
    return web.json_response({"stopping": video.settings.session_id, "at_frame": video.session.frame})


def register(prompt_handler) -> None:
    """Adds the routes and the queued graphs' handler to the running ComfyUI server (none exists in unit tests)."""
    from server import PromptServer

    server = getattr(PromptServer, "instance", None)
    if server is None:
        log.debug("no PromptServer: LongLive routes not registered")
        return
    server.routes.get("/longlive/sessions")(list_sessions)
    server.routes.delete("/longlive/sessions")(delete_all)
    server.routes.delete("/longlive/sessions/{session_id}")(delete_session)
    server.routes.post("/longlive/sessions/{session_id}/prompt")(post_prompt)
    server.routes.post("/longlive/sessions/{session_id}/typed")(post_typed)
    server.routes.post("/longlive/sessions/{session_id}/stop")(post_stop)
    server.routes.post("/longlive/sessions/{session_id}/save")(post_save)
    server.routes.get("/longlive/sessions/{session_id}/frames")(viewer.watch)
    server.add_on_prompt_handler(prompt_handler)
