"""The explicit set-up of the real-time path: make_fast turns an eager model into a FastWan (fused blocks where the
Triton kernels run, the attention backend, compiled dense stages). CUDA graphs come per session (runner.py).

torch.compile only fuses (no cudagraphs mode), and only the three dense stages of a layer (the first one writes the
KV cache); attention stays outside. All layers share the compiled code (modules are inputs).
"""

from __future__ import annotations

import logging

from ..kernels import ops
from ..model.fused import FastWan
from ..model.wan import CausalWan, Stages
from .compile import compiled, unavailable

log = logging.getLogger(__name__)


def make_fast(model: CausalWan, *, attention: str = "auto", compile: bool = True, cross: str | None = None,
              compile_options: dict | None = None, fused: bool = True) -> FastWan:
    """The fast model on `model`'s weights (the eager model is left as it is): the attention backend, the fused
    blocks where Triton runs and the precision fuses q|k|v (`fused`), the dense stages compiled where the precision
    compiles (`compile`; `compile_options`: inductor settings). The default mode keeps cuBLAS for the GEMMs and fuses
    the rest around them; max-autotune costs minutes per shape for little gain at these sizes. The first shape
    compiles static (the steady block); a second one makes dynamo compile a dynamic variant that serves every later
    shape (recache chunks, batches)."""
    fuse, can_compile = _what_runs(model, fused, compile)
    fast = FastWan.of(model, fuse)
    fast.set_attention(attention, cross, fast=can_compile)
    if can_compile and model.precision.compilable:
        fast.stages = compile_stages(fast.stages, compile_options)
        log.info("compiled the dense stages of %d layers (%s)", len(fast.blocks), compile_options or "default")
    return fast


def _what_runs(model: CausalWan, fused: bool, compile: bool) -> tuple[bool, bool]:
    """(fused blocks, torch.compile) as asked where this machine runs them; one log line says what falls back and
    why (eager blocks and uncompiled stages still run under CUDA graphs)."""
    precision, triton = model.precision, ops.available(model.device)
    no_compile = unavailable(model.device) if compile else None
    notes = []
    if fused and not (triton and precision.fuses_qkv):
        need = (f"q, k and v linears that concatenate, not {precision.name}'s" if triton else
                "the triton package and a CUDA model")
        notes.append(f"eager blocks (the fused ones need {need})")
    if no_compile:
        notes.append(f"stages not compiled ({no_compile})")
    if notes:
        log.info("LongLive fast path: %s; CUDA graphs still capture where they run", "; ".join(notes))
    return fused and triton and precision.fuses_qkv, compile and not no_compile

def compile_stages(stages: Stages, options: dict | None = None) -> Stages:
    return Stages(*(compiled(fn, fullgraph=True, options=options) for fn in
                    (stages.self_qkv, stages.self_out_cross_q, stages.cross_out_ffn)))
