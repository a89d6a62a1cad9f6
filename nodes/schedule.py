"""LongLive Prompt Schedule: prompts and when each starts -> LONGLIVE_SCHEDULE."""

from __future__ import annotations

import logging
import numbers
import threading
import weakref

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..longlive_core import (V1, CheckpointError, Family, GraphedUmt5, Prompt, PromptError, Umt5Encoder, check_starts,
                             parse_schedule_text, parse_start)
from .state import EMBEDDINGS, PromptList

log = logging.getLogger("longlive")

ScheduleType = io.Custom("LONGLIVE_SCHEDULE")
MAX_CONDITIONINGS = 6
EXAMPLE = "0: a boy plays on a sunny lawn\n10s: he starts to run towards the camera\nframe 81: the sun sets behind him"
CUT_HELP = ("LongLive 2.0: 'cut' after a start ('20s cut: a beach at dusk') starts a new shot there (upstream's scene "
            "cut)")


UNPADDED = "umt5xxl"  # the tokenizer whose padding its encoder masks out and zeroes (Wan's umt5-xxl)
_ENGINE_UMT5_FAILED: str | None = None  # why the engine's umt5 encoder failed in this process (then ComfyUI's runs)
# ComfyUI's umt5 module -> (its weights' addresses, the graphs of the engine's encoder on them; None where it cannot
# take them). No weights are kept here: ComfyUI frees the ones it replaces or unloads.
_ENGINE_UMT5: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, GraphedUmt5 | None]]" = \
    weakref.WeakKeyDictionary()
_ENGINE_LOCK = threading.Lock()  # one engine encode at a time (the graphs and the table above are shared)


def encode(clip, text: str):
    """umt5 embeddings [1, tokens, 4096] of a text, as CLIPTextEncode makes them. ComfyUI pads a text's umt5 tokens to
    512, masks the padding out of attention and zeroes its outputs: the text's own tokens are encoded here and the
    zeros padded after them, the same embeddings (to rounding) for a fraction of the work (ComfyUI runs umt5 in
    float32: 140 ms a text on an H200 at 512 tokens, run 130), by the engine's umt5 on ComfyUI's weights where it
    computes what ComfyUI would (engine_encode). Another encoder is run as it comes."""
    tokens = clip.tokenize(text)
    if list(tokens) != [UNPADDED] or not _masks_padding(clip):
        return clip.encode_from_tokens_scheduled(tokens)[0][0]
    unpadded = clip.tokenize(text, tokenizer_options={f"{UNPADDED}_min_length": 0})
    embeds = engine_encode(clip, unpadded[UNPADDED])
    if embeds is None:
        embeds = clip.encode_from_tokens_scheduled(unpadded)[0][0]
    padding = sum(map(len, tokens[UNPADDED])) - embeds.shape[1]
    return torch.nn.functional.pad(embeds, (0, 0, 0, padding))


def engine_encode(clip, sections: list) -> torch.Tensor | None:
    """The embeddings of one section of umt5 tokens by the engine's encoder (text/umt5.py: ComfyUI's computation to
    about 2^-17 of each product's inputs, on bfloat16 tensor cores, from CUDA graphs) on the tensors ComfyUI loaded.
    None where ComfyUI's encode would compute something else or run elsewhere (_engine_umt5), where the GPU is out of
    memory for it (this time), or where the engine's failed in this process (logged once, then ComfyUI encodes)."""
    global _ENGINE_UMT5_FAILED
    if _ENGINE_UMT5_FAILED:
        return None
    try:
        with _ENGINE_LOCK:
            engine = _engine_umt5(clip, sections)
            if engine is None:
                return None
            graphed, encoder = engine
            with torch.cuda.device(graphed.device):
                ids = torch.tensor([[t[0] for t in sections[0]]], device=graphed.device)
                return graphed(ids, encoder).to(mm.intermediate_device())
    except torch.OutOfMemoryError as err:
        log.warning("the engine's umt5 encoder is out of GPU memory (%s); ComfyUI encodes this text", err)
        return None
    except Exception as err:  # noqa: BLE001  (any failure: ComfyUI's encode is always there)
        _ENGINE_UMT5_FAILED = f"{type(err).__name__}: {err}"
        log.warning("the engine's umt5 encoder failed (%s); ComfyUI encodes every text from now on",
                    _ENGINE_UMT5_FAILED)
        return None


def _engine_umt5(clip, sections: list) -> tuple[GraphedUmt5, Umt5Encoder] | None:
    """The engine's umt5 on the CLIP's weights where it takes them (_engine_takes): its graphs, kept while the
    weights stay where they are, and an encoder on the weights as they are now; None where they are not on one GPU
    with bfloat16 tensor cores, or are stored in another format than e4m3 or bfloat16."""
    transformer = _engine_takes(clip, sections)
    if transformer is None:
        return None
    params = dict(transformer.named_parameters())
    device = next(iter(params.values())).device
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        return None
    addresses = tuple(p.data_ptr() for p in params.values())
    kept = _ENGINE_UMT5.get(transformer)
    if kept is not None and kept[0] != addresses:
        del _ENGINE_UMT5[transformer]  # its graphs and scratch go before new ones are made
        kept = None
    if kept is not None and kept[1] is None:
        return None  # these weights were refused
    nan_to_num = getattr(transformer, "dtype", torch.float32) not in (torch.float32, torch.float16, torch.bfloat16)
    try:
        encoder = Umt5Encoder(params, None if kept is None else kept[1].scratch, nan_to_num)
    except CheckpointError as err:
        log.info("the text encoder runs through ComfyUI: %s", err)
        _ENGINE_UMT5[transformer] = (addresses, None)
        return None
    if kept is None:
        kept = (addresses, GraphedUmt5(encoder.scratch))
        _ENGINE_UMT5[transformer] = kept
    return kept[1], encoder


