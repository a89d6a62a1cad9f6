"""LongLive Model Loader: a LongLive 1.x or 2.0 file (+ LoRA) -> LONGLIVE_MODEL."""

from __future__ import annotations

import logging
import math

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io

from ..longlive_core import (BACKENDS, PRECISIONS, ConfigError, load_model, make_fast, resolve_device,
                             resolve_precision)
from .state import LongLiveModel, device_error, device_input, first_error

log = logging.getLogger("longlive")
ModelType = io.Custom("LONGLIVE_MODEL")
NO_LORA = "none"
LONGLIVE_REPO = "huggingface.co/Efficient-Large-Model/LongLive-1.3B"
LONGLIVE_2_REPO = "huggingface.co/Efficient-Large-Model/LongLive-2.0-5B"


class ModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongLive_ModelLoader", display_name="LongLive Model Loader", category="LongLive",
            description="Loads LongLive-1.3B (longlive_base.pt, a merged .safetensors, or a Wan2.1 T2V 1.3B file) or "
                        "LongLive-2.0-5B (model_bf16.pt, base + LoRA, or a merged .safetensors) for streaming "
                        "generation; the family is told from the file.",
            inputs=[
                io.Combo.Input("model_name", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="From models/diffusion_models: longlive_base.pt (LongLive 1.x), model_bf16.pt "
                                       "(LongLive 2.0) or a merged .safetensors"),
                io.Combo.Input("lora_name", options=[NO_LORA, *folder_paths.get_filename_list("loras")],
                               default=NO_LORA, tooltip="LongLive's lora.pt from models/loras, merged at load"),
                io.Float.Input("lora_strength", default=1.0, min=-4.0, max=4.0, step=0.05),
                io.Combo.Input("precision", options=list(PRECISIONS), default="bf16",
                               tooltip="fp8 needs an Ada/Hopper GPU (compute capability 8.9+); int8 weight-only via torchao"),
                io.Combo.Input("attention", options=list(BACKENDS), default="auto",
                               tooltip="auto: FlashAttention-3 on Hopper if installed, else FA2, else PyTorch SDPA. "
                                       "'flash-attn 3 fp8': self-attention in FP8 on Hopper (faster, approximate)"),
                io.Boolean.Input("fast", default=True, tooltip="On CUDA: compile the dense layers and capture "
                                 "CUDA graphs of repeating blocks (first blocks are slower)"),
                device_input("device", "Where the model and its sessions run: ComfyUI's device, or another GPU of "
                                       "this machine (two live sessions on two GPUs run at once)"),
            ],
            outputs=[ModelType.Output(display_name="LONGLIVE_MODEL")],
        )

    @classmethod
    def validate_inputs(cls, model_name, lora_name, lora_strength, precision, attention, device=None) -> bool | str:
        """At queue time (ComfyUI does not check a V3 node's lists itself): names that exist, a finite strength.
        (An input fed by a link is None here: execute checks it.)"""
        if None in (model_name, lora_name, lora_strength, precision, attention):
            return True
        return first_error(
            *_listed(model_name, lora_name),
            (isinstance(lora_strength, (int, float)) and math.isfinite(lora_strength) and -4 <= lora_strength <= 4)
            or f"lora_strength: {lora_strength} is not a number from -4 to 4",
            precision in PRECISIONS or f"precision: '{precision}' is not one of {', '.join(PRECISIONS)}",
            attention in BACKENDS or f"attention: '{attention}' is not one of {', '.join(BACKENDS)}",
            device_error(device, "device"))

    @classmethod
    def execute(cls, model_name, lora_name, lora_strength, precision, attention, fast, device=None) -> io.NodeOutput:
        device = resolve_device(device, mm.get_torch_device(), "device")
        resolved = resolve_precision(precision, device)
        missing = first_error(*_listed(model_name, lora_name))  # names fed by a link skip validate_inputs
        if missing is not True:
            raise ConfigError(missing)
        path = folder_paths.get_full_path_or_raise("diffusion_models", model_name)
        lora = None if lora_name == NO_LORA else folder_paths.get_full_path_or_raise("loras", lora_name)
        model = load_model(path, lora_path=lora, lora_strength=lora_strength, device=device, precision=resolved)
        on_gpu = fast and device.type == "cuda"
        if on_gpu:
            model = make_fast(model, attention=attention)  # the eager model's own q, k and v weights go with it
        else:
            model.set_attention(attention)
        log.info("LongLive attention backend: %s (asked for %s)", model.attention_backend, attention)
        placed = () if device == mm.get_torch_device() else (str(device),)  # earlier saves' signatures stay valid
        wrapper = LongLiveModel(model, on_gpu, signature=(model_name, lora_name, lora_strength, precision, attention,
                                                          fast, *placed))
        wrapper.patcher = comfy.model_patcher.ModelPatcher(Holder(model), load_device=device,
                                                           offload_device=mm.unet_offload_device(),
                                                           size=_nbytes(model))
        return io.NodeOutput(wrapper)


def _listed(model_name: str, lora_name: str) -> tuple[bool | str, bool | str]:
    """Whether each file is in its folder, else where to download it."""
    return (model_name in folder_paths.get_filename_list("diffusion_models")
            or f"model_name: '{model_name}' is not in models/diffusion_models; download models/longlive_base.pt of "
               f"{LONGLIVE_REPO} (LongLive 1.x) or model_bf16.pt of {LONGLIVE_2_REPO} (LongLive 2.0) there, or pick "
               f"a listed file",
            lora_name in (NO_LORA, *folder_paths.get_filename_list("loras"))
            or f"lora_name: '{lora_name}' is not in models/loras; download models/lora.pt of {LONGLIVE_REPO} there "
               f"(LongLive 1.x; LongLive-2.0-5B's model_bf16.pt has its LoRA merged), or choose '{NO_LORA}'")


class Holder(torch.nn.Module):
    """What ComfyUI's model management moves and counts; it sets its own attributes on this."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net


def _nbytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
