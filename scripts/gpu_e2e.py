"""The GPU end-to-end harness: the shipped workflows through a real ComfyUI server on a CUDA GPU, over HTTP only.

    python scripts/gpu_e2e.py [--groups NAME,...] [--runs NAME,...] [--work DIR] [--out DIR] [--extra-node FILE]
    python scripts/gpu_e2e.py --tiny               # the same runs on the CPU with tiny models (to work on it)

It writes full-size random-weight files of every model the workflows load (scripts/full_models.py; kept in
WORK/models between runs), starts a real ComfyUI for each group of runs (this Python, the ComfyUI tree of
$COMFYUI_DIR or the venv, this pack in its custom_nodes), queues the workflows as shipped or changed as a run
says, and checks each run: no error, the frames in the saved video, the session list, the server still answering.
It prints a table of wall time per run (from the POST to the server's WebSocket message that the prompt ended, as
a page sees it) and per stage (model load, compile and capture, generation, decode, video save), the pixel frames
per second a user gets (frames written / wall time) and the peak GPU memory (nvidia-smi), and writes everything to
OUT/e2e.json ($OUT where set). The first run of each shipped workflow is the first prompt of a fresh server.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

from host import REPO, ComfyHost, Events, FrameWatcher, child_env, comfy_dir, make_tiny_models, python
from run_main import tiny_graph

log = logging.getLogger("longlive.e2e")
FRAMES_PER_BLOCK = 3
FPS = 16  # LongLive 1.x's frame rate: what the panel plays at
BLOCK_S = 4 * FRAMES_PER_BLOCK / FPS  # a live block's time at the viewer (a live run keeps that pace)
# a live prompt's text reaches the server as typed (the panel sends it after a 150 ms pause in typing) this long before
# Enter posts it: a user's pause before Enter (the post pays for what the server has not encoded by then)
TYPED_BEFORE_ENTER_S = 0.5
FIRST_BLOCK_FRAMES = (FRAMES_PER_BLOCK, 8)  # a new video's first block event: frame 3 (LongLive 1.x) or 8 (2.0)
V2_GROUP = "longlive-2"  # its groups (longlive-2, longlive-2-fp8) need LongLive 2.0's files (10 GB), written only
# when one of them runs
PROMPTS = ("a corgi runs along a sunny beach, waves rolling in", "the corgi digs in the sand as seagulls land nearby",
           "sunset: the corgi sits and watches the waves, the sky turning orange")
FAULT_NODE = '''"""Written by scripts/gpu_e2e.py: makes LongLive's fused norm kernel raise inside every CUDA graph capture. The
pack's engine is a submodule of the pack's own package: it is patched when a prompt is queued (all packs loaded)."""
import sys

import torch
from server import PromptServer


def _failing(norm):
    def failing_norm(*args, **kwargs):
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("capture failure injected by the GPU end-to-end harness")
        return norm(*args, **kwargs)
    failing_norm.injected = True
    return failing_norm


def _patch(prompt):
    for name, module in list(sys.modules.items()):
        if name.endswith("longlive_core.kernels.ops") and not getattr(module._norm, "injected", False):
            module._norm = _failing(module._norm)
    return prompt


PromptServer.instance.add_on_prompt_handler(_patch)
NODE_CLASS_MAPPINGS = {}
'''


def add_node(base: pathlib.Path, name: str, source: str) -> None:
    """A custom node package of one __init__.py in a server's folder."""
    node = base / "custom_nodes" / name / "__init__.py"
    node.parent.mkdir(parents=True)
    node.write_text(source)


# --- What a run measured ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    group: str
    name: str
    ok: bool = False
    error: str = ""
    wall_s: float = 0.0
    stages: dict = dataclasses.field(default_factory=dict)  # stage -> seconds
    frames: int = 0
    expected_frames: int | None = None
    blocks: int = 0
    peak_gpu_gib: float | None = None
    notes: dict = dataclasses.field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s else 0.0


