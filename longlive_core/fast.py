"""The real-time path: compiled dense stages and CUDA graphs of the passes that repeat.

GraphRunner decides which passes to capture; graphs.capture captures them (the one capture mechanism, which the
VAE's steady chunk uses too). torch.compile only fuses (no cudagraphs mode), and only the three dense stages of a
layer (the first one writes the KV cache); attention stays outside.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging

import torch
import torch._dynamo

from . import kernels
from .cache import FRAMES_PER_BLOCK, KVCache, TextCache
from .errors import LongLiveError
from .graphs import CaptureError, capture
from .model import Block, CausalWan, PassPlan, TimeEmbedding
from .quantize import Float8Linear, Int8DynamicLinear

log = logging.getLogger(__name__)

STAGES = ("self_qkv", "self_out_cross_q", "cross_out_ffn")


def compile_blocks(model: CausalWan, options: dict | None = None) -> None:
    """Compiles the dense stages once; all layers share the compiled code (modules are inputs).

    The default mode keeps cuBLAS for the GEMMs and fuses the norms, modulation, RoPE and gated
    residuals around them; max-autotune costs minutes per shape for little gain at these sizes.
    `options`: inductor settings. The first shape compiles static (the steady block); a second one
    makes dynamo compile a dynamic variant that serves every later shape (recache chunks, batches).
    """
    for name in STAGES:
        fn = torch.compile(getattr(Block, name), fullgraph=True, options=options)
        for block in model.blocks:
            setattr(block, name, functools.partial(fn, block))
    log.info("compiled the dense stages of %d layers (%s)", len(model.blocks), options or "default")


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

    def __call__(self, x: torch.Tensor, time: TimeEmbedding, plan: PassPlan, cache: KVCache, text: TextCache):
        # addresses, not ids: a pass is defined by the buffers it reads and writes
        mods = None if time.mods is None else time.mods.data_ptr()
        key = (time.e0.data_ptr(), mods, tuple(x.shape), plan.kv_len, plan.cache_only, cache.k.data_ptr(),
               text.k.data_ptr())
        graph = self.graphs.get(key)
        if graph is not None:
            return graph.replay(x, plan)
        if key not in self.seen or self.failed:
            self.seen.add(key)
            return self.model(x, time, plan, cache, text)
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

    def clear(self) -> None:
        """Drops every graph (after the session's caches were reallocated, or the weights moved); a runner whose
        capture failed stays without graphs."""
        self.seen.clear()
        self.graphs.clear()


def warm_up(session) -> None:
    """Compiles and captures every steady-state pass (the 4 steps, the clean pass, the recache) before the first
    block, so that no later block or switch pays for it. Where compiling or the Triton kernels fail, the model
    drops them (logged with the cause) and the passes are captured from its eager stages; where a capture fails,
    the session's runner runs without graphs (GraphRunner)."""
    if not isinstance(session.runner, GraphRunner):
        return
    try:
        _warm_up(session)
    except (LongLiveError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 (inductor, Triton or a compiler on this machine)
        log.warning("LongLive's compiled stages failed (%s: %s); the model runs its eager stages from now on",
                    type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        drop_compiled(session.model)
        session.runner.clear()
        _warm_up(session)


def _warm_up(session) -> None:
    """The dummy passes write garbage K/V at steady positions; the cache is zeroed afterwards, and while the window
    fills a block only reads slots that earlier blocks wrote."""
    runner = session.runner
    window, sink, dims = session.window, session.sink, (session.cfg.in_dim, *session.latent_hw)
    end = window + FRAMES_PER_BLOCK  # any position where the window is full
    block = session.plan(end - FRAMES_PER_BLOCK, FRAMES_PER_BLOCK)
    clean = dataclasses.replace(block, cache_only=True)
    kept = window - sink
    recache = session.plan(end - kept, kept, cache_only=True)
    x = torch.zeros(session.batch, FRAMES_PER_BLOCK, *dims, device=session.model.device)
    chunk = torch.zeros(session.batch, kept, *dims, device=session.model.device)
    try:
        with torch.inference_mode():
            for _ in range(2):  # first call runs (and compiles), second captures
                for time in session.times[:-1]:
                    runner(x, time, block, session.cache, session.text)
                runner(x, session.times[-1], clean, session.cache, session.text)
                runner(chunk, session.times[-1], recache, session.cache, session.text)
    finally:
        session.cache.zero_()
    log.info("captured %d pass graphs for a %dx%d session", len(runner.graphs), *session.latent_hw)


def drop_compiled(model: CausalWan) -> None:
    """Undoes what make_fast compiled and the Triton kernels it chose: the eager stages, plain attention."""
    for block in model.blocks:
        for name in STAGES:
            block.__dict__.pop(name, None)  # the class's own method again
        block.fused_norms = False
    model.set_attention(model.attention_backend, compiled=False)


@torch.no_grad()
def fuse_qkv(attn) -> None:
    """Gives a self-attention one q|k|v linear whose weights the three linears then view (no extra
    memory while they share it). Plain, FP8 and int8 dynamic linears fuse (their weight steps are per output
    row); torchao's quantized ones stay apart."""
    parts = (attn.q, attn.k, attn.v)
    kind = type(attn.q)
    if attn.qkv is not None or kind not in (torch.nn.Linear, Float8Linear, Int8DynamicLinear) or any(
            type(m) is not kind or type(m.weight) is not torch.nn.Parameter or m.bias is None for m in parts):
        return
    fused = copy.copy(attn.q)  # same class and settings; every tensor is replaced below
    fused._parameters, fused._buffers = dict(fused._parameters), dict(fused._buffers)
    for name, dim in (("weight", 0), ("bias", 0)) + ((("weight_scale", 1),) if kind is not torch.nn.Linear else ()):
        whole = torch.cat([getattr(m, name) for m in parts], dim=dim)  # weight_scale: [1, out]
        setattr(fused, name, whole if name == "weight_scale" else torch.nn.Parameter(whole, requires_grad=False))
        for m, piece in zip(parts, whole.chunk(3, dim=dim)):
            getattr(m, name).data = piece
    attn.qkv = fused


RECOMPILE_LIMIT = 64  # each loaded model (module types differ: fp8, bf16) and batch size adds variants


def make_fast(model: CausalWan, *, attention: str = "auto", compile: bool = True, cross: str | None = None,
              compile_options: dict | None = None, fused_norms: bool = True) -> str:
    """Explicit setup of the fast path: attention backend, the FFN's GELU as a GEMM epilogue, the Triton
    kernels around the GEMMs (`fused_norms`, where Triton runs), compiled stages. Returns the backend.
    Raises dynamo's recompile limit for the process (a server-wide setting): each loaded model and
    batch size needs its own compiled variants, and past the limit dynamo silently runs eagerly."""
    backend = model.set_attention(attention, cross, compiled=compile)
    for block in model.blocks:  # quantized FFNs keep their own linear
        block.fused_gelu = type(block.ffn[0]) is torch.nn.Linear and type(block.ffn[0].weight) is torch.nn.Parameter
        fuse_qkv(block.self_attn)
        block.fused_norms = fused_norms and kernels.available(model.device) and block.self_attn.qkv is not None
    if fused_norms and not model.blocks[0].fused_norms:
        log.info("norms through inductor: the Triton kernels need triton, a CUDA model and fused q|k|v linears")
    if compile:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        compile_blocks(model, compile_options)
    return backend
