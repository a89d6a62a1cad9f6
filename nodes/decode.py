"""LongLive VAE Decode: ComfyUI's Wan 2.1 VAE (LongLive 1.x) or Wan 2.2 VAE (LongLive 2.0), or their tiny decoders
(lighttaew2_1, lighttaew2_2), decoding chunk by chunk with the causal cache kept (the streams are longlive_core.vae's;
this module loads and casts through ComfyUI).

Decoding a video in pieces over several queue runs gives exactly the frames of one full decode:
the first chunk of T latent frames gives 4T - 3 pixel frames, later chunks 4T.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import weakref
from typing import Callable

import comfy.latent_formats
import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy.ldm.wan import vae as wan21_vae, vae2_2 as wan22_vae
from comfy.taesd.taehv import TAEHV
from comfy_api.latest import io

from ..longlive_core import (DEFAULT_DEVICE, ConfigError, DecodeStream, TinyStream, Wan22DecodeStream, on_device,
                             resolve_device)
from .state import check_session_id, claim_session, device_error, device_input, first_error, free_session

log = logging.getLogger(__name__)

DECODERS = ("wan vae", "tiny draft")
WAN21 = comfy.latent_formats.Wan21()
LATENT_FORMATS = {16: WAN21, 48: comfy.latent_formats.Wan22()}  # by latent channels: LongLive 1.x, 2.0
VAE_FILES = {16: "the Wan 2.1 VAE (wan_2.1_vae.safetensors)", 48: "the Wan 2.2 VAE (wan2.2_vae.safetensors)"}
DRAFT_NAMES = {16: ("lighttaew2_1", "taew2_1"), 48: ("lighttaew2_2", "taew2_2")}  # the tiny video decoders
DRAFT_FILES = {16: "Wan 2.1's tiny decoder: lighttaew2_1.safetensors (lightx2v/Autoencoders) or taew2_1.pth "
                   "(madebyollin/taehv)",
               48: "Wan 2.2's tiny decoder: lighttaew2_2.safetensors (lightx2v/Autoencoders) or taew2_2.pth "
                   "(madebyollin/taehv)"}
_DRAFT_MODELS: dict = {}  # file path -> loaded TAEHV


def raw_latents(latents: torch.Tensor) -> torch.Tensor:
    """Engine blocks [B, T, C, h, w] (normalized) -> ComfyUI's LATENT [B, C, T, h, w] (raw VAE space)."""
    return LATENT_FORMATS[latents.shape[2]].process_out(latents.transpose(1, 2).contiguous())


def model_latents(raw: torch.Tensor) -> torch.Tensor:
    """ComfyUI's LATENT [B, C, T, h, w] (raw VAE space) -> the engine's [B, T, C, h, w] (normalized)."""
    return LATENT_FORMATS[raw.shape[1]].process_in(raw).transpose(1, 2).contiguous()


def is_tiny(vae) -> bool:
    """A tiny video decoder as VAELoader loads it (lighttaew2_1, lighttaew2_2 from models/vae_approx: ComfyUI's
    TAEHV)."""
    return isinstance(getattr(vae, "first_stage_model", None), TAEHV)


def describe(vae) -> str:
    """What a VAE is, in the words of the errors."""
    channels = vae.latent_channels
    return DRAFT_FILES[channels].split(":")[0] if is_tiny(vae) else VAE_FILES[channels]


def check_wan_vae(vae, channels: int | None = None) -> None:
    """A Wan VAE as VAELoader loads it: the Wan 2.1 VAE (16 latent channels) or the Wan 2.2 VAE (48), or the tiny
    decoder of either; `channels`: the one the latents need."""
    fsm = getattr(vae, "first_stage_model", None)
    found = getattr(vae, "latent_channels", 0)
    wan = hasattr(fsm, "decoder") and hasattr(fsm, "conv2")
    if not ((wan or is_tiny(vae)) and found in VAE_FILES):
        raise ConfigError("LongLive needs the Wan 2.1 VAE (LongLive 1.x) or the Wan 2.2 VAE (LongLive 2.0) from "
                          "models/vae, or their tiny decoders (lighttaew2_1, lighttaew2_2 from models/vae_approx), "
                          "loaded with VAELoader; this VAE is another kind")
    if channels is not None and found != channels:
        raise ConfigError(f"vae: these latents have {channels} channels and need {VAE_FILES[channels]} in models/vae, "
                          f"or {DRAFT_FILES[channels]} in models/vae_approx; the VAE connected is {describe(vae)}")


