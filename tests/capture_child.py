"""Run by tests/test_gpu.py in a process of its own (the CUDA allocator is chosen per process, before CUDA starts):

    PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync python tests/capture_child.py [--fail-capture | --break-capture |
        --fp8]

Streams a small model eagerly and on the fast path (compiled, Triton kernels, graphs captured by warm_up), captures
the VAE head's Triton kernel on inputs made inside the capture, and prints one JSON line; --fail-capture makes the
fused norm kernel raise inside every capture, as a bug would; --break-capture makes it synchronize there, which
CUDA forbids during a capture and which invalidates it. The process must end normally either way. --fp8 streams
the model as the loader makes it with precision fp8 and attention 'flash-attn 3 fp8' (FP8 linears, the FP8 cache).
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from longlive_core import StreamSession, WanConfig  # noqa: E402
from longlive_core.fast import graphs  # noqa: E402
from longlive_core.fast.runner import GraphRunner, warm_up  # noqa: E402
from longlive_core.fast.setup import make_fast  # noqa: E402
from longlive_core.kernels import ops as kernels  # noqa: E402
from longlive_core.quant.precision import resolve as resolve_precision  # noqa: E402
from longlive_core.tools.synthetic import random_model  # noqa: E402
from longlive_core.vae.head import causal_conv3d_narrow  # noqa: E402

CFG = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=4, text_dim=64)


def stream(model, fast: bool) -> tuple[torch.Tensor, StreamSession]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    prompts = [torch.randn(1, 30, CFG.text_dim, device="cuda", generator=gen) for _ in range(2)]
    session = StreamSession(model, height=128, width=192, seed=3, runner=GraphRunner(model) if fast else None)
    if fast:
        warm_up(session)
    session.set_schedule([(0, prompts[0]), (3 * 8, prompts[1])])
    return torch.cat(list(session.generate(3 * 14)), 1).float(), session


def fail_inside_captures(how: str) -> None:
    norm = kernels._norm

    def failing(*args, **kwargs):
        if torch.cuda.is_current_stream_capturing():
            if how == "--break-capture":
                torch.cuda.synchronize()  # raises, and the capture is invalidated
            raise RuntimeError("injected capture failure")
        return norm(*args, **kwargs)

    kernels._norm = failing


def head_kernel_in_a_graph() -> float | str:
    """The RGB head's kernel on a tensor allocated inside the capture, replayed, against conv3d."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    cache, x = (torch.randn(1, 32, n, 40, 56, device="cuda", generator=gen, dtype=torch.bfloat16) for n in (2, 4))
    weight = torch.randn(3, 32, 3, 3, 3, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.1
    bias = torch.randn(3, device="cuda", generator=gen, dtype=torch.bfloat16)
    eager = causal_conv3d_narrow(cache, x * 2, weight, bias)
    try:
        graph, out = graphs.capture(lambda: causal_conv3d_narrow(cache, x * 2, weight, bias), x.device)
    except graphs.CaptureError as exc:
        return str(exc)
    graph.replay()
    return ((out.float() - eager.float()).norm() / eager.float().norm()).item()


def main() -> None:
    fp8 = sys.argv[1:] == ["--fp8"]
    model = random_model(CFG, device="cuda", dtype=torch.bfloat16, std=0.05)
    if fp8:
        resolve_precision("fp8", model.device).apply(model)
    eager, _ = stream(model, fast=False)
    fast_model = make_fast(model, attention="flash-attn 3 fp8" if fp8 else "auto")
    if sys.argv[1:] in (["--fail-capture"], ["--break-capture"]):
        fail_inside_captures(sys.argv[1])
    fast, session = stream(fast_model, fast=True)
    head = head_kernel_in_a_graph()
    print(json.dumps({"allocator": torch.cuda.memory.get_allocator_backend(), "graphs": len(session.runner.graphs),
                      "failed": session.runner.failed, "rel": ((fast - eager).norm() / eager.norm()).item(),
                      "head": head, "finite": bool(torch.isfinite(fast).all())}))


if __name__ == "__main__":
    main()
