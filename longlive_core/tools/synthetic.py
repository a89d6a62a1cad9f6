"""Random-weight models in the real file formats, for tests, demos and benchmarks.

    python -m longlive_core.tools.synthetic MODEL.pt LORA.pt    (the tiny model the main job runs without weights)
"""

from __future__ import annotations

import argparse
import os

import torch

from ..model.config import WanConfig
from ..model.wan import CausalWan

TINY = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32)
TINY_FILES = WanConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=2, text_dim=32)  # the main job's tiny model
TINY_V2 = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, in_dim=48, out_dim=48)  # LongLive 2.0


def random_model(cfg: WanConfig = WanConfig(), seed: int = 0, device="cpu", dtype=torch.bfloat16,
                 std: float = 0.02) -> CausalWan:
    """A CausalWan with random weights: N(0, std) (drawn in fp32, then cast), norm weights at 1."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        model = CausalWan(cfg)
    model = model.to_empty(device=device).float()
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.data.fill_(1.0)
        elif name.endswith("bias"):
            p.data.zero_()
        else:
            p.data.normal_(0.0, std, generator=gen)
    model = model.to(dtype=dtype).eval().requires_grad_(False)
    model.set_attention("sdpa")
    return model


def write_longlive_checkpoint(model: CausalWan, path: str, key: str = "generator") -> None:
    """Saves weights as LongLive's longlive_base.pt: {key: {"model.<wan key>": tensor}}."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sd = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({key: sd}, path)


def write_lora(model: CausalWan, path: str, rank: int = 4, seed: int = 1, std: float = 0.1) -> None:
    """Saves a random PEFT LoRA (factors N(0, std)) on every linear inside the blocks, as LongLive's lora.pt."""
    gen = torch.Generator().manual_seed(seed)
    lora = {}
    for name, module in model.blocks.named_modules():
        if isinstance(module, torch.nn.Linear):
            out_f, in_f = module.weight.shape
            prefix = f"base_model.model.blocks.{name}"
            lora[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen) * std
            lora[f"{prefix}.lora_B.weight"] = torch.randn(out_f, rank, generator=gen) * std
    torch.save({"generator_lora": lora}, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="where to write the LongLive checkpoint (longlive_base.pt format)")
    parser.add_argument("lora", help="where to write its LoRA (lora.pt format, rank 4)")
    parser.add_argument("--v2", help="also a tiny LongLive 2.0 checkpoint (48 latent channels) here")
    args = parser.parse_args(argv)
    model = random_model(TINY_FILES, dtype=torch.float32, std=0.1)
    write_longlive_checkpoint(model, args.model)
    write_lora(model, args.lora, rank=4)
    if args.v2:
        write_longlive_checkpoint(random_model(TINY_V2, dtype=torch.float32, std=0.3), args.v2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