def _engine_takes(clip, sections: list) -> torch.nn.Module | None:
    """ComfyUI's umt5 module of the CLIP, loaded on its text encoder device here, where the engine's encoder computes
    what ComfyUI's encode would of these tokens; None where ComfyUI's computes something else: weighted or embedding
    tokens, a layer other than the last, hooks, weights patched as they are used (low-VRAM loading, a LoRA applied at
    run time)."""
    if len(sections) != 1 or not all(isinstance(t[0], numbers.Integral) and t[1] == 1.0 for t in sections[0]):
        return None
    model = clip.cond_stage_model
    text_model = getattr(model, getattr(model, "clip", ""), None)
    transformer = getattr(text_model, "transformer", None)
    if transformer is None or clip.layer_idx is not None or getattr(clip.patcher, "forced_hooks", None) is not None:
        return None
    model.reset_clip_options()  # as ComfyUI's encode begins (a clone's last layer is set on the shared model)
    if getattr(text_model, "layer", None) != "last":
        return None
    clip.load_model()
    return transformer if _plain(transformer) else None


def _plain(transformer: torch.nn.Module) -> bool:
    """Whether the module's weights are plain tensors on one device, used as they are (no low-VRAM cast or patch
    function, no bias)."""
    for module in transformer.modules():
        if getattr(module, "weight_function", None) or getattr(module, "bias_function", None) \
                or getattr(module, "bias", None) is not None:
            return False
    params = list(transformer.parameters())
    return len({p.device for p in params}) == 1 and all(type(p.data) is torch.Tensor for p in params)


def _masks_padding(clip) -> bool:
    """Whether the CLIP's umt5 encoder keeps its padding out of attention and zeroes its outputs (ComfyUI's Wan one)."""
    model = clip.cond_stage_model
    encoder = getattr(model, getattr(model, "clip", ""), None)  # SD1ClipModel keeps its one encoder's name in .clip
    return bool(getattr(encoder, "enable_attention_masks", False) and getattr(encoder, "zero_out_masked", False))


def cached_encoder(clip):
    """text -> embeddings with this CLIP, each text encoded once (schedule and live prompts share it). Kept per CLIP
    object: its clones share its text model but may encode otherwise (a LoRA's patches, CLIP Set Last Layer)."""
    return lambda text: EMBEDDINGS.get(clip, text, lambda t: encode(clip, t))


class PromptSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongLive_PromptSchedule", display_name="LongLive Prompt Schedule", category="LongLive",
            description="One 'start: prompt' line per prompt. Starts: seconds ('10s', or a bare number), or latent "
                        "frames ('frame 42'); rounded to the model's blocks (LongLive 1.x: 16 fps, 3 latent frames; "
                        "2.0: 24 fps, 8). " + CUT_HELP + ".",
            inputs=[
                io.String.Input("schedule", multiline=True, default=EXAMPLE,
                                tooltip="The first prompt starts at 0; starts must increase"),
                io.Clip.Input("clip", optional=True, tooltip="umt5-xxl (CLIPLoader, type wan). Without it only "
                              "the tiny test model runs (prompts become hashed random embeddings)"),
            ],
            outputs=[ScheduleType.Output(display_name="LONGLIVE_SCHEDULE")],
        )

    @classmethod
    def execute(cls, schedule, clip=None) -> io.NodeOutput:
        segments = parse_schedule_text(schedule)
        encoder = None if clip is None else cached_encoder(clip)

        def read_for(family: Family) -> list[Prompt]:
            return [Prompt(s.start, s.text, None if encoder is None else encoder(s.text), s.cut)
                    for s in parse_schedule_text(schedule, family)]

        notes = [s.note for s in segments if s.note]
        text = [f"{s.start:>4}: {s.text}" for s in segments] + notes
        return io.NodeOutput(PromptList(read_for(V1), encoder, read_for), ui={"text": ["\n".join(text)]})


class ConditioningSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        conds = []
        for i in range(1, MAX_CONDITIONINGS + 1):
            conds.append(io.Conditioning.Input(f"conditioning_{i}", optional=i > 1,
                                               tooltip="From CLIPTextEncode with umt5-xxl"))
        return io.Schema(
            node_id="LongLive_ConditioningSchedule", display_name="LongLive Prompt Schedule (Conditioning)",
            category="LongLive",
            description="Prompts from CLIPTextEncode nodes; `starts` gives when each begins.",
            inputs=[io.String.Input("starts", default="0, 10s, 20s",
                                    tooltip="Comma-separated, one per connected conditioning: seconds ('10s') "
                                            "or latent frames ('frame 42')"), *conds],
            outputs=[ScheduleType.Output(display_name="LONGLIVE_SCHEDULE")],
        )

    @classmethod
    def execute(cls, starts, conditioning_1, **more) -> io.NodeOutput:
        conds = [conditioning_1] + [more.get(f"conditioning_{i}") for i in range(2, MAX_CONDITIONINGS + 1)]
        conds = [c for c in conds if c is not None]

        def read_for(family: Family) -> list[Prompt]:
            frames = [parse_start(s, family).start for s in starts.split(",") if s.strip()]
            if len(frames) != len(conds):
                raise PromptError(f"starts lists {len(frames)} start(s) for {len(conds)} connected conditioning "
                                  f"input(s); give exactly one start per conditioning")
            check_starts(frames, block=family.block)
            return [Prompt(f, f"conditioning_{i + 1}", c[0][0]) for i, (f, c) in enumerate(zip(frames, conds))]

        return io.NodeOutput(PromptList(read_for(V1), None, read_for))
