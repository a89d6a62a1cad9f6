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
from .compile import compiled

log = logging.getLogger(__name__)


def make_fast(model: CausalWan, *, attention: str = "auto", compile: bool = True, cross: str | None = None,
              compile_options: dict | None = None, fused: bool = True) -> FastWan:
    """The fast model on `model`'s weights (the eager model is left as it is): the attention backend, the fused
    blocks where Triton runs and the precision fuses q|k|v (`fused`), the dense stages compiled where the precision
    compiles (`compile`; `compile_options`: inductor settings). The default mode keeps cuBLAS for the GEMMs and fuses
    the rest around them; max-autotune costs minutes per shape for little gain at these sizes. The first shape
    compiles static (the steady block); a second one makes dynamo compile a dynamic variant that serves every later
    shape (recache chunks, batches)."""
    precision = model.precision
    can_fuse = ops.available(model.device) and precision.fuses_qkv
    if fused and not can_fuse:
        need = ("a precision whose q, k and v linears concatenate" if ops.available(model.device) else
                "the triton package and a CUDA model")
        log.info("LongLive runs the eager blocks: the fused ones need %s (precision %s)", need, precision.name)
    fast = FastWan.of(model, fused and can_fuse)
    fast.set_attention(attention, cross, fast=compile)
    if compile and precision.compilable:
        fast.stages = compile_stages(fast.stages, compile_options)
        log.info("compiled the dense stages of %d layers (%s)", len(fast.blocks), compile_options or "default")
    return fast


def compile_stages(stages: Stages, options: dict | None = None) -> Stages:
    return Stages(*(compiled(fn, fullgraph=True, options=options) for fn in
                    (stages.self_qkv, stages.self_out_cross_q, stages.cross_out_ffn)))
