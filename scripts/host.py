"""A real ComfyUI server with this pack installed, for the main job and the tests.

    with ComfyHost(base_dir) as host:
        history = host.run(api_graph)

The server is the ComfyUI 0.3.75 tree that scripts/setup_env.sh installs into the venv; the pack
is linked into BASE/custom_nodes; models come from BASE/models (see make_tiny_models).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

REPO = pathlib.Path(__file__).resolve().parents[1]
VENV = pathlib.Path(os.environ.get("LONGLIVE_VENV", REPO / ".venv"))
log = logging.getLogger("longlive.host")


def comfy_dir() -> pathlib.Path:
    """The ComfyUI tree: $COMFYUI_DIR, else the one scripts/setup_env.sh installed into the venv."""
    if os.environ.get("COMFYUI_DIR"):
        return pathlib.Path(os.environ["COMFYUI_DIR"])
    marker = VENV / "comfyui_dir.txt"
    if not marker.exists():
        raise FileNotFoundError(f"{marker} is missing: run scripts/setup_env.sh first (or set COMFYUI_DIR)")
    return pathlib.Path(marker.read_text().strip())


def python() -> str:
    """The Python that runs ComfyUI: the venv's, else this one (a machine with ComfyUI's packages installed)."""
    venv_python = VENV / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def child_env() -> dict:
    """The environment of a helper process that imports ComfyUI's modules and the engine (this repository)."""
    paths = [str(comfy_dir()), str(REPO), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyHost:
    """Starts `main.py` on 127.0.0.1 with BASE as its base directory (`--cpu` unless cpu=False); stops it on exit.
    With frontend=True it serves the real web UI (comfyui-frontend-package), for browser tests."""

    def __init__(self, base: pathlib.Path, extra_args=(), port: int | None = None, frontend: bool = False,
                 cpu: bool = True):
        self.base, self.extra_args, self.frontend, self.cpu = pathlib.Path(base), list(extra_args), frontend, cpu
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ComfyHost":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 180) -> None:
        for sub in ("custom_nodes", "models", "output", "input", "empty_frontend"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        example = comfy_dir() / "input" / "example.png"  # a ComfyUI install's input folder holds it
        if example.exists() and not (self.base / "input" / example.name).exists():
            shutil.copy(example, self.base / "input" / example.name)
        link = self.base / "custom_nodes" / "ComfyUI-LongLive"
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        page = [] if self.frontend else ["--front-end-root", str(self.base / "empty_frontend")]
        cmd = [python(), "main.py", *(["--cpu"] if self.cpu else []), "--listen", "127.0.0.1", "--port", str(self.port),
               *page, "--disable-api-nodes", "--base-directory", str(self.base), "--database-url",
               "sqlite:///:memory:", *self.extra_args]
        self.log_path = self.base / "comfy.log"
        self.proc = subprocess.Popen(cmd, cwd=comfy_dir(), stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}; log:\n{self.log()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s; log:\n{self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        """Whether the server process runs and answers."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            self.get("/system_stats")
            return True
        except (urllib.error.URLError, ConnectionError, RuntimeError, TimeoutError):
            return False

    # --- HTTP ------------------------------------------------------------------------------------

    def request(self, method: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def get(self, path: str) -> dict:
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {body}")
        return body

    def queue(self, graph: dict) -> str:
        status, body = self.request("POST", "/prompt", {"prompt": graph, "client_id": self.client_id})
        if status != 200 or body.get("node_errors"):
            raise RuntimeError(f"POST /prompt -> {status}: {json.dumps(body)[:2000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 900) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, graph: dict, timeout: float = 900) -> dict:
        return self.wait(self.queue(graph), timeout)

    def run_listening(self, graph: dict, timeout: float = 300) -> tuple[dict, list]:
        """Queues a graph while listening on /ws; returns (history entry, [(event, data)]) up to the prompt's end.
        Binary messages (previews) come as ("binary", bytes)."""
        events = Events(self.url, self.client_id)
        try:
            prompt_id = self.queue(graph)
            entry = self.wait(prompt_id, timeout)
            deadline = time.time() + 30  # the end message may trail the history entry
            while not events.ended(prompt_id) and time.time() < deadline:
                time.sleep(0.05)
        finally:
            events.stop.set()
        return entry, [("binary", d["data"]) if kind == "preview" else (kind, d) for _, kind, d in events.items]


class _Listener:
    """A WebSocket client on a thread of its own (connected when made); `take(message)` keeps what it wants."""

    def __init__(self, ws_url: str):
        self.ws_url = ws_url
        self.stop, self.connected = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)
        self.thread.start()
        if not self.connected.wait(30):
            raise TimeoutError(f"no WebSocket connection to {ws_url} within 30 s")

    async def _listen(self) -> None:
        import aiohttp

        # no heartbeat: a server busy compiling on a CPU may answer a ping after its 15 s, and the client would close
        # the socket and miss every later message; a server that dies closes it anyway
        async with aiohttp.ClientSession() as http, http.ws_connect(self.ws_url) as ws:
            self.connected.set()
            while not self.stop.is_set():
                try:
                    msg = await ws.receive(timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self.take(msg.data)
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                    return

    def take(self, data: str | bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


class Events(_Listener):
    """Every WebSocket message of a server, timestamped."""

    def __init__(self, url: str, client_id: str):
        self.url, self.client_id, self.items = url, client_id, []
        super().__init__(url.replace("http", "ws", 1) + f"/ws?clientId={client_id}")

    def take(self, data: str | bytes) -> None:
        if isinstance(data, str):
            message = json.loads(data)
            self.items.append((time.time(), message["type"], message.get("data", {})))
        else:  # a preview image
            self.items.append((time.time(), "preview", {"data": data}))

    def since(self, t0: float, kind: str | None = None) -> list[tuple[float, str, dict]]:
        return [e for e in list(self.items) if e[0] >= t0 and (kind is None or e[1] == kind)]

    def ended(self, prompt_id: str) -> bool:
        """Whether the server said the prompt's last node ran (`executing` with no node)."""
        return self.end_time(prompt_id) is not None

    def end_time(self, prompt_id: str, wait: float = 0.0) -> float | None:
        """When that message came (waiting up to `wait` s for it), or None."""
        deadline = time.time() + wait
        while True:
            for t, kind, d in list(self.items):
                if kind == "executing" and d.get("node") is None and d.get("prompt_id") == prompt_id:
                    return t
            if time.time() >= deadline:
                return None
            time.sleep(0.02)


class FrameWatcher(_Listener):
    """A viewer of a session's frames (WebSocket /longlive/sessions/{id}/frames), as the LongLive panel is: records
    each frame's arrival time and header."""

    def __init__(self, url: str, session_id: str):
        self.frames: list[tuple[float, dict]] = []  # (arrival time.time(), header)
        super().__init__(url.replace("http", "ws", 1) + f"/longlive/sessions/{session_id}/frames")

    def take(self, data: str | bytes) -> None:
        if isinstance(data, bytes):  # a frame (the text message first says which session and rate)
            length = int.from_bytes(data[:4], "big")
            self.frames.append((time.time(), json.loads(data[4:4 + length])))


def error_of(entry: dict) -> dict | None:
    """The execution_error message of a history entry, if the run failed."""
    for name, data in entry.get("status", {}).get("messages", []):
        if name in ("execution_error", "execution_interrupted"):
            return {"event": name, **data}
    return None


def output_files(entry: dict) -> list[dict]:
    files = []
    for out in entry.get("outputs", {}).values():
        files += out.get("images", [])
    return files


def make_tiny_models(models: pathlib.Path, v2: bool = False) -> dict:
    """Tiny random-weight files in the real formats: LongLive .pt + lora.pt (longlive_core.tools.synthetic), a Wan 2.1
    VAE; with `v2` also a tiny LongLive 2.0 .pt and the Wan 2.2 VAE (full width: 1.4 GB). Written by child
    processes, so that the caller imports neither torch nor comfy."""
    paths = {"model": models / "diffusion_models" / "longlive_tiny_random.pt",
             "lora": models / "loras" / "longlive_tiny_random_lora.pt",
             "vae": models / "vae" / "wan_2.1_vae_tiny_random.safetensors"}
    if v2:
        paths.update(model_v2=models / "diffusion_models" / "longlive2_tiny_random.pt",
                     vae_v2=models / "vae" / "wan2.2_vae_random.safetensors")
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([python(), "-m", "longlive_core.tools.synthetic", str(paths["model"]), str(paths["lora"]),
                    *(["--v2", str(paths["model_v2"])] if v2 else [])], check=True, cwd=REPO)
    write_tiny_wan_vae(paths["vae"])
    if v2:
        write_tiny_wan_vae(paths["vae_v2"], "wan2.2")
    return {k: p.name for k, p in paths.items()}


def write_tiny_wan_vae(path: pathlib.Path, dim: int | str = 4) -> None:
    """A random Wan 2.1 VAE of width `dim` (or `dim="wan2.2"`: the full-width Wan 2.2 VAE), built from ComfyUI's own
    classes (in a child process, so that importing comfy does not touch the caller)."""
    subprocess.run([python(), str(REPO / "scripts" / "tiny_vae.py"), str(path), str(dim)], check=True,
                   cwd=comfy_dir(), env=child_env())
