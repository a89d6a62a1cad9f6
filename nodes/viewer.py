"""The live viewer's stream: every decoded frame of a session, JPEG-encoded once on a worker thread and sent to each
browser tab watching it (WebSocket GET /longlive/sessions/{id}/frames) at the video's frame rate.

A session's Channel is the one place its frames wait for the viewers. Frames leave it paced at the video's rate
(16 fps; LongLive 2.0: 24), so a client receives a steady stream; a live run asks the channel how much video is
queued (`lead_s`) and stays about one block ahead of it. The frames of a run that is not live leave up to AHEAD_S
before they play, so a viewer holds a small buffer that rides over the host's pause after the run. The first frame
made under a posted prompt does not wait: it goes at once, with the frames queued before it (the panel jumps to
it), so a prompt shows as soon as its first block is decoded. A client that reads slowly gets frames dropped (its
own queue is small) and is told how many; it never slows generation.
Message: 4 bytes big-endian header length, the header as JSON, the JPEG.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import io
import json
import logging
import threading
import time

import torch
from aiohttp import WSMsgType, web
from PIL import Image

from ..longlive_core import FPS, ConfigError, PostedPrompt
from .state import SESSIONS, check_session_id

log = logging.getLogger("longlive")

JPEG_QUALITY = 85
CLIENT_QUEUE = 32  # frames a client may lag behind before its frames are dropped (2 s)
AHEAD_S = 0.75  # how long before it plays a frame of a run that is not live leaves: ComfyUI's prompt worker collects
# garbage after each prompt, holding every thread for 0.3-0.5 s (run 98), while the frames of a run faster than real
# time still wait to be sent (a live run ends once its frames are sent: longlive_core Video._play_out)
MAX_WAITING = 30 * FPS  # frames waiting to be sent (a run faster than real time with nobody pacing it): the oldest go
# one thread JPEG-encodes the frames of every session, in the order they come (no thread a session)
_ENCODER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="longlive-viewer")


class Client:
    """One WebSocket: its own small queue, and the frames it missed."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws, self.queue, self.dropped = ws, asyncio.Queue(maxsize=CLIENT_QUEUE), 0

    def offer(self, header: dict, jpeg: bytes) -> None:
        if self.queue.full():
            self.dropped += 1
            return
        self.queue.put_nowait((header, jpeg))

    async def pump(self) -> None:
        while True:
            header, jpeg = await self.queue.get()
            data = json.dumps({**header, "dropped": self.dropped, "sent_at": time.time()}).encode()
            await self.ws.send_bytes(len(data).to_bytes(4, "big") + data + jpeg)


