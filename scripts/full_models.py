"""Writes full-size random-weight files of every model the shipped workflows load, in the formats users have:

    python scripts/full_models.py MODELS_DIR [--v2]   (with ComfyUI and this repository on PYTHONPATH: host.child_env;
                                                       a CUDA GPU draws the weights)

- diffusion_models/longlive_base.pt: LongLive-1.3B's layout ({"generator": {"model.<wan key>": bf16}});
- loras/lora.pt: LongLive's PEFT LoRA on every linear of the blocks, rank 256;
- text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors: umt5-xxl in ComfyUI's scaled-FP8 layout (e4m3 linears
  with their scale_weight, bf16 embedding and norms, the `scaled_fp8` marker), keys taken from ComfyUI's own T5
  class, and a small sentencepiece tokenizer trained here on the workflows' prompts under `spiece_model`;
- vae/wan_2.1_vae.safetensors: a Wan 2.1 VAE of width 96 from ComfyUI's WanVAE class (scripts/tiny_vae.py), and
  vae_approx/lighttaew2_1.safetensors (Wan 2.1's tiny decoder, ComfyUI's TAEHV);
- with --v2, LongLive 2.0's: diffusion_models/model_bf16.pt (LongLive-2.0-5B's merged layout, the Wan2.2-TI2V-5B
  shapes, 10 GB in bf16), vae/wan2.2_vae.safetensors (the Wan 2.2 VAE at the full width ComfyUI builds) and
  vae_approx/lighttaew2_2.safetensors (Wan 2.2's tiny decoder, ComfyUI's TAEHV).

The videos are noise; sizes, shapes, dtypes and load paths are the real ones. Files that exist are kept.
"""

from __future__ import annotations

import io
import json
import logging
import pathlib
import subprocess
import sys

from host import REPO, child_env

log = logging.getLogger("longlive.full_models")
UMT5_LAYERS = 24


def write_longlive(models: pathlib.Path, device: str) -> None:
    import torch

    from longlive_core.tools.synthetic import random_model, write_longlive_checkpoint, write_lora

    model_path, lora_path = models / "diffusion_models" / "longlive_base.pt", models / "loras" / "lora.pt"
    if model_path.exists() and lora_path.exists():
        return
    model = random_model(device=device, dtype=torch.bfloat16)
    write_longlive_checkpoint(model, str(model_path))
    lora_path.parent.mkdir(parents=True, exist_ok=True)
    write_lora(model, str(lora_path), rank=256, std=0.01)


def write_longlive_2(models: pathlib.Path, device: str) -> None:
    import torch

    from longlive_core.model.config import LONGLIVE_2_5B
    from longlive_core.tools.synthetic import random_model, write_longlive_checkpoint

    path, vae = models / "diffusion_models" / "model_bf16.pt", models / "vae" / "wan2.2_vae.safetensors"
    if not path.exists():
        write_longlive_checkpoint(random_model(LONGLIVE_2_5B, device=device, dtype=torch.bfloat16), str(path))
    for file, kind in ((vae, "wan2.2"), (models / "vae_approx" / "lighttaew2_2.safetensors", "taew2_2")):
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, str(REPO / "scripts" / "tiny_vae.py"), str(file), kind], check=True,
                           env=child_env())


def prompts() -> list[str]:
    """Every prompt text in the shipped workflows, for the tokenizer's training corpus."""
    texts = []
    for path in sorted((REPO / "workflows" / "api").glob("*.json")):
        for node in json.loads(path.read_text()).values():
            texts += [line.split(":", 1)[-1].strip() for line in str(node["inputs"].get("schedule", "")).splitlines()]
    return [t for t in texts if t]


def tokenizer_bytes() -> bytes:
    """A unigram sentencepiece model with umt5's special ids (pad 0, eos 1, unk 2)."""
    import sentencepiece

    corpus = prompts() * 20 + ["the quick brown fox jumps over the lazy dog in the evening light"] * 20
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=out, vocab_size=200,
                                             pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
                                             minloglevel=2)
    return out.getvalue()


def umt5_shapes() -> dict:
    """Key -> shape of ComfyUI's umt5-xxl encoder (its T5 class on the meta device)."""
    import torch

    import comfy.ops
    import comfy.text_encoders.t5

    config = json.loads((pathlib.Path(comfy.text_encoders.t5.__file__).parent / "umt5_config_xxl.json").read_text())
    with torch.device("meta"):
        t5 = comfy.text_encoders.t5.T5(config, torch.bfloat16, "meta", comfy.ops.manual_cast)
    return {k: tuple(v.shape) for k, v in t5.state_dict().items()}


def write_umt5(models: pathlib.Path, device: str) -> None:
    import torch
    from safetensors.torch import save_file

    path = models / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    if path.exists():
        return
    shapes = umt5_shapes()
    gen = torch.Generator(device).manual_seed(0)
    sd = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn),
          "spiece_model": torch.frombuffer(bytearray(tokenizer_bytes()), dtype=torch.uint8)}
    for key, shape in shapes.items():
        if key.endswith("norm.weight"):
            sd[key] = torch.ones(shape, dtype=torch.bfloat16)
        elif len(shape) == 2 and ".layer." in key and "relative_attention_bias" not in key:
            # e4m3 values of N(0, 1), scale 0.02 / sqrt(fan-in / 4096): the weights ComfyUI computes with
            sd[key] = torch.randn(shape, device=device, generator=gen).to(torch.float8_e4m3fn).cpu()
            sd[key.removesuffix("weight") + "scale_weight"] = torch.tensor(0.02 * (4096 / shape[1]) ** 0.5)
        else:  # the embedding and the relative position biases stay 16-bit, as in the released file
            sd[key] = (torch.randn(shape, device=device, generator=gen) * 0.5).to(torch.bfloat16).cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))


def write_vae(models: pathlib.Path) -> None:
    for path, kind in ((models / "vae" / "wan_2.1_vae.safetensors", "96"),
                       (models / "vae_approx" / "lighttaew2_1.safetensors", "taew2_1")):
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, str(REPO / "scripts" / "tiny_vae.py"), str(path), kind], check=True,
                           env=child_env())


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models, v2 = pathlib.Path(sys.argv[1]).resolve(), "--v2" in sys.argv[2:]
    sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI's modules parse arguments; the weights are drawn on the GPU
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    write_vae(models)
    write_longlive(models, device)
    write_umt5(models, device)
    if v2:
        write_longlive_2(models, device)
    for f in sorted(models.rglob("*.*")):
        log.info("%8.2f GB  %s", f.stat().st_size / 1e9, f.relative_to(models))


if __name__ == "__main__":
    main()
