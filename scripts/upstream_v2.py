"""Upstream LongLive 2.0's own inference code, timed on random full-size weights, to compare with our engine's
LongLive 2.0 rows (`python -m longlive_core.bench --rows v2`) in the same device call.

Nothing of upstream is committed: its folders come from a clone into an ignored folder, with the wheels its imports
need that the GPU machine lacks (omegaconf, imported and unused on this path, gets a stub here):

    git --git-dir=CLONE archive HEAD pipeline utils wan_5b | tar -x -C .gpu/upstream
    pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/upstream_wheels diffusers ftfy wcwidth
    python scripts/upstream_v2.py --upstream .gpu/upstream --wheels .gpu/upstream_wheels [--compile] [--json PATH]

It builds upstream's CausalDiffusionInferencePipeline as its inference.py does for LongLive-2.0-5B (704x1280, 8-frame
blocks, window 32, sink 8, multi-shot sink, RoPE offset 8 a shot, 4 UniPC steps, bf16; FlashAttention-3 through
LLV2_USE_FA3=1 and the fa3-fwd wheel under the name upstream imports), with random weights in place of the
checkpoint, fixed random prompt embeddings in place of umt5 and no VAE (latents only: denoising throughput). A scene
cut starts block 5, as in our bench. Block times are CUDA events recorded where upstream starts a block (its
scheduler set-up) and after the run; the first run warms up (and compiles, with --compile: upstream's `auto` compiles
only quantized models, so bf16 runs eager unless asked), the second is the one reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import statistics
import sys
import tempfile
import types
import zipfile

log = logging.getLogger("upstream_v2")

TI2V_5B = dict(model_type="ti2v", in_dim=48, out_dim=48, dim=3072, ffn_dim=14336, num_heads=24, num_layers=30,
               text_len=512, freq_dim=256, eps=1e-6)
BLOCKS, CUT_BLOCK, BLOCK = 8, 5, 8
LATENT_HW = (44, 80)  # 704x1280
TEXT_DIM = 4096  # umt5-xxl's embeddings
OMEGACONF_STUB = '''"""Stub: upstream's utils/config.py imports OmegaConf; the inference path never calls it."""


class OmegaConf:
    @staticmethod
    def create(*args, **kwargs):
        raise NotImplementedError("omegaconf is stubbed for scripts/upstream_v2.py")

    merge = create
