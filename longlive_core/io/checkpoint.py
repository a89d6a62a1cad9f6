"""Every checkpoint format users have, mapped to canonical Wan keys in this one module.

- LongLive `longlive_base.pt`: {"generator" | "generator_ema": {"model.<wan key>": tensor}}
- LongLive `lora.pt` (PEFT): {"generator_lora": {"base_model.model.<module>.lora_A.weight": ...}}
- Wan / ComfyUI `.safetensors`, keys optionally behind `model.diffusion_model.` or `model.`
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import struct
import zipfile
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..model.config import WanConfig
from ..model.wan import CausalWan
from ..quant.precision import Precision
from ..runtime.family import FAMILIES, V1, V2

log = logging.getLogger(__name__)

WAN_ROOTS = ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "blocks", "head")
WRAPPER_PREFIXES = ("_fsdp_wrapped_module", "_orig_mod", "module", "model", "diffusion_model", "base_model", "generator")
GENERATOR_KEYS = ("generator", "generator_ema", "state_dict", "model")
FAMILY_NAMES = {f.latent_channels: f.name for f in FAMILIES}
RUNS_ON = "LongLive runs on Wan2.1 T2V 1.3B (LongLive-1.3B) and Wan2.2 TI2V 5B (LongLive-2.0-5B)"


def canonical_key(key: str) -> str:
    """Strips wrapper prefixes (FSDP, compile, LongLive, ComfyUI) down to the Wan module name."""
    parts = [p for p in key.split(".") if p != "_fsdp_wrapped_module"]
    while parts and parts[0] in WRAPPER_PREFIXES and parts[0] not in WAN_ROOTS:
        parts = parts[1:]
    return ".".join(parts)


# --- Reading files -------------------------------------------------------------------------------


def read_tensors(path: str, prefer: str = "generator") -> dict[str, torch.Tensor]:
    """Reads a safetensors or PyTorch file (told apart by content, whatever the name: ComfyUI lists .sft and .ckpt
    too) into a flat {key: tensor} dict (keys as stored)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    kind = file_format(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    if kind is None:
        raise CheckpointError(f"{path}: neither a safetensors file nor a PyTorch checkpoint (its first bytes are "
                              f"{_head(path)[:16]!r}); the file may be truncated or corrupt, download it again")
    return _unwrap(_torch_load(path), path, prefer)


def _head(path: str, size: int = 4096) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def file_format(path: str) -> str | None:
    """'safetensors' (8-byte header length, then a JSON header), 'torch' (a zip archive or a pickle), or None."""
    head = _head(path)
    if len(head) >= 10 and head[8:9] == b"{":
        (length,) = struct.unpack("<Q", head[:8])
        if 2 <= length <= os.path.getsize(path) - 8:
            return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # a zip archive, or a pickle (torch's legacy format)
        return "torch"
    return None


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); the download may be "
                              f"truncated or corrupt, download it again") from exc


def _torch_load(path: str):
    try:
        return _load_mapped(path)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():  # a broken pickle, not a refused one
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint; the file may be truncated or corrupt, "
                                  f"download it again ({exc})") from exc
        raise CheckpointError(f"{path}: this pickle holds more than tensors and needs unsafe loading, which "
                              f"we refuse; export it to .safetensors from trusted code first ({exc})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint; the file may be truncated or "
                              f"corrupt, download it again ({exc})") from exc