@torch.inference_mode()
def stream_decode(vae, samples: torch.Tensor, stream: DecodeStream, fast: bool = False) -> torch.Tensor:
    """samples: raw latents [B, 16, T, h, w] -> images [B * frames, H, W, 3] in [0, 1]; the stream carries on."""
    mm.load_models_gpu([vae.patcher])
    return stream_decode_on_device(vae, samples, stream, fast).to(vae.output_device).float().flatten(0, 1)


@torch.inference_mode()
def stream_decode_on_device(vae, samples: torch.Tensor, stream: DecodeStream, fast: bool = False) -> torch.Tensor:
    """samples: raw latents [B, 16 or 48, T, h, w] -> images [B, frames, H, W, 3] in [0, 1] on the VAE's device
    (float32: the values ComfyUI's VAE returns), the VAE loaded there by the caller (mm.load_models_gpu). `fast`
    compiles the decoder's steady chunks."""
    with on_device(vae.device):
        out = stream.decode(vae.first_stage_model, samples.to(vae.device, vae.vae_dtype), fast=fast)
    return _images(vae, out)


@torch.inference_mode()
def stream_decode_pieces(vae, samples: torch.Tensor, stream: DecodeStream, fast: bool, frames_per_call: int | None,
                         each: Callable[[torch.Tensor], None]) -> None:
    """stream_decode_on_device, handing each decoder call's images [B, frames, H, W, 3] to `each` as soon as that call
    is launched (frames_per_call: latent frames a call, None: the stream's own); the decode of `samples` goes through
    whole or not at all (DecodeStream.decode)."""
    with on_device(vae.device):
        stream.decode(vae.first_stage_model, samples.to(vae.device, vae.vae_dtype), fast=fast,
                      frames_per_call=frames_per_call, each=lambda out: each(_images(vae, out)))


def _images(vae, out: torch.Tensor) -> torch.Tensor:
    """A decoder's output [B, 3, frames, H, W] in [-1, 1] -> ComfyUI's images [B, frames, H, W, 3] in [0, 1]."""
    return vae.process_output(out.float()).movedim(1, -1)


_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # VAE -> {device: the VAE loaded there}


def vae_on(vae, choice: str | None):
    """The VAE that decodes on the device a node's decode_device names: ComfyUI's VAE itself for DEFAULT_DEVICE (or
    where it loads already), else a copy with its own weights on that device, loaded there through ComfyUI's model
    management (its own ModelPatcher), made once per VAE and device."""
    if choice in (None, DEFAULT_DEVICE):
        return vae
    device = resolve_device(choice, vae.device)
    if device == vae.device:
        return vae
    copies = _COPIES.setdefault(vae, {})
    if device not in copies:
        offload = vae.patcher.offload_device
        other = copy.copy(vae)
        other.first_stage_model = _copy_to(vae.first_stage_model, offload)
        other.device = device
        other.patcher = comfy.model_patcher.ModelPatcher(other.first_stage_model, load_device=device,
                                                         offload_device=offload)
        copies[device] = other
        log.info("LongLive: the VAE decodes on %s (a copy of its weights there)", device)
    return copies[device]