class GpuMemory:
    """Peak GPU memory in use (nvidia-smi, the whole device), sampled every 0.2 s."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.available = shutil.which("nvidia-smi") is not None
        if self.available:
            threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        while True:
            try:
                used = float(subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.split()[0])
                self.samples.append((time.time(), used / 1024))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.2)

    def peak(self, t0: float, t1: float) -> float | None:
        values = [gib for t, gib in self.samples if t0 <= t <= t1]
        return round(max(values), 2) if values else None


# --- One group: a fresh server and the runs queued on it -------------------------------------------------------


class Harness:
    def __init__(self, work: pathlib.Path, tiny: bool, report: Callable[["Harness"], None],
                 extra_nodes: Sequence[pathlib.Path] = ()):
        self.work, self.tiny, self.memory, self.results, self.logs = work, tiny, GpuMemory(), [], {}
        self.extra_nodes = extra_nodes  # files each server loads as custom nodes beside the pack (probes)
        self.report = report  # called after every run: a run cut short by a time limit keeps what came before
        self.models = work / ("tiny_models" if tiny else "models")
        self.names: dict = {}

    def prepare_models(self, v2: bool = False) -> None:
        """The model files; `v2`: LongLive 2.0's too (10 GB at full size)."""
        t0 = time.time()
        if self.tiny:
            self.names = make_tiny_models(self.models, v2=v2)
        else:
            subprocess.run([python(), str(REPO / "scripts" / "full_models.py"), str(self.models),
                            *(["--v2"] if v2 else [])], check=True, cwd=comfy_dir(), env=child_env())
        log.info("model files ready in %.1f s", time.time() - t0)

    def graph(self, workflow: str, **changes) -> dict:
        """workflows/api/WORKFLOW.json with inputs changed by class: {"LongLive_ModelLoader": {...}, ...}."""
        graph = json.loads((REPO / "workflows" / "api" / f"{workflow}.json").read_text())
        if self.tiny:
            graph = tiny_graph(graph, self.names)
        for node in graph.values():
            node["inputs"].update(changes.get(node["class_type"], {}))
        return graph

    def run_group(self, name: str, server_args: list[str], runs: list[Callable], fault: bool = False) -> None:
        base = self.work / f"server_{name}"
        shutil.rmtree(base, ignore_errors=True)
        (base / "models").parent.mkdir(parents=True, exist_ok=True)
        (base / "models").symlink_to(self.models.resolve(), target_is_directory=True)
        if fault:
            add_node(base, "longlive_e2e_fault", FAULT_NODE)
        for path in self.extra_nodes:
            add_node(base, path.stem, path.read_text())
        cold = not any(pathlib.Path("/tmp").glob("torchinductor_*"))
        log.info("== group %s: ComfyUI %s%s", name, " ".join(server_args) or "(default arguments)",
                 " + injected capture failure" if fault else "")
        host = ComfyHost(base, extra_args=["--output-directory", str(base / "output"), *server_args], cpu=self.tiny)
        try:
            host.start(timeout=300)
        except (RuntimeError, TimeoutError) as exc:
            self.results.append(Run(name, "server start", error=str(exc)[-2000:]))
            return
        events = Events(host.url, host.client_id)
        try:
            for run in runs:
                result = Run(name, run.__name__.removeprefix("run_").replace("_", " "), notes={"inductor_cache_cold": cold})
                self.results.append(result)
                try:
                    run(self, host, events, result)
                except Exception as exc:  # noqa: BLE001 (a failed run is a result; the next runs go on)
                    result.ok, result.error = False, f"{type(exc).__name__}: {exc}"[-2000:]
                result.notes["server_alive"] = host.alive()
                if result.notes["server_alive"]:
                    result.notes["server_gpu"] = host.get("/longlive/sessions").get("gpu")
                log.info("%-28s %s %s", result.name, "ok" if result.ok else "FAILED", result.error[:300])
                self.logs[name] = host.log()
                self.report(self)
                if not result.notes["server_alive"]:
                    break
                cold = False
        finally:
            events.stop.set()
            host.stop()
            self.logs[name] = host.log()

    # --- queueing and reading back -------------------------------------------------------------------

    def queue(self, host: ComfyHost, events: Events, graph: dict, result: Run, timeout: float = 900,
              during: Callable[[float], None] | None = None) -> dict:
        """Queues a graph and waits for it; fills result's wall time, stages, blocks, frames and peak memory."""
        t0 = time.time()
        prompt_id = host.queue(graph)
        if during is not None:
            during(t0)
        entry = host.wait(prompt_id, timeout)
        t1 = events.end_time(prompt_id, wait=5.0) or time.time()  # as a page sees it, not at /history's next poll
        result.wall_s = round(t1 - t0, 2)
        result.peak_gpu_gib = self.memory.peak(t0, t1)
        self.read_events(events.since(t0), prompt_id, graph, result, t1)
        status = entry.get("status", {})
        messages = {m[0]: m[1] for m in status.get("messages", [])}
        if status.get("status_str") != "success":
            err = messages.get("execution_error") or messages.get("execution_interrupted") or status
            raise RuntimeError(json.dumps(err)[:1500])
        result.frames = self.saved_frames(host, entry)
        return entry

    @staticmethod
    def read_events(items: list, prompt_id: str, graph: dict, result: Run, t_end: float) -> None:
        """Per-node times from `executing` messages, and the sampler's block events."""
        starts = [(t, d.get("node")) for t, kind, d in items if kind == "executing" and d.get("prompt_id") == prompt_id]
        per_class: dict = {}
        for (t, node), (t_next, _) in zip(starts, starts[1:] + [(t_end, None)]):
            if node is not None:
                kind = graph[node]["class_type"]
                per_class[kind] = per_class.get(kind, 0.0) + t_next - t
        blocks = [d for _, kind, d in items if kind == "longlive.block"]
        result.blocks = len(blocks)
        result.notes.update(block_gaps([t for t, kind, _ in items if kind == "longlive.block"]))
        created = bool(blocks) and blocks[0].get("frame") in FIRST_BLOCK_FRAMES
        split = {"model": float(blocks[0].get("warm_up_s", 0.0)) if created else 0.0,  # its compile and capture
                 "decoder": float(blocks[0].get("decoder_warm_up_s", 0.0)) if blocks else 0.0}  # compile or finds
        warm = sum(split.values())
        if created or warm or (blocks and "decoder_beside_s" in blocks[0]):  # a new session's, a readying's
            # of the model's: its first round; the decoder's readying beside the first blocks (the run's wait: decoder)
            inside = {k: blocks[0][f] for k, f, new in (("model_first_round", "warm_up_compile_s", created),
                                                        ("decoder_beside", "decoder_beside_s", True))
                      if new and f in blocks[0]}
            result.notes["compile_capture_s"] = {**{k: round(v, 2) for k, v in split.items()}, **inside}
        sampler = per_class.get("LongLive_StreamingSampler", 0.0)
        result.stages = {k: round(v, 2) for k, v in {
            "load": sum(per_class.get(k, 0.0) for k in ("LongLive_ModelLoader", "CLIPLoader", "VAELoader")),
            "text": per_class.get("LongLive_PromptSchedule", 0.0),
            "compile+capture": warm,
            "generation": sampler - warm,
            "decode": per_class.get("LongLive_VAEDecode", 0.0),  # the shipped workflows decode inside the sampler
            "video save": sum(per_class.get(k, 0.0) for k in ("CreateVideo", "SaveVideo", "LongLive_SaveVideo"))}.items()}
        if blocks:
            last = blocks[-1]
            result.notes.update(graphs=last.get("graphs"), last_block_ms=last.get("last_block_ms"),
                                last_decode_ms=last.get("last_decode_ms"), last_switch_ms=last.get("last_switch_ms"))

    def saved_frames(self, host: ComfyHost, entry: dict) -> int:
        import av

        total = 0
        for out in entry.get("outputs", {}).values():
            for f in out.get("images", []):
                path = host.base / "output" / f.get("subfolder", "") / f["filename"]
                if path.suffix in (".mp4", ".webm", ".mkv"):
                    with av.open(str(path)) as container:
                        total += sum(1 for _ in container.decode(video=0))
        return total