'''


class Args(dict):
    """Upstream reads its config both as attributes and as a mapping (`.get`, `in`)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def prepare_imports(upstream: pathlib.Path, wheels: pathlib.Path | None) -> None:
    """Upstream first on sys.path (ComfyUI's own `utils` package must not shadow it), the wheels unpacked beside it,
    the stubs for what is imported and unused."""
    extra = pathlib.Path(tempfile.mkdtemp(prefix="upstream_v2_"))
    for wheel in sorted(wheels.glob("*.whl")) if wheels else []:
        zipfile.ZipFile(wheel).extractall(extra)
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        (extra / "omegaconf.py").write_text(OMEGACONF_STUB)
    try:
        import flash_attn_interface  # noqa: F401
    except ImportError:
        (extra / "flash_attn_interface.py").write_text("from fa3_fwd_interface import *  # noqa: F401,F403\n"
                                                      "from fa3_fwd_interface import flash_attn_varlen_func  # noqa: F401\n")
    try:
        import torchvision.io
    except ImportError:  # its dataset module imports torchvision's transforms, used only by training
        _write_stub_package(extra / "torchvision", ("io", "transforms", "transforms/functional"))
    else:
        if not hasattr(torchvision.io, "write_video"):  # dropped by newer releases
            torchvision.io.write_video = _unused("torchvision.io.write_video")
    sys.path[:0] = [str(upstream), str(extra)]
    for name in [m for m in sys.modules if m == "utils" or m.startswith("utils.")]:
        del sys.modules[name]
    package = types.ModuleType("pipeline")  # its __init__ imports the training pipeline too: skipped
    package.__path__ = [str(upstream / "pipeline")]
    sys.modules["pipeline"] = package
    from transformers.models.x_clip import modeling_x_clip  # upstream imports a training loss newer releases dropped

    if not hasattr(modeling_x_clip, "x_clip_loss"):
        modeling_x_clip.x_clip_loss = _unused("x_clip_loss")


def _write_stub_package(root: pathlib.Path, modules: tuple[str, ...]) -> None:
    """A package whose modules give a stub for any name (PEP 562): imports succeed, calls raise."""
    body = ("import sys\n_here = sys.modules[__name__]\n\n\ndef __getattr__(name):\n"
            "    if name.startswith('__'):\n        raise AttributeError(name)\n"
            "    def unused(*args, **kwargs):\n"
            "        raise NotImplementedError(f'{__name__}.{name} is stubbed for scripts/upstream_v2.py')\n"
            "    return unused\n")
    for module in ("", *modules):
        path = root / module / "__init__.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)


def _unused(name: str):
    def call(*args, **kwargs):
        raise NotImplementedError(f"{name} is stubbed for scripts/upstream_v2.py (upstream's inference does not call it)")

    return call


def build(compile_model: bool):
    import torch
    import torch.nn as nn
    from pipeline.causal_diffusion_inference import CausalDiffusionInferencePipeline
    from wan_5b.modules import attention
    from wan_5b.modules.causal_model import CausalWanModel

    if not getattr(attention, "FLASH_ATTN_3_AVAILABLE", False):
        raise RuntimeError("upstream found no FlashAttention-3 (flash_attn_interface): carry the fa3-fwd wheel")

    def random_5b(cls, _path, **kwargs):
        with torch.device("cuda"):
            model = cls(**TI2V_5B, **kwargs)
        nn.init.normal_(model.head.head.weight, std=0.02)  # upstream's init zeroes the head
        return model

    CausalWanModel.from_pretrained = classmethod(random_5b)

    class RandomText(nn.Module):
        def __init__(self):
            super().__init__()
            gen = torch.Generator(device="cuda").manual_seed(0)
            self.embeds = torch.randn(1, 512, TEXT_DIM, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.1

        def forward(self, text_prompts):
            return {"prompt_embeds": self.embeds.expand(len(text_prompts), -1, -1).contiguous()}

    args = Args(model_kwargs=Args(model_name="Wan2.2-TI2V-5B", timestep_shift=5.0, num_frame_per_block=BLOCK,
                                  local_attn_size=32),
                num_frame_per_block=BLOCK, timestep_shift=5.0, image_or_video_shape=[1, BLOCKS * BLOCK, 48, *LATENT_HW],
                inference=Args(sampling_steps=4, sink_size=8, guidance_scale=1.0, multi_shot_sink=True,
                               multi_shot_rope_offset=8, streaming_vae=False))
    pipe = CausalDiffusionInferencePipeline(args, "cuda", text_encoder=RandomText(), vae=nn.Identity())
    pipe.generator.to("cuda", torch.bfloat16).eval().requires_grad_(False)
    if compile_model:
        torch._dynamo.config.recompile_limit = 512
        torch._dynamo.config.accumulated_recompile_limit = 8192
        pipe.generator.configure_torch_compile(mode="max-autotune-no-cudagraphs", dynamic=False, suppress_errors=False)
    return pipe


def timed_run(pipe, prompts: list[str]) -> list[float]:
    """One video; the time of each block (ms, CUDA events)."""
    import torch

    starts = []
    setup = pipe._initialize_sample_scheduler

    def mark_block(noise):  # upstream sets up its scheduler at the start of every block
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        starts.append(event)
        return setup(noise)

    pipe._initialize_sample_scheduler = mark_block
    gen = torch.Generator(device="cuda").manual_seed(0)
    noise = torch.randn(1, BLOCKS * BLOCK, 48, *LATENT_HW, device="cuda", generator=gen, dtype=torch.bfloat16)
    pipe.clear_cache()
    with torch.inference_mode():
        pipe.inference(noise=noise, text_prompts=[prompts], return_latents=True)
    end = torch.cuda.Event(enable_timing=True)
    end.record()
    torch.cuda.synchronize()
    pipe._initialize_sample_scheduler = setup
    return [a.elapsed_time(b) for a, b in zip(starts, starts[1:] + [end])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", type=pathlib.Path, required=True, help="upstream's pipeline, utils and wan_5b")
    parser.add_argument("--wheels", type=pathlib.Path, help="wheels to unpack for upstream's imports")
    parser.add_argument("--compile", action="store_true", help="torch.compile upstream's model (its own set-up)")
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("upstream_v2.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not (args.upstream / "pipeline" / "causal_diffusion_inference.py").exists():
        parser.error(f"--upstream {args.upstream}: no pipeline/causal_diffusion_inference.py there (see the usage)")
    os.environ.setdefault("LLV2_USE_FA3", "1")  # read when upstream's attention module is imported
    prepare_imports(args.upstream.resolve(), args.wheels)
    import torch
    from utils.dataset import DEFAULT_SCENE_CUT_PREFIX

    pipe = build(args.compile)
    prompts = ["a"] * CUT_BLOCK + [DEFAULT_SCENE_CUT_PREFIX + "b"] * (BLOCKS - CUT_BLOCK)
    warm = timed_run(pipe, prompts)
    torch.cuda.reset_peak_memory_stats()
    ms = timed_run(pipe, prompts)
    steady = statistics.median(m for i, m in enumerate(ms) if i >= 3 and i != CUT_BLOCK)
    failed = getattr(getattr(pipe.generator, "_compiled_model_call", None), "failed", None)
    row = {"row": f"upstream LongLive 2.0 {'compiled' if args.compile else 'eager'} bf16 (FA3) w32 s8 704x1280",
           "ms_per_block": steady, "pixel_fps": 4 * BLOCK * 1e3 / steady, "block_ms_all": ms, "warm_up_block_ms": warm,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "compile_failed": failed,
           "torch": torch.__version__, "device": torch.cuda.get_device_name()}
    args.json.write_text(json.dumps(row, indent=1))
    print(f"| {row['row']} | {steady:.1f} ms/block | {row['pixel_fps']:.1f} pixel fps | peak {row['peak_gib']:.2f} GiB "
          f"| compile failed: {failed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
