"""Run by tests/test_gpu.py in a process of its own (ComfyUI on a GPU, its CUDA allocator chosen before CUDA starts):

    PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync python tests/umt5_child.py

Imports ComfyUI as its server does on a GPU (no --cpu), loads the pack as a custom node and encodes texts through the
schedule's `encode` with a tiny umt5 CLIP made from ComfyUI's own classes in its scaled-FP8 format. Each step records
which encoder ran (ComfyUI's runs its T5 module; the engine's does not), the embeddings' distance from ComfyUI's
encode of the padded text, and the engine's cached graphs; it prints one JSON line. Steps: plain texts (the engine's,
graphs captured once), a weighted text (ComfyUI's), the text encoder unloaded and loaded again (new weights'
addresses: new graphs), an out-of-memory in the engine (ComfyUI's for that text, the engine's again after), any
other failure (ComfyUI's from then on).
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch

TESTS = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]
from test_nodes_inprocess import comfy_dir, load_pack, tiny_umt5_clip  # noqa: E402

TEXT = "a corgi runs along a sunny beach as the waves roll in"


def import_comfy():
    """ComfyUI's modules with its default arguments (a GPU), as the comfy fixture imports them with --cpu."""
    sys.path.insert(0, str(comfy_dir()))
    argv, sys.argv = sys.argv, sys.argv[:1]
    import comfy.options

    comfy.options.enable_args_parsing()
    import utils.extra_config  # noqa: F401
    import comfy.sd  # noqa: F401

    sys.argv = argv


def step(clip, schedule, text: str) -> dict:
    """The schedule's embeddings of the text against ComfyUI's, which encoder made them, and the engine's graphs."""
    transformer = clip.cond_stage_model.umt5xxl.transformer
    runs = []
    hook = transformer.register_forward_pre_hook(lambda *_: runs.append(1))
    try:
        got = schedule.encode(clip, text)
    finally:
        hook.remove()
    want = clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]
    kept = schedule._ENGINE_UMT5.get(transformer)
    addresses = tuple(p.data_ptr() for p in transformer.parameters())
    return {"text": text, "comfyui_runs": len(runs), "rel": ((got - want).norm() / want.norm()).item(),
            "shape_equal": got.shape == want.shape, "graphed": None if kept is None or kept[1] is None else
            id(kept[1]), "buckets": sorted(kept[1].graphs) if kept and kept[1] else [],
            "kept_addresses_current": kept is not None and kept[0] == addresses, "addresses": hash(addresses),
            "failed": schedule._ENGINE_UMT5_FAILED, "weights_on": str(next(transformer.parameters()).device)}


def fail_engine_with(graphed_class, error: Exception):
    """The engine's graphs raise the error on their next call (an out-of-memory, a bug)."""
    call = graphed_class.__call__

    def failing(self, ids, encoder):
        graphed_class.__call__ = call
        raise error

    graphed_class.__call__ = failing


def main() -> None:
    import_comfy()
    import comfy.model_management as mm

    load_pack()
    from longlive_pack.longlive_core import GraphedUmt5
    from longlive_pack.nodes import schedule

    clip = tiny_umt5_clip({"dtype": torch.float32, "scaled_fp8": torch.float8_e4m3fn}, std=0.1)
    steps = {"plain": step(clip, schedule, TEXT), "plain_again": step(clip, schedule, "the quick brown fox jumps"),
             "long": step(clip, schedule, " ".join(["the quick brown fox jumps over the lazy dog"] * 6)),
             "weighted": step(clip, schedule, "a (corgi:1.4) runs along a sunny beach")}
    mm.unload_all_models()
    held = [torch.empty_like(p, device=mm.get_torch_device())  # where the weights were
            for p in clip.cond_stage_model.umt5xxl.transformer.parameters()]
    steps["reloaded"] = step(clip, schedule, "a corgi digs in the sand")
    del held
    fail_engine_with(GraphedUmt5, torch.OutOfMemoryError("CUDA out of memory (a test's)"))
    steps["out_of_memory"] = step(clip, schedule, "the waves roll in at dusk")
    steps["after_out_of_memory"] = step(clip, schedule, "the sun sets behind him")
    fail_engine_with(GraphedUmt5, RuntimeError("a bug (a test's)"))
    steps["failed"] = step(clip, schedule, "he starts to run towards the camera")
    steps["after_failure"] = step(clip, schedule, "a boy plays on a sunny lawn")
    print(json.dumps({"device": str(mm.get_torch_device()), "allocator": torch.cuda.get_allocator_backend(),
                      "steps": steps}))


if __name__ == "__main__":
    main()
