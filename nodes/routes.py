"""HTTP routes: GET /longlive/sessions lists sessions, DELETE frees one or all (also under /api)."""

from __future__ import annotations

import logging

from aiohttp import web

from .state import SESSIONS

log = logging.getLogger("longlive")


async def list_sessions(_request: web.Request) -> web.Response:
    return web.json_response({"sessions": {key: entry.value.describe() for key, entry in SESSIONS.items()}})


async def delete_session(request: web.Request) -> web.Response:
    key = request.match_info["session_id"]
    if not SESSIONS.delete(key):
        return web.json_response({"error": f"no session '{key}'"}, status=404)
    return web.json_response({"deleted": key})


async def delete_all(_request: web.Request) -> web.Response:
    count = len(SESSIONS.items())
    SESSIONS.clear()
    return web.json_response({"deleted": count})


def register() -> None:
    """Adds the routes to the running ComfyUI server (none exists in unit tests)."""
    from server import PromptServer

    server = getattr(PromptServer, "instance", None)
    if server is None:
        log.debug("no PromptServer: LongLive routes not registered")
        return
    server.routes.get("/longlive/sessions")(list_sessions)
    server.routes.delete("/longlive/sessions")(delete_all)
    server.routes.delete("/longlive/sessions/{session_id}")(delete_session)