def _load_mapped(path: str):
    """mmap keeps a 5 GB checkpoint out of RAM; files in the legacy (pre-zip) format cannot be mapped."""
    if zipfile.is_zipfile(path):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def _unwrap(obj, path: str, prefer: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    for key in (prefer, *GENERATOR_KEYS, "generator_lora"):
        if isinstance(obj.get(key), Mapping):
            return dict(obj[key])
    raise CheckpointError(f"{path}: found no weights; top-level keys are {sorted(obj)[:10]}, expected one of "
                          f"{GENERATOR_KEYS} or a flat state dict")


# --- Base weights -----------------------------------------------------------------------------------


def canonical_state_dict(raw: Mapping[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """Renames keys to Wan names and checks that the file is a model LongLive runs on (FAMILIES)."""
    sd = {canonical_key(k): v for k, v in raw.items()}
    _check_family(sd, path)
    return sd


def _check_family(sd: Mapping[str, torch.Tensor], path: str) -> None:
    if "head.modulation" not in sd or "patch_embedding.weight" not in sd:
        sample = ", ".join(sorted(sd)[:5])
        raise CheckpointError(f"{path}: not a Wan diffusion model (no head.modulation / patch_embedding; keys "
                              f"start with {sample}); {RUNS_ON}: pick one of their files")
    dim, in_dim = sd["patch_embedding.weight"].shape[:2]
    if any(k.startswith("img_emb.") for k in sd) or in_dim == 36:
        raise CheckpointError(f"{path}: this is a Wan image-to-video (I2V) model; {RUNS_ON} (LongLive 2.0 makes "
                              f"image-to-video itself)")
    if dim == 5120:
        raise CheckpointError(f"{path}: this is a Wan 14B model; {RUNS_ON}")
    out_dim = sd["head.head.weight"].shape[0] // 4 if "head.head.weight" in sd else in_dim
    if in_dim not in FAMILY_NAMES or out_dim != in_dim:
        raise CheckpointError(f"{path}: its patch embedding takes {in_dim} latent channels and its head makes "
                              f"{out_dim}; {V1.name} has 16 and 16, {V2.name} 48 and 48: the file is not one of these "
                              f"models")


def check_keys(model: CausalWan, sd: Mapping[str, torch.Tensor], path: str) -> None:
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: keys do not match the {FAMILY_NAMES[model.cfg.in_dim]} network: missing "
                              f"{missing[:10]}{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
                              f"{' ...' if len(unexpected) > 10 else ''}")
    for key, value in model.state_dict().items():
        if tuple(sd[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{path}: {key} has shape {list(sd[key].shape)}, the config expects {list(value.shape)}")


# --- LoRA -------------------------------------------------------------------------------------------


def lora_pairs(raw: Mapping[str, torch.Tensor], path: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """PEFT keys -> {wan module: (A [r, in], B [out, r])}; adapter names like `.default` allowed."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in raw.items():
        parts = key.split(".")
        which = next((p for p in parts if p in ("lora_A", "lora_B")), None)
        if which is None:
            raise CheckpointError(f"{path}: {key} is not a LoRA weight (expected PEFT lora_A / lora_B keys)")
        module = canonical_key(".".join(parts[:parts.index(which)]))
        pairs.setdefault(module, {})[which] = value
    broken = [m for m, p in pairs.items() if len(p) != 2]
    if broken:
        raise CheckpointError(f"{path}: LoRA modules without both lora_A and lora_B: {broken[:5]}")
    for module, p in pairs.items():
        a, b = p["lora_A"], p["lora_B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"{path}: the LoRA of {module} has lora_A {list(a.shape)} and lora_B {list(b.shape)}; "
                                  f"they must be [rank, in] and [out, rank] with one rank: the file is broken")
    return {m: (p["lora_A"], p["lora_B"]) for m, p in pairs.items()}


def merge_lora(sd: dict[str, torch.Tensor], lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]], path: str,
               alpha: float | None = None, strength: float = 1.0) -> None:
    """W += strength * (alpha / rank) * B @ A for every LoRA module (alpha defaults to the rank)."""
    for module, (a, b) in lora.items():
        key = f"{module}.weight"
        if key not in sd:
            raise CheckpointError(f"{path}: LoRA targets {module}, which the model does not have")
        weight = sd[key]
        if (b.shape[0], a.shape[1]) != tuple(weight.shape):
            family = FAMILY_NAMES.get(sd["patch_embedding.weight"].shape[1], "this")
            raise CheckpointError(f"{path}: LoRA for {module} is {b.shape[0]}x{a.shape[1]} but the weight is "
                                  f"{list(weight.shape)}; the LoRA belongs to another model than the {family} one "
                                  f"loaded: pick the LoRA made for it")
        rank = a.shape[0]
        scale = strength * (rank if alpha is None else alpha) / rank
        sd[key] = (weight.float() + scale * (b.float() @ a.float())).to(weight.dtype)


# --- Building the model ---------------------------------------------------------------------------


def stored_num_heads(path: str) -> int | None:
    """Head count written by export_safetensors (shapes cannot tell it), if any."""
    if file_format(path) != "safetensors":
        return None
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        heads = (f.metadata() or {}).get("longlive_num_heads")
    if heads is None:
        return None
    if not str(heads).isdigit() or int(heads) < 1:
        raise CheckpointError(f"{path}: its metadata says longlive_num_heads={heads!r}, which is not a positive whole "
                              f"number; export the file again with export_safetensors")
    return int(heads)


def load_model(path: str, *, lora_path: str | None = None, lora_strength: float = 1.0,
               lora_alpha: float | None = None, num_heads: int | None = None, device="cpu",
               dtype: torch.dtype = torch.bfloat16, precision: Precision | None = None,
               prefer: str = "generator") -> CausalWan:
    """Loads a LongLive / Wan2.1 checkpoint (+ optional LoRA merged at load) into a CausalWan, in `dtype`, or in a
    precision's dtype with its quantization applied."""
    if not math.isfinite(lora_strength):
        raise CheckpointError(f"lora_strength={lora_strength} is not a finite number; use e.g. 1.0")
    sd = canonical_state_dict(read_tensors(path, prefer), path)
    cfg = WanConfig.from_state_dict(sd, num_heads=num_heads or stored_num_heads(path))
    lora = lora_pairs(read_tensors(lora_path, "generator_lora"), lora_path) if lora_path else {}
    merge_lora(sd, lora, lora_path, lora_alpha, lora_strength)
    with torch.device("meta"):
        model = CausalWan(cfg)
    check_keys(model, sd, path)
    model.load_state_dict(sd, assign=True)
    model = model.to(device=device, dtype=precision.dtype if precision else dtype).eval().requires_grad_(False)
    check_finite(model, lora, path, lora_path)
    if precision is not None:
        precision.apply(model)
    model.set_attention("sdpa")
    log.info("loaded %s (%d layers, dim %d, %d heads)%s", os.path.basename(path), cfg.num_layers, cfg.dim,
             cfg.num_heads, f" + LoRA {os.path.basename(lora_path)} x{lora_strength}" if lora_path else "")
    return model


def check_finite(model: CausalWan, lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]], path: str,
                 lora_path: str | None) -> None:
    """Refuses weights holding NaN or infinity (one reduction on the model's device; the names only if one does),
    naming the file they came from: the LoRA where its factors of that module are not finite, else the model."""
    params = dict(model.named_parameters())
    if torch.stack([t.isfinite().all() for t in params.values()]).all():
        return
    bad = [name for name, t in params.items() if not t.isfinite().all()]
    modules = [name.removesuffix(".weight") for name in bad]
    culprit = next((m for m in modules if m in lora and not all(t.isfinite().all() for t in lora[m])), None)
    source, where = (lora_path, culprit) if culprit else (path, bad[0])
    raise CheckpointError(f"{source}: {where} holds NaN or infinite values ({len(bad)} weight tensors of the model "
                          f"do); the file is broken: download or export it again")


QUANTIZED_DTYPES = (torch.int8, torch.float8_e4m3fn)


def export_safetensors(model: CausalWan, path: str) -> None:
    """Writes the (merged) weights with canonical Wan keys, loadable by load_model and ComfyUI. A quantized model
    is refused: quantizing at load takes a fraction of a second (0.3 s for FP8 on the H100), so files stay 16-bit."""
    from safetensors.torch import save_file

    state = model.state_dict()
    quantized = [k for k, v in state.items() if type(v) is not torch.Tensor or v.dtype in QUANTIZED_DTYPES]
    if quantized:
        raise CheckpointError(f"{path}: the model's linears are quantized ({quantized[0]} and {len(quantized) - 1} "
                              "more); export it unquantized (load it in bf16), and quantize at load")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, path, metadata={"format": "pt", "longlive_num_heads": str(model.cfg.num_heads)})
