"""CUDA graphs of the passes that repeat: GraphRunner decides which passes to capture (graphs.capture captures them)
and warm_up captures the steady ones before a session's first block."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time

import torch

from ..errors import LongLiveError
from ..model.cache import KVCache, TextCache
from ..model.fused import FastWan
from ..model.wan import CausalWan, PassPlan, TimeEmbedding
from .graphs import CaptureError, capture

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    plan: PassPlan
    out: torch.Tensor

    def replay(self, x: torch.Tensor, plan: PassPlan) -> torch.Tensor:
        self.x.copy_(x)
        self.plan.copy_(plan)
        self.graph.replay()
        return self.out


class GraphRunner:
    """Runs passes for one session (give each session its own runner): a pass shape seen for the
    first time runs eagerly, the second time it is captured, and from then on it replays. Steady
    blocks, their clean passes and the steady recache repeat (warm_up captures them up front);
    the blocks that fill the window run once and never capture.

    A pass is idempotent (it rewrites its own cache slots from its own input), so the extra
    warm-up run before capture changes nothing.
    """

    def __init__(self, model: CausalWan):
        self.model = model
        self.seen: set = set()
        self.graphs: dict = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.failed: str | None = None  # why this runner stopped capturing (it then runs every pass eagerly)
        self.eager_runs = 0  # passes run through the model (not replayed): its compiled code called from this thread

    def __call__(self, x: torch.Tensor, time: TimeEmbedding, plan: PassPlan, cache: KVCache, text: TextCache):
        key = pass_key(x, time, plan, cache, text)
        graph = self.graphs.get(key)
        if graph is not None:
            return graph.replay(x, plan)
        if key not in self.seen or self.failed:
            self.seen.add(key)
            self.eager_runs += 1
            return self.model(x, time, plan, cache, text)
        self.eager_runs += 1  # a capture runs the pass first
        try:
            self.graphs[key] = graph = self._capture(x, time, plan, cache, text)
        except CaptureError as exc:
            self.failed = str(exc)
            log.warning("LongLive could not capture a CUDA graph (%s); this session runs without graphs", exc)
            return self.model(x, time, plan, cache, text)
        return graph.replay(x, plan)

    def _capture(self, x, time, plan, cache, text) -> _Graph:
        static_x = x.clone()
        static_plan = dataclasses.replace(plan, rope_cos=plan.rope_cos.clone(), rope_sin=plan.rope_sin.clone(),
                                          write_index=plan.write_index.clone())
        graph, out = capture(lambda: self.model(static_x, time, static_plan, cache, text), x.device, self.pool,
                             rehearse=True)  # a pass rewrites only its own cache slots: running it twice is safe
        log.debug("captured a pass graph: %s frames, %d keys", tuple(x.shape), plan.kv_len)
        return _Graph(graph, static_x, static_plan, out)

    @contextlib.contextmanager
    def attempt(self):
        """A block that may stop part way (a live block cut short by a posted prompt) and be made again: the passes
        it ran are forgotten when it stops, so making it again captures none that would not have been captured (the
        blocks that fill the window run once)."""
        seen = set(self.seen)
        try:
            yield
        except BaseException:
            self.seen = seen
            raise

    def restart(self) -> None:
        """The session starts a new video in the same buffers: its graphs stay; passes seen but not captured (the
        blocks that fill the window) count as unseen again, so they run once a video, as in a new session."""
        self.seen = set(self.graphs)

    def clear(self) -> None:
        """Drops every graph (after the session's caches were reallocated, or the weights moved); a runner whose
        capture failed stays without graphs."""
        self.seen.clear()
        self.graphs.clear()


def pass_key(x: torch.Tensor, time: TimeEmbedding, plan: PassPlan, cache: KVCache, text: TextCache) -> tuple:
    """What makes a pass repeat: the buffers it reads and writes (addresses, not ids) and its shapes; the plan's
    positions and slots are copied into a graph's inputs."""
    mods = None if time.mods is None else time.mods.data_ptr()
    return (time.e.data_ptr(), time.e0.data_ptr(), mods, tuple(x.shape), plan.kv_len, plan.cache_only,
            cache.k.data_ptr(), text.k.data_ptr())


def warm_up(session) -> float | None:
    """Compiles and captures every steady-state pass (session.warm_up_passes: a StreamSession's 4 steps, clean pass
    and recache, a ShotSession's steps and clean pass, and its image's first block) before the first block, so that
    no later block or switch pays for it. Where compiling or the Triton kernels fail, the model
    drops them (logged with the cause) and the passes are captured from its eager stages; where a capture fails,
    the session's runner runs without graphs (GraphRunner). Returns the seconds of its first round (each pass run
    once: where torch.compile compiles), None where it captures nothing."""
    if not isinstance(session.runner, GraphRunner):
        return None
    try:
        return _warm_up(session)
    except (LongLiveError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 (inductor, Triton or a compiler on this machine)
        log.warning("LongLive's compiled stages failed (%s: %s); the model runs its eager stages from now on",
                    type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        drop_compiled(session.model)
        session.runner.clear()
        return _warm_up(session)


def drop_compiled(model: FastWan) -> None:
    """Undoes what make_fast compiled and the Triton kernels it chose: eager blocks, plain attention."""
    model.unfuse()
    model.set_attention(model.attention_backend)


def _warm_up(session) -> float:
    """The dummy passes write garbage K/V at steady positions; the cache is zeroed afterwards, and while the window
    fills a block only reads slots that earlier blocks wrote. Returns the first round's seconds (host time, its GPU
    work waited for)."""
    runner = session.runner
    rounds = []
    try:
        with torch.inference_mode():
            passes = session.warm_up_passes()
            for _ in range(2):  # first call runs (and compiles), second captures
                start = time.perf_counter()
                for x, t, plan in passes:
                    runner(x, t, plan, session.cache, session.text)
                if session.model.device.type == "cuda":
                    torch.cuda.synchronize(session.model.device)
                rounds.append(time.perf_counter() - start)
    finally:
        session.cache.zero_()
    log.info("captured %d pass graphs for a %dx%d session: %.1f s running each pass once (compiling), %.1f s "
             "capturing", len(runner.graphs), *session.latent_hw, *rounds)
    return rounds[0]