# --- The runs ---------------------------------------------------------------------------------------------


def pixel_frames(latent_frames: int, first: bool) -> int:
    return 4 * latent_frames - 3 if first else 4 * latent_frames


def run_workflow(h: Harness, host: ComfyHost, events: Events, result: Run, workflow: str, latent_frames: int,
                 seed: int, **sampler) -> None:
    """A shipped workflow on a new video with this seed and sampler inputs; ok when every frame was saved."""
    result.expected_frames = pixel_frames(latent_frames, True)
    h.queue(host, events, h.graph(workflow, LongLive_StreamingSampler={"seed": seed, **sampler}), result, timeout=1800)
    result.ok = result.frames == result.expected_frames


def run_one_minute(h: Harness, host: ComfyHost, events: Events, result: Run, seed: int = 0, **sampler) -> None:
    run_workflow(h, host, events, result, "longlive_one_minute", 240, seed, **sampler)


def run_one_minute_warm(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """The same workflow again on the warm server, with another seed (the same graph would come from ComfyUI's
    cache): a new video, its graphs captured again. Where this server's first run went before it, what that run's
    readying added (`first_run_adds_s`: its sampler's time less this one's): its compile + capture, and the blocks it
    slowed (the decoder is readied beside them)."""
    run_one_minute(h, host, events, result, seed=1)
    first = [r for r in h.results if r.group == result.group and r.name == "one minute" and r.ok]
    if first and result.ok:
        sampler = [r.stages["compile+capture"] + r.stages["generation"] for r in (first[-1], result)]
        result.notes["first_run_adds_s"] = round(sampler[0] - sampler[1], 2)


def run_one_minute_decode_on_gpu1(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """The one-minute workflow with the decoder on the second GPU (decode_device cuda:1), twice: the first loads
    and compiles there, the second is the row to read."""
    run_one_minute(h, host, events, Run(result.group, "decode on cuda:1 first"), seed=2, decode_device="cuda:1")
    run_one_minute(h, host, events, result, seed=3, decode_device="cuda:1")


def warm_fp8(h: Harness, host: ComfyHost, events: Events, result: Run, workflow: str, latent_frames: int) -> None:
    """A shipped workflow with FP8 linears and FP8 self-attention, warm: its first run loads, quantizes and
    compiles, the second is timed."""
    changes = {"LongLive_ModelLoader": {"precision": "fp8", "attention": "flash-attn 3 fp8"}}
    h.queue(host, events, h.graph(workflow, **changes), Run(result.group, "fp8 first"), timeout=1800)
    result.expected_frames = pixel_frames(latent_frames, True)
    h.queue(host, events, h.graph(workflow, LongLive_StreamingSampler={"seed": 1}, **changes), result, timeout=1800)
    result.ok = result.frames == result.expected_frames


def run_one_minute_fp8(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """The one-minute workflow in FP8 (the issue's 25 s target)."""
    warm_fp8(h, host, events, result, "longlive_one_minute", 240)


def run_multishot(h: Harness, host: ComfyHost, events: Events, result: Run, seed: int = 0, **sampler) -> None:
    """LongLive 2.0's multi-shot workflow: 20 s at 1280x704 and 24 fps (120 latent frames), two scene cuts."""
    run_workflow(h, host, events, result, "longlive2_multishot", 120, seed, **sampler)


def run_multishot_warm(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    run_multishot(h, host, events, result, seed=1)


def run_multishot_compiled_vae(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """The same with the Wan 2.2 decoder's steady chunks compiled (the sampler's compile_vae), run twice: the first
    compiles, the second is the row to read."""
    run_multishot(h, host, events, Run(result.group, "compiled vae first"), seed=2, compile_vae=True)
    run_multishot(h, host, events, result, seed=3, compile_vae=True)


def run_multishot_tiny_decoder(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """The same with Wan 2.2's tiny decoder (lighttaew2_2 from models/vae_approx) on the sampler's vae input."""
    result.expected_frames = pixel_frames(120, True)
    graph = h.graph("longlive2_multishot", VAELoader={"vae_name": "lighttaew2_2.safetensors"},
                    LongLive_StreamingSampler={"seed": 4})
    h.queue(host, events, graph, result, timeout=1800)
    result.ok = result.frames == result.expected_frames


def run_multishot_fp8(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """LongLive 2.0's multi-shot workflow in FP8 (the issue's 36 fps target for generation)."""
    warm_fp8(h, host, events, result, "longlive2_multishot", 120)


def run_image_to_video(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """LongLive 2.0's image-to-video workflow: ComfyUI's example image, 10 s (64 latent frames in blocks of 8)."""
    result.expected_frames = pixel_frames(64, True)
    h.queue(host, events, h.graph("longlive2_image_to_video"), result, timeout=1800)
    result.ok = result.frames == result.expected_frames


def interactive(h: Harness, host, events, result: Run, session: str, prompt: str, first: bool, **changes) -> None:
    """One run of the interactive workflow (5 s) on a session, with the loader or decoder changed."""
    ours = {"LongLive_PromptSchedule": {"schedule": f"0: {prompt}"}, "LongLive_StreamingSampler": {"session_id": session}}
    graph = h.graph("longlive_interactive", **{k: {**ours.get(k, {}), **changes.get(k, {})} for k in {*ours, *changes}})
    result.expected_frames = pixel_frames(21, first)
    h.queue(host, events, graph, result)
    sessions = host.get("/longlive/sessions")["sessions"]
    result.notes["session"] = {k: sessions.get(session, {}).get(k) for k in ("frames", "graphs", "warm_up_s")}
    result.ok = result.frames == result.expected_frames and session in sessions


def interactive_runs(label: str, count: int, alone: bool = False, **changes) -> list[Callable]:
    """`count` runs of one session (each continues the video), one prompt each. `alone`: the server first frees every
    session and unloads every model, so that the runs' peak memory is their own."""
    def make(i: int):
        def run(h, host, events, result):
            if alone and i == 0:
                host.request("DELETE", "/longlive/sessions")
                host.request("POST", "/free", {"unload_models": True, "free_memory": True})
                time.sleep(2)
            interactive(h, host, events, result, f"e2e_{label}", PROMPTS[i % len(PROMPTS)], i == 0, **changes)
        run.__name__ = f"run_{label}_{i + 1}"
        return run
    return [make(i) for i in range(count)]


def run_watched(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """A 10 s interactive run watched as the panel watches it: faster than real time, so its frames leave 0.75 s
    before they play, and the pause ComfyUI takes after the prompt (a garbage collection) should reach no viewer.
    `ahead_s`: how long before its play time (16 fps from the first frame) each frame came; a frame more than a frame
    late would have stalled the panel (which starts at its second frame)."""
    watcher, start = FrameWatcher(host.url, "e2e_watched"), []
    graph = h.graph("longlive_interactive", LongLive_StreamingSampler={"session_id": "e2e_watched", "length": 10.0,
                                                                      "length_unit": "seconds"})
    result.expected_frames = pixel_frames(42, True)
    h.queue(host, events, graph, result, during=start.append)
    deadline = time.time() + 30
    while len(watcher.frames) < result.frames and time.time() < deadline:
        time.sleep(0.1)  # the frames play at 16 fps
    watcher.close()
    stream = result.notes["stream"] = stream_figures(watcher.frames, [], ended=start[0] + result.wall_s)
    stream["playback"] = playback(watcher.frames)
    times = [t for t, _ in watcher.frames]
    ahead = sorted(times[0] + k / FPS - t for k, t in enumerate(times))
    stream.update(ahead_s={"median": round(ahead[len(ahead) // 2], 3) if ahead else None,
                           "min": round(ahead[0], 3) if ahead else None}, late_frames=sum(a < -1 / FPS for a in ahead))
    result.ok = result.frames == result.expected_frames == stream["frames"] and stream["in_order"]


def run_live(h: Harness, host: ComfyHost, events: Events, result: Run, session: str = "live",
             typed: bool = True, **changes) -> None:
    """The live workflow watched as the panel watches it (the frames WebSocket): prompts posted while it runs (each
    at another moment of a block: post_delays), then stop. Measures the frames at the client: how many, their rate
    and gaps in steady state, prompt to pixel. Each prompt is a text the server has not encoded yet, as a user types
    a new one (runs up to 126 repeated three texts, and only their first posts encoded), in plain words (up to run
    151 each ended in "(session, prompt k)", which ComfyUI's tokenizer reads as a weight of 1.1). Where `typed`, each
    is sent as the panel sends what is typed (.../typed) TYPED_BEFORE_ENTER_S before its post, so the run may encode
    it while it waits (runs up to 128 did not); else its umt5 encoding is part of its prompt to pixel, as for a
    client of the HTTP API. On a fresh server the decoder compiles and captures during the first seconds of the stream."""
    posted, start = [], []
    watcher = FrameWatcher(host.url, session)

    def steer(t0: float) -> None:
        start.append(t0)
        wait_blocks(events, t0, 12)
        texts = [f"{PROMPTS[(k + 1) % len(PROMPTS)]}, {session} prompt {k + 1}" for k in range(10)]
        for text, delay in zip(texts, post_delays(len(texts))):
            wait_blocks(events, t0, len(events.since(t0, "longlive.block")) + 4)
            time.sleep(delay)
            if typed:
                host.request("POST", f"/longlive/sessions/{session}/typed", {"text": text})
                time.sleep(TYPED_BEFORE_ENTER_S)
            posted.append((time.time(), text))
            host.request("POST", f"/longlive/sessions/{session}/prompt", {"text": text})
        wait_blocks(events, t0, len(events.since(t0, "longlive.block")) + 4)
        host.request("POST", f"/longlive/sessions/{session}/stop", {})

    graph = h.graph("longlive_live", **{**changes, "LongLive_StreamingSampler": {
        "session_id": session, **changes.get("LongLive_StreamingSampler", {})}})
    h.queue(host, events, graph, result, during=steer)
    time.sleep(3)  # the last frames leave the server at 16 fps
    watcher.close()
    blocks = events.since(start[0], "longlive.block")
    switched = [t for t, _, d in blocks if d.get("switched")]
    result.notes["post_to_switch_block_s"] = [round(s - p, 3) for (p, _), s in zip(posted, switched)]
    result.notes["texts_posted"] = len({text for _, text in posted})  # each one new to the server
    switches = host.get("/longlive/sessions")["sessions"][session]["switches"][-len(posted):]
    result.notes["encoded_ahead"] = sum(s["encoded_ahead"] for s in switches)  # of the posts, typed and encoded
    result.notes["encode_ms"] = [s["encode_ms"] for s in switches if not s["encoded_ahead"]]  # on the way
    result.notes["stream"] = stream_figures(watcher.frames, posted, ended=start[0] + result.wall_s)
    result.notes["stream"]["playback"] = playback(watcher.frames)
    result.expected_frames = pixel_frames(FRAMES_PER_BLOCK * result.blocks, True)
    result.ok = (result.frames == result.expected_frames == result.notes["stream"]["frames"]
                 and len(switched) == len(posted) and result.notes["stream"]["in_order"])


def post_delays(count: int) -> list[float]:
    """Seconds after a block event to post each of `count` prompts: spread evenly over a live block's time, as a user
    types at any moment of a block (just after a block event a prompt meets that block's decode; runs before 116
    posted there)."""
    return [round(BLOCK_S * (k + 0.5) / count, 4) for k in range(count)]


def run_live_warm(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """The same on the warm server, as a second live session: the row the live targets are read from."""
    run_live(h, host, events, result, session="live_2")


def run_live_api(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """The same on the warm server, each new text posted as an HTTP API client posts it, without typing: its umt5
    encoding on the way to the screen."""
    run_live(h, host, events, result, session="live_api", typed=False)


def run_live_keep(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """A live session whose prompts switch without a recache (switch_policy keep: the new prompt's text attention
    only), on the warm server: what a switch costs at the viewer without the recache."""
    run_live(h, host, events, result, session="live_keep", LongLive_StreamingSampler={"switch_policy": "keep"})


def run_live_fp8_tiny_decoder(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """A live session with FP8 linears and FP8 attention and Wan 2.1's tiny decoder (lighttaew2_1): the fastest
    switch and decode the pack has, with upstream's recache."""
    run_live(h, host, events, result, session="live_fast",
             LongLive_ModelLoader={"precision": "fp8", "attention": "flash-attn 3 fp8"},
             VAELoader={"vae_name": "lighttaew2_1.safetensors"})


def stream_figures(frames: list[tuple[float, dict]], posted: list[tuple[float, str]], ended: float) -> dict:
    """The frames at a viewer: count, order, the rate and the longest gap after the first 3 s (steady state; with
    the frame it ended at, its time from the first frame, how long before its arrival the server made and sent it,
    and when the run ended), how long before the run's end the last frame came (a live run ends once its frames are
    sent), and for each posted prompt the time from its POST to the first frame made under it."""
    if not frames:
        return {"frames": 0, "in_order": False}
    times = [t for t, _ in frames]
    steady = [t for t in times if t >= times[0] + 3.0]
    gaps = [b - a for a, b in zip(steady, steady[1:])]
    longest = max(range(len(gaps)), key=gaps.__getitem__) + 1 if gaps else None  # index in steady of the gap's end
    latency = []
    for t_post, text in posted:
        arrived = [t for t, header in frames if header.get("prompt") == text[:200] and t >= t_post]
        latency.append(round((arrived[0] - t_post) * 1e3) if arrived else None)
    return {"frames": len(frames), "in_order": [h["frame"] for _, h in frames] == list(range(len(frames))),
            "dropped": frames[-1][1].get("dropped", 0),
            "fps_steady": round((len(steady) - 1) / (steady[-1] - steady[0]), 2) if len(steady) > 1 else None,
            "max_gap_ms": round(max(gaps) * 1e3) if gaps else None,
            "max_gap_ended_at": None if longest is None else gap_end(frames[len(times) - len(steady) + longest],
                                                                     times[0], ended),
            "p99_gap_ms": round(sorted(gaps)[int(0.99 * (len(gaps) - 1))] * 1e3) if gaps else None,
            "last_frame_before_end_s": round(ended - times[-1], 3),
            "prompt_to_pixel_ms": latency,
            "prompt_to_pixel_median_ms": statistics.median([x for x in latency if x is not None] or [0])}


def panel_buffer() -> tuple[int, int]:
    """The panel's player's PREBUFFER and MAX_BUFFER, read from web/js/longlive_panel.js (their owner)."""
    text = (REPO / "web" / "js" / "longlive_panel.js").read_text()
    return tuple(int(re.search(rf"^const {name} = (\d+);", text, re.M).group(1))
                 for name in ("PREBUFFER", "MAX_BUFFER"))


def playback(frames: list[tuple[float, dict]], fps: float = FPS) -> dict:
    """What the panel's player shows from these arrivals (web/js/longlive_panel.js, Player.tick): a tick every 1/fps
    from the first arrival; it plays once PREBUFFER frames wait (or the first has waited PREBUFFER frame times) and
    again after running dry; a new prompt's first frame drops the frames waiting before it; more than MAX_BUFFER
    waiting drops the oldest. A stall: the screen held a frame past its time because none was ready, after playing
    began (the run's end excepted)."""
    prebuffer, max_buffer = panel_buffer()
    waiting: list[float] = []  # arrival times
    shown = skipped = i = 0
    playing, stalls, stalled_at, tick = False, [], None, frames[0][0] if frames else 0.0
    while i < len(frames) or waiting:
        tick += 1 / fps
        while i < len(frames) and frames[i][0] <= tick:
            if frames[i][1].get("posted_at"):
                skipped, waiting = skipped + len(waiting), []
            waiting.append(frames[i][0])
            i += 1
        if not playing and len(waiting) < prebuffer and not (waiting and tick - waiting[0] >= prebuffer / fps):
            continue
        playing = bool(waiting)
        if not playing:
            stalled_at = tick if stalled_at is None else stalled_at
            continue
        if stalled_at is not None:
            stalls.append(tick - stalled_at)
            stalled_at = None
        skipped += max(0, len(waiting) - max_buffer)
        waiting = waiting[max(0, len(waiting) - max_buffer) + 1:]
        shown += 1
    return {"shown": shown, "skipped": skipped, "stalls": len(stalls),
            "stalled_ms": round(sum(stalls) * 1e3), "longest_stall_ms": round(max(stalls, default=0) * 1e3)}


def block_gaps(times: list[float], first: int = 5) -> dict:
    """Seconds between a run's block events (the first after the run's first block): the first few, and the longest
    with the block event it ended at, counted from 0 (a fresh server's decoder starting, a stall)."""
    gaps = [b - a for a, b in zip(times, times[1:])]
    if not gaps:
        return {}
    longest = max(range(len(gaps)), key=gaps.__getitem__)
    return {"first_block_gaps_s": [round(g, 3) for g in gaps[:first]],
            "longest_block_gap": {"block": longest + 1, "s": round(gaps[longest], 3)}}


def gap_end(frame: tuple[float, dict], first: float, ended: float) -> dict:
    """Where a gap ended: the frame, its arrival from the first frame's, how long before its arrival the server made
    it and sent it (a frame made long before and sent late: the sending side waited), and the run's end."""
    arrived, header = frame
    return {"frame": header["frame"], "s_after_first_frame": round(arrived - first, 2),
            "made_s_before": round(arrived - header["made_at"], 3),
            "sent_s_before": round(arrived - header["sent_at"], 3),
            "run_ended_s_after_first_frame": round(ended - first, 2)}


def wait_blocks(events: Events, t0: float, count: int, timeout: float = 300) -> None:
    """Until `count` block events have come since t0; a run that failed meanwhile is reported at once (run 128
    waited 300 s for a live run that had run out of memory in its first seconds)."""
    deadline = time.time() + timeout
    while len(events.since(t0, "longlive.block")) < count:
        failed = events.since(t0, "execution_error")
        if failed:
            error = failed[0][2]
            raise RuntimeError(f"the run failed after {len(events.since(t0, 'longlive.block'))} blocks: "
                               f"{error.get('exception_type')}: {str(error.get('exception_message'))[:500]}")
        if time.time() > deadline:
            raise TimeoutError(f"fewer than {count} blocks in {timeout} s")
        time.sleep(0.05)


def run_interrupt(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """/interrupt after 3 blocks of a 30 s run: its file holds the blocks decoded before the interrupt, and the next
    run of the session the rest of them and its own (no frame lost, none twice)."""
    graph = h.graph("longlive_interactive", LongLive_StreamingSampler={"session_id": "e2e_interrupt", "length": 30.0},
                    LongLive_SaveVideo={"filename_prefix": "e2e/interrupted"})
    t0 = time.time()
    prompt_id = host.queue(graph)
    wait_blocks(events, t0, 3)
    host.request("POST", "/interrupt", {})
    entry = host.wait(prompt_id)
    made = len(events.since(t0, "longlive.block"))
    result.notes["interrupted_status"] = entry.get("status", {}).get("status_str")
    result.notes["blocks_before_interrupt"] = made
    (cut,) = (host.base / "output" / "e2e").glob("interrupted_*.mp4")
    cut_frames = h.saved_frames(host, {"outputs": {"cut": {"images": [{"subfolder": "e2e", "filename": cut.name}]}}})
    result.notes["frames_in_the_interrupted_file"] = cut_frames
    follow = Run(result.group, "after interrupt")
    interactive(h, host, events, follow, "e2e_interrupt", PROMPTS[0], True)
    result.wall_s, result.stages, result.blocks = follow.wall_s, follow.stages, follow.blocks
    result.frames = cut_frames + follow.frames
    # every frame the session made, in one file or the other: a block made as the interrupt came has its decode owed
    # to the next run, and may have sent no block event
    held = follow.notes["session"]["frames"]
    result.peak_gpu_gib, result.expected_frames = follow.peak_gpu_gib, pixel_frames(held, True)
    result.ok = (result.notes["interrupted_status"] == "error" and cut_frames > 0
                 and held >= FRAMES_PER_BLOCK * made + 21 and result.frames == result.expected_frames)


def run_reload(h: Harness, host: ComfyHost, events: Events, result: Run) -> None:
    """A session's second run after ComfyUI unloaded every model (POST /free): the weights come back at other
    addresses, the graphs are captured again, the video continues."""
    interactive(h, host, events, Run(result.group, "before"), "e2e_reload", PROMPTS[0], True)
    host.request("POST", "/free", {"unload_models": True, "free_memory": True})
    time.sleep(2)
    interactive(h, host, events, result, "e2e_reload", PROMPTS[1], False)
    result.notes["weights_moved_logged"] = "weights moved" in host.log()


def gpus() -> int:
    """The CUDA devices this machine shows (nvidia-smi; none without it)."""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listed.splitlines())


def groups(tiny: bool) -> list[tuple[str, list[str], list[Callable], bool]]:
    """(name, server arguments, runs, inject a capture failure). The shipped workflows each open a fresh server."""
    fp8 = {"LongLive_ModelLoader": {"precision": "fp8"}}
    window21 = {"LongLive_StreamingSampler": {"local_attn_size": 21}}
    memory = [*interactive_runs("bf16", 2, alone=True), *interactive_runs("fp8", 2, alone=True, **fp8),
              *interactive_runs("bf16_w21", 2, alone=True, **window21),
              *interactive_runs("fp8_w21", 2, alone=True, **fp8, **window21)]
    other_precisions = [run for precision in ("fp16", "int8 dynamic", "int8 weight-only")
                        for run in interactive_runs(precision.replace(" ", "_").replace("-", "_"), 2, alone=True,
                                                    LongLive_ModelLoader={"precision": precision})]
    precisions = [] if tiny else [
        ("precisions", [], [*memory[2:],
                            *interactive_runs("int8_dynamic", 2, LongLive_ModelLoader={"precision": "int8 dynamic"}),
                            *interactive_runs("fa3_fp8", 2, LongLive_ModelLoader={"attention": "flash-attn 3 fp8"}),
                            run_reload], False),
        ("memory", [], [*memory, *other_precisions], False)]
    return [
        ("one-minute", [], [run_one_minute, run_one_minute_warm], False),
        ("live", [], [run_live, run_live_warm, run_live_api, run_live_keep,
                      *([] if tiny else [run_live_fp8_tiny_decoder])], False),
        ("capture-failure", [], interactive_runs("capture_failure", 2), True),
        ("interactive", [], [*interactive_runs("interactive", 3),
                             *interactive_runs("fast_off", 2, LongLive_ModelLoader={"fast": False}),
                             *interactive_runs("eager_vae", 2, LongLive_StreamingSampler={"compile_vae": False}),
                             *([run_reload] if tiny else []), run_interrupt, run_watched], False),
        *precisions,
        *([] if tiny else [("one-minute-fp8", [], [run_one_minute_fp8], False)]),
        *([] if tiny else [(V2_GROUP, [], [run_multishot, run_multishot_warm, run_multishot_compiled_vae,
                                           run_multishot_tiny_decoder, run_image_to_video], False),
                           (f"{V2_GROUP}-fp8", [], [run_multishot_fp8], False)]),
        ("native-allocator", ["--disable-cuda-malloc"], interactive_runs("native", 2), False),
        *([("two-gpus", [], [run_one_minute_decode_on_gpu1], False)] if not tiny and gpus() > 1 else []),
        *([] if tiny else [("lowvram", ["--lowvram"], interactive_runs("lowvram", 2), False)]),
    ]


# --- Report ---------------------------------------------------------------------------------------------


STAGES = ("load", "text", "compile+capture", "generation", "decode", "video save")


def table(results: list[Run]) -> str:
    head = ["group", "run", "ok", "wall s", *STAGES, "frames", "pixel fps", "peak GiB"]
    rows = [head, ["---"] * len(head)]
    for r in results:
        rows.append([r.group, r.name, "yes" if r.ok else "NO", f"{r.wall_s:.1f}",
                     *(f"{r.stages[s]:.1f}" if s in r.stages else "" for s in STAGES),
                     f"{r.frames}" + (f"/{r.expected_frames}" if r.expected_frames is not None else ""),
                     f"{r.fps:.1f}", "" if r.peak_gpu_gib is None else f"{r.peak_gpu_gib:.1f}"])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


ENGINE_MODELS = ("FastWan", "CausalWan", "WanVAE")  # what generating needs loaded; ComfyUI may offload the rest


def memory_table(results: list[Run]) -> str:
    """The server's peak allocated GPU memory in each run (PyTorch's figure; the sampler resets it as it starts), what
    ComfyUI had loaded, and the peak without the models generation does not use (the text encoder)."""
    head = ["group", "run", "peak allocated GiB", "loaded models GiB", "peak without the text encoder GiB"]
    rows = [head, ["---"] * len(head)]
    for r in results:
        gpu = r.notes.get("server_gpu") or {}
        if "peak_allocated_gib" not in gpu:
            continue
        loaded = gpu.get("loaded_models_gib", {})
        others = sum(v for k, v in loaded.items() if k not in ENGINE_MODELS)
        rows.append([r.group, r.name, f"{gpu['peak_allocated_gib']:.2f}",
                     ", ".join(f"{k} {v:.2f}" for k, v in loaded.items()), f"{gpu['peak_allocated_gib'] - others:.2f}"])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def environment() -> dict:
    probe = ("import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available() and "
             "torch.cuda.get_device_name(0)}))")
    info = json.loads(subprocess.run([python(), "-c", probe], capture_output=True, text=True).stdout or "{}")
    for module in ("fa3_fwd_interface", "torchao", "triton"):
        found = subprocess.run([python(), "-c", f"import {module}"], capture_output=True).returncode == 0
        info[module] = found
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", help="comma-separated group names (default: all)")
    parser.add_argument("--runs", help="comma-separated run names of those groups, as the table writes them with _ "
                                       "for spaces (multishot,multishot_warm; default: all)")
    parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/longlive_e2e"))
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(os.environ.get("OUT", REPO / "out")))
    parser.add_argument("--tiny", action="store_true", help="tiny random models on the CPU (to work on the harness)")
    parser.add_argument("--extra-node", type=pathlib.Path, action="append", default=[], metavar="FILE",
                        help="a Python file every server loads as one more custom node (a probe of the pack's "
                             "internals); may repeat")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    log.info("%s", json.dumps(env))

    def report(h: Harness) -> None:
        (args.out / "e2e.json").write_text(json.dumps({
            "environment": env, "command": sys.argv, "tiny": args.tiny,
            "runs": [dataclasses.asdict(r) | {"pixel_fps": round(r.fps, 2)} for r in h.results],
            "server_log_tails": {k: v[-30000:] for k, v in h.logs.items()}}, indent=1))

    harness = Harness(args.work, args.tiny, report, args.extra_node)
    wanted = set(args.groups.split(",")) if args.groups else None
    wanted_runs = {f"run_{name}" for name in args.runs.split(",")} if args.runs else None
    harness.prepare_models(v2=not args.tiny and (wanted is None or any(w.startswith(V2_GROUP) for w in wanted)))
    for name, server_args, runs, fault in groups(args.tiny):
        runs = [run for run in runs if wanted_runs is None or run.__name__ in wanted_runs]
        if (wanted is None or name in wanted) and runs:
            harness.run_group(name, server_args, runs, fault)
    report(harness)
    print(json.dumps(env))
    print(table(harness.results))
    print(memory_table(harness.results))
    for r in harness.results:
        if "stream" in r.notes:
            print(f"{r.group} / {r.name}, at the viewer: {json.dumps(r.notes['stream'])}")
        if "first_run_adds_s" in r.notes:
            print(f"{r.group}: the server's first run's readying added {r.notes['first_run_adds_s']} s (its sampler's "
                  f"time less the warm run's)")
        if "longest_block_gap" in r.notes:
            print(f"{r.group} / {r.name}, between block events: first {r.notes['first_block_gaps_s']} s, longest "
                  f"{r.notes['longest_block_gap']['s']} s before block {r.notes['longest_block_gap']['block']}")
    return 0 if harness.results and all(r.ok for r in harness.results) else 1


if __name__ == "__main__":
    sys.exit(main())