class Channel:
    """The frames of one session on their way to its viewers."""

    def __init__(self, session_id: str, loop: asyncio.AbstractEventLoop):
        self.session_id, self.loop = session_id, loop
        self.fps = FPS  # the video's frame rate: its family's (the sampler sets it)
        self.clients: set[Client] = set()
        self.waiting: collections.deque = collections.deque()  # (header, jpeg), sent at fps
        self.encoding = 0  # frames handed to the encoder thread, not yet waiting (both threads change it: _lock)
        self._lock = threading.Lock()
        self._pacer: asyncio.Task | None = None
        self._plays_at = 0.0  # when the next frame plays at the viewers (time.perf_counter; 0: at once)
        self._ahead_s = 0.0  # how long before it plays a frame leaves (AHEAD_S for a run that is not live)

    # --- the generating thread ----------------------------------------------------------------------------

    def publish(self, frames: torch.Tensor, first_frame: int, posted: PostedPrompt | None, paced: bool) -> None:
        """frames: uint8 [N, H, W, 3] on the CPU, the video's pixel frames from `first_frame`. Encoded only while
        someone watches or a live run is paced by the channel."""
        if not (self.clients or paced):
            return
        self._ahead_s = 0.0 if paced else AHEAD_S
        with self._lock:
            self.encoding += frames.shape[0]
        _ENCODER.submit(self._encode, frames, first_frame, posted)

    def lead_s(self) -> float:
        """Seconds of video made and not yet sent."""
        return (self.encoding + len(self.waiting)) / self.fps

    # --- the encoder thread --------------------------------------------------------------------------------

    def _encode(self, frames: torch.Tensor, first: int, posted: PostedPrompt | None) -> None:
        for i, frame in enumerate(frames.numpy()):
            out = io.BytesIO()
            Image.fromarray(frame).save(out, "JPEG", quality=JPEG_QUALITY)
            header = {"frame": first + i, "made_at": time.time(), "fps": self.fps,
                      "posted_at": posted.posted_at if posted is not None and i == 0 else None,
                      "prompt": posted.text[:200] if posted is not None and i == 0 else None}
            self.loop.call_soon_threadsafe(self._arrive, header, out.getvalue())

    # --- the event loop ------------------------------------------------------------------------------------

    def _arrive(self, header: dict, jpeg: bytes) -> None:
        with self._lock:
            self.encoding -= 1
        self.waiting.append((header, jpeg))
        while len(self.waiting) > MAX_WAITING:  # every client misses it: each is told
            self.waiting.popleft()
            for client in self.clients:
                client.dropped += 1
        if header["posted_at"] is not None:  # a new prompt's first frame: everything before it goes now, and it plays
            while self.waiting:
                self._send(*self.waiting.popleft())
            self._plays_at = time.perf_counter() + 1 / self.fps
        if self._pacer is None or self._pacer.done():
            self._pacer = self.loop.create_task(self._pace())

    async def _pace(self) -> None:
        """Sends the waiting frames one every 1/fps seconds, each `_ahead_s` before it plays, to every client. The
        clock is fixed (no drift): after a pause the frames it held go at once (up to `_ahead_s` of them, or one)."""
        while self.waiting:
            self._send(*self.waiting.popleft())
            self._plays_at = max(self._plays_at, time.perf_counter()) + 1 / self.fps  # the one sent played no sooner
            await asyncio.sleep(max(0.0, self._plays_at - self._ahead_s - time.perf_counter()))

    def _send(self, header: dict, jpeg: bytes) -> None:
        for client in list(self.clients):
            client.offer(header, jpeg)

    async def serve(self, request: web.Request, client: Client) -> web.WebSocketResponse:
        """Sends the frames to a client that `channel` added (it is a viewer from then on: the channel is not idle)."""
        pump = None
        try:
            await client.ws.prepare(request)
            await client.ws.send_str(json.dumps({"session": self.session_id, "fps": self.fps}))
            pump = asyncio.create_task(client.pump())
            async for message in client.ws:  # the client sends nothing; this ends when it goes
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            self.clients.discard(client)
            if pump is not None:
                pump.cancel()
            _prune()
        return client.ws

    @property
    def idle(self) -> bool:
        """No viewer, and no frame on its way to one."""
        return not (self.clients or self.waiting or self.encoding)


CHANNELS: dict[str, Channel] = {}
_CHANNELS_LOCK = threading.Lock()  # the sampler's thread and the event loop both make channels


def channel(session_id: str, viewer: Client | None = None) -> Channel | None:
    """The session's channel, made on first use (on ComfyUI's event loop), with `viewer` added to its clients (under
    the lock that pruning takes: a new viewer's channel is never pruned); None outside a server."""
    with _CHANNELS_LOCK:
        if session_id not in CHANNELS:
            from server import PromptServer

            server = getattr(PromptServer, "instance", None)
            if server is None:
                return None
            _prune_locked()
            CHANNELS[session_id] = Channel(session_id, server.loop)
        if viewer is not None:
            CHANNELS[session_id].clients.add(viewer)
        return CHANNELS[session_id]


def _prune() -> None:
    with _CHANNELS_LOCK:
        _prune_locked()


def _prune_locked() -> None:
    """Forgets the idle channels of ids that name no session (a viewer that watched an id and left, a deleted or
    evicted session): CHANNELS holds the registry's sessions and the ids being watched, not every id ever watched.
    A session's runs publish to its channel, which stays while the registry holds the session."""
    for key in [k for k, c in CHANNELS.items() if c.idle and k not in SESSIONS]:
        del CHANNELS[key]


async def watch(request: web.Request) -> web.StreamResponse:
    """GET /longlive/sessions/{id}/frames (WebSocket): the session's frames as they are made, from now on."""
    try:
        key = check_session_id(request.match_info["session_id"], "session id")
    except ConfigError as err:
        return web.json_response({"error": str(err)}, status=400)
    if not key:
        return web.json_response({"error": "session id: the sampler's session_id is needed"}, status=400)
    client = Client(web.WebSocketResponse(heartbeat=30))
    return await channel(key, client).serve(request, client)
