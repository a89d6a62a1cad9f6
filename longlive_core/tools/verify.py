"""Replays recorded reference runs (golden format) and checks every block.

    python -m longlive_core.verify PATH [PATH ...]

Each PATH is a case folder (meta.json, the model files and io.safetensors) or a folder of them; anything else (a
README beside the cases) is skipped with a note. LongLive 1.x cases (golden/, golden_inf/: longlive_base.pt) run
in a StreamSession, LongLive 2.0 cases (golden_v2/: generator_base.pt, `unipc_timesteps` in meta.json) in a
ShotSession. Runs in float32 on the CPU with the
recorded noise, prints one JSON line per case, exits 0 only if every block of every case is within the
tolerance (2 if no case was found).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

from ..errors import ConfigError
from ..fast.setup import make_fast
from ..io.checkpoint import load_model
from ..runtime.schedule import RecordedNoise
from ..runtime.session import StreamSession
from ..runtime.shots import ShotSession, ShotSettings

TOLERANCE = 2e-5
POSITION_MODES = {None: "absolute", "absolute": "absolute", "block_relativistic": "relative"}  # meta.json's "rope"


def run_case(case_dir: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
             lora_strength: float = 1.0, compiled: bool = False, position_mode: str | None = None
             ) -> tuple[torch.Tensor, dict]:
    """Generates a recorded case (through the fast path's compiled stages if asked; in the case's position mode
    unless another is given); returns (latents [B, F, C, h, w], meta)."""
    from safetensors.torch import load_file

    with open(os.path.join(case_dir, "meta.json")) as f:
        meta = json.load(f)
    io = load_file(os.path.join(case_dir, "io.safetensors"))
    model = load_model(os.path.join(case_dir, "longlive_base.pt"), lora_path=os.path.join(case_dir, "lora.pt"),
                       lora_alpha=meta["lora_alpha"], lora_strength=lora_strength, num_heads=meta["model"]["num_heads"], device=device, dtype=dtype)
    if compiled:
        model = make_fast(model, attention="sdpa")
    h, w = meta["latent_hw"]
    session = StreamSession(model, batch=meta["batch"], height=h * 8, width=w * 8,
                            local_attn_size=meta["local_attn_size"], sink_size=meta["sink_size"],
                            noise=RecordedNoise(io["noise"], io["renoise"]),
                            position_mode=position_mode or POSITION_MODES[meta.get("rope")])
    starts = [0, *meta["switch_frame_indices"]]
    session.set_schedule([(s, io[f"prompt_embeds_{i}"]) for i, s in enumerate(starts)])
    blocks = list(session.generate(meta["num_output_frames"]))
    return torch.cat(blocks, dim=1).cpu(), meta


def run_v2_case(case_dir: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                **changes) -> tuple[torch.Tensor, dict]:
    """Generates a recorded LongLive 2.0 case (text-to-video) block by block with its prompts and cuts, with the
    case's settings (ShotSettings fields in `changes` replace them); returns (latents [B, F, 48, h, w], meta)."""
    from safetensors.torch import load_file

    with open(os.path.join(case_dir, "meta.json")) as f:
        meta = json.load(f)
    if meta.get("i2v"):
        raise ConfigError(f"{case_dir}: image-to-video cases do not run yet (LongLive 2.0 image-to-video is not built)")
    io = load_file(os.path.join(case_dir, "io.safetensors"))
    model = load_model(os.path.join(case_dir, "generator_base.pt"), lora_path=os.path.join(case_dir, "lora.pt"),
                       lora_alpha=meta["lora_alpha"], num_heads=meta["model"]["num_heads"], device=device, dtype=dtype)
    inference, block = meta["inference"], meta["num_frame_per_block"]
    settings = ShotSettings(block=block, window=meta["local_attn_size"], sink=inference["sink_size"],
                            shot_sink=inference["multi_shot_sink"], shot_offset=inference["multi_shot_rope_offset"],
                            steps=inference["sampling_steps"], shift=meta["timestep_shift"],
                            shot_clean_recache=inference.get("shot_clean_recache", False))
    settings = dataclasses.replace(settings, **changes)
    noise = io["noise"]
    session = ShotSession(model, batch=meta["batch"], latent_hw=tuple(meta["latent_hw"]), settings=settings,
                          noise=lambda k: noise[:, k * block:(k + 1) * block])
    cuts = set(meta["shot_start_blocks"])
    blocks = [session.make_block(embeds, cut=k in cuts) for k, embeds in enumerate(io["prompt_embeds"])]
    return torch.cat(blocks, dim=1).cpu(), meta


def as_recorded(latents: torch.Tensor) -> torch.Tensor:
    """Upstream's pipeline returns its latents mapped like pixels, (x * 0.5 + 0.5).clamp(0, 1);
    the recorded `output` went through that, so ours is compared after the same map."""
    return (latents * 0.5 + 0.5).clamp(0, 1)


def block_errors(ours: torch.Tensor, ref: torch.Tensor, frames_per_block: int = 3) -> list[float]:
    errs = []
    for start in range(0, ref.shape[1], frames_per_block):
        a, b = ours[:, start:start + frames_per_block].double(), ref[:, start:start + frames_per_block].double()
        errs.append(((a - b).norm() / b.norm()).item())
    return errs


def is_v2_case(case_dir: str) -> bool:
    """LongLive 2.0 cases record their sampler's table (`unipc_timesteps`)."""
    with open(os.path.join(case_dir, "meta.json")) as f:
        return "unipc_timesteps" in json.load(f)


def verify(case_dir: str) -> dict:
    from safetensors.torch import load_file

    ref = load_file(os.path.join(case_dir, "io.safetensors"))["output"]
    if is_v2_case(case_dir):  # the v2 runs recorded their latents as they are
        ours, meta = run_v2_case(case_dir)
        errs = block_errors(ours, ref, meta["num_frame_per_block"])
    else:
        ours, meta = run_case(case_dir)
        errs = block_errors(as_recorded(ours), ref)
    return {"case": meta.get("case", os.path.basename(case_dir.rstrip("/"))), "passed": max(errs) <= TOLERANCE,
            "max_rel_error": max(errs), "block_rel_errors": errs}


def find_cases(paths: list[str]) -> list[str]:
    """The case folders among paths and inside the folders among them; notes what is skipped on stderr."""
    cases = []
    for path in paths:
        if os.path.isfile(os.path.join(path, "meta.json")):
            cases.append(path)
        elif os.path.isdir(path) and (inner := sorted(os.path.join(path, n) for n in os.listdir(path)
                                                      if os.path.isfile(os.path.join(path, n, "meta.json")))):
            cases += inner
        else:
            sys.stderr.write(f"skipping {path}: not a case folder (no meta.json) nor a folder of them\n")
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="case folders (meta.json, *.pt, io.safetensors) or folders of them")
    args = parser.parse_args(argv)
    cases = find_cases(args.paths)
    if not cases:
        sys.stderr.write("no reference case found: give case folders or the folder that holds them\n")
        return 2
    torch.manual_seed(0)
    ok = True
    for case in cases:
        result = verify(case)
        ok &= result["passed"]
        sys.stdout.write(json.dumps(result) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