def _copy_to(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A copy of a module with its weights made on `device` (no second copy where the original's sit), and none of
    the loading state ComfyUI's model management left on its modules (the copy's own ModelPatcher loads it)."""
    memo = {id(p): torch.nn.Parameter(p.detach().to(device, copy=True), requires_grad=False)
            for p in module.parameters()}
    memo.update({id(b): b.detach().to(device, copy=True) for b in module.buffers()})
    other = copy.deepcopy(module, memo)
    for m in other.modules():
        comfy.model_patcher.wipe_lowvram_weight(m)  # weights cast at each call where ComfyUI loaded them partly
        for name in _LOADING_STATE:
            m.__dict__.pop(name, None)
    return other


_LOADING_STATE = ("model_loaded_weight_memory", "current_weight_patches_uuid", "comfy_patched_weights", "device",
                  "model_lowvram", "lowvram_patch_counter")  # what ModelPatcher sets on the modules it loads


_WEIGHTS_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # first_stage_model -> weights_id


def weights_id(vae) -> str:
    """Identity of a VAE's weights (names, shapes and the leading values of a few tensors), computed once per loaded
    VAE: ComfyUI loading the same file again (after its caches were freed) gives the same id, so a session's
    decode continues with the new load."""
    fsm = vae.first_stage_model
    if fsm not in _WEIGHTS_IDS:
        digest = hashlib.sha256()
        for i, (name, tensor) in enumerate(sorted(fsm.state_dict().items())):
            digest.update(f"{name}{tuple(tensor.shape)}".encode())
            if i % 16 == 0:
                digest.update(tensor.detach().flatten()[:256].float().cpu().numpy().tobytes())
        _WEIGHTS_IDS[fsm] = digest.hexdigest()[:16]
    return _WEIGHTS_IDS[fsm]


def new_stream(vae) -> DecodeStream | TinyStream:
    """A decode stream for the VAE's family (a tiny decoder's for a tiny decoder)."""
    if is_tiny(vae):
        return TinyStream()
    if vae.latent_channels == 48:
        return Wan22DecodeStream(wan22_vae.count_conv3d(vae.first_stage_model.decoder))
    return DecodeStream(wan21_vae.count_conv3d(vae.first_stage_model.decoder))


def decode_device_input():
    return device_input("decode_device", "Where the Wan VAE decodes: where ComfyUI loads it, or on another GPU (a copy "
                                         "of its weights there), where decoding a block overlaps generating the next "
                                         "in runs that are not live")


def tiny_decoder_path(channels: int) -> str:
    """The first models/vae_approx file named like the tiny decoder of these latents (the lookup ComfyUI's previews
    do)."""
    for name in folder_paths.get_filename_list("vae_approx"):
        if name.startswith(DRAFT_NAMES[channels]):
            return folder_paths.get_full_path("vae_approx", name)
    raise ConfigError(f"decoder 'tiny draft' needs {DRAFT_FILES[channels]} in models/vae_approx; or choose decoder "
                      f"'wan vae'")


def load_tiny(path: str, channels: int) -> TAEHV:
    """The tiny decoder of a file, loaded once per server on ComfyUI's device."""
    if path not in _DRAFT_MODELS:
        sd = comfy.utils.load_torch_file(path)
        model = TAEHV(latent_channels=channels, show_progress_bar=False)
        missing = [k for k in model.load_state_dict(sd, strict=False).missing_keys if k.startswith("decoder.")]
        if missing or sd.get("decoder.1.weight", torch.empty(0, 0)).shape[1:2] != (channels,):
            raise ConfigError(f"{path} is not {DRAFT_FILES[channels].split(':')[0]} (missing {missing[:3]} or not "
                              f"{channels} latent channels); use {DRAFT_NAMES[channels][0]}.safetensors")
        dtype = sd["decoder.1.weight"].dtype if sd["decoder.1.weight"].dtype in (torch.float16, torch.bfloat16) else None
        _DRAFT_MODELS[path] = model.to(mm.get_torch_device(), dtype or torch.float32).eval()
    return _DRAFT_MODELS[path]


@torch.inference_mode()
def draft_decode(samples: torch.Tensor, stream: TinyStream) -> torch.Tensor:
    """samples: raw latents [B, 16 or 48, T, h, w] -> images [B * frames, H, W, 3] through the tiny decoder."""
    model = load_tiny(tiny_decoder_path(samples.shape[1]), samples.shape[1])
    weight = model.decoder[1].weight
    out = stream.decode(model, samples.to(weight.device, weight.dtype))
    return out.to(mm.intermediate_device()).float().movedim(1, -1).flatten(0, 1)


class VAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongLive_VAEDecode", display_name="LongLive VAE Decode", category="LongLive",
            description="Decodes Wan 2.1 latents (LongLive 1.x) with the Wan 2.1 VAE, or Wan 2.2 latents (LongLive "
                        "2.0) with the Wan 2.2 VAE, or either with its tiny decoder (lighttaew2_1, lighttaew2_2 "
                        "loaded with VAELoader). With the sampler's session id, each run's new frames continue the "
                        "previous decode seamlessly.",
            inputs=[io.Vae.Input("vae"), io.Latent.Input("samples"),
                    io.String.Input("session_id", default="", tooltip="Same id as the sampler: keep the decoder's "
                                    "causal cache between runs. Empty: decode these latents alone"),
                    io.Boolean.Input("compile", default=False, tooltip="torch.compile the decoder and replay it as a "
                                     "CUDA graph: about twice as fast after a one-time compile per server and size; "
                                     "each session's graph holds a few GB more GPU memory at 480x832. Worth it for "
                                     "long or live sessions"),
                    io.Combo.Input("decoder", options=list(DECODERS), default="wan vae", optional=True, tooltip="'tiny draft': "
                                   "the latents' tiny decoder from models/vae_approx (lighttaew2_1 or lighttaew2_2) "
                                   "instead of this VAE, many times faster and blurrier; frames and session continuity "
                                   "as with the VAE"),
                    decode_device_input()],
            outputs=[io.Image.Output(display_name="IMAGE")],
        )

    @classmethod
    def fingerprint_inputs(cls, session_id="", **_):
        return float("nan") if session_id else None

    @classmethod
    def validate_inputs(cls, decoder="wan vae", decode_device=DEFAULT_DEVICE) -> bool | str:
        return first_error(decoder in (None, *DECODERS) or f"decoder: '{decoder}' is not one of {', '.join(DECODERS)}",
                           device_error(decode_device, "decode_device"))

    @classmethod
    def execute(cls, vae, samples, session_id, compile=False, decoder="wan vae",
                decode_device=DEFAULT_DEVICE) -> io.NodeOutput:
        z = samples["samples"]
        if z.dim() != 5 or z.shape[1] not in VAE_FILES:
            raise ConfigError(f"samples must be Wan video latents [B, 16 or 48, T, h, w]; got {list(z.shape)}")
        check_wan_vae(vae, z.shape[1])
        if decoder not in DECODERS:
            raise ConfigError(f"decoder '{decoder}' is unknown; choose one of {', '.join(DECODERS)}")
        tiny = decoder == "tiny draft"
        if tiny and resolve_device(decode_device, mm.get_torch_device()) != mm.get_torch_device():
            raise ConfigError(f"decode_device: the tiny draft decodes on ComfyUI's device; choose '{DEFAULT_DEVICE}' "
                              f"or decoder 'wan vae'")
        vae = vae_on(vae, decode_device)
        session_id = check_session_id(session_id)
        if not session_id:
            return io.NodeOutput(draft_decode(z, TinyStream()) if tiny else stream_decode(vae, z, new_stream(vae), compile))
        video, _ = claim_session(session_id)
        try:  # a DELETE meanwhile is refused (it would close the decoder stream under the decode)
            key = f"tiny {tiny_decoder_path(z.shape[1])}" if tiny else weights_id(vae)
            stream = video.decoder(key, TinyStream if tiny else lambda: new_stream(vae))
            if not tiny:
                stream.move_to(vae.device)  # a session's decode continues where this run decodes
            earlier = video.undecoded_before(z)  # runs whose decode was interrupted
            latents = torch.cat([*earlier, z], dim=2) if earlier else z
            images = draft_decode(latents, stream) if tiny else stream_decode(vae, latents, stream, compile)
            video.decoded(z)
        finally:
            video.unclaim()
        return io.NodeOutput(images)


class SessionReset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongLive_SessionReset", display_name="LongLive Session Reset", category="LongLive",
            description="Frees a LongLive session: its KV cache, history and decoder cache (and the compiled "
                        "decoder's CUDA graph), and its save if it has one. The next run with that id starts a new "
                        "video.",
            inputs=[io.String.Input("session_id", default="")],
            outputs=[], is_output_node=True, not_idempotent=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **_):
        return float("nan")

    @classmethod
    def execute(cls, session_id) -> io.NodeOutput:
        session_id = check_session_id(session_id)
        freed = free_session(session_id)  # closing the video frees its graphs
        text = f"session '{session_id}' {'freed' if freed else 'was not open'}"
        return io.NodeOutput(ui={"text": [text]})
