"""LongLive Streaming Sampler: a stateful session that continues the same video across queue runs."""

from __future__ import annotations

import logging
import math
import time

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from longlive_core import SWITCH_POLICIES, ConfigError, LongLiveError, PromptError, StreamSession
from longlive_core.cache import FRAMES_PER_BLOCK
from longlive_core.config import ROPE_POSITIONS
from longlive_core.fast import GraphRunner, warm_up
from longlive_core.prompt_text import FPS, check_starts

from .decode import check_wan_vae, new_cache, stream_decode, weights_id
from .loader import ModelType
from .schedule import ScheduleType
from .state import SESSIONS, LongLiveModel, NodeSession, Segment, check_session_id, first_error, hashed_embeds

log = logging.getLogger("longlive")
LENGTH_UNITS = ("seconds", "pixel frames", "latent frames")
WAN21 = comfy.latent_formats.Wan21()


MAX_LENGTH = 4096.0


def length_error(length, unit) -> bool | str:
    """True, or what is wrong with a run's length (ComfyUI's own bounds check lets NaN through)."""
    if unit not in LENGTH_UNITS:
        return f"length_unit: '{unit}' is not one of {', '.join(LENGTH_UNITS)}"
    if not (isinstance(length, (int, float)) and math.isfinite(length) and 0 < length <= MAX_LENGTH):
        return f"length: {length} is not a number above 0 and at most {MAX_LENGTH:g}"
    return True


def latent_frames(length: float, unit: str) -> int:
    """Latent frames for a length, rounded up to whole blocks (each latent frame is 4 pixel frames)."""
    problem = length_error(length, unit)
    if problem is not True:
        raise ConfigError(problem)
    if unit == "latent frames":
        frames = math.ceil(length)
    else:
        pixels = length * FPS if unit == "seconds" else length
        frames = math.ceil(pixels / 4)
    return max(FRAMES_PER_BLOCK, FRAMES_PER_BLOCK * math.ceil(frames / FRAMES_PER_BLOCK))


class StreamingSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongLive_StreamingSampler", display_name="LongLive Streaming Sampler", category="LongLive",
            description="Generates video block by block (3 latent frames, 4 steps each). With a session id the "
                        "KV cache stays on the server and every run continues the same video.",
            inputs=[
                ModelType.Input("model"), ScheduleType.Input("schedule"),
                io.Int.Input("width", default=832, min=16, max=2048, step=16, tooltip="Multiple of 16; trained at 832"),
                io.Int.Input("height", default=480, min=16, max=2048, step=16, tooltip="Multiple of 16; trained at 480"),
                io.Float.Input("length", default=5.0, min=0.1, max=MAX_LENGTH, step=0.1,
                               tooltip="How much new video this run makes; rounded up to whole blocks"),
                io.Combo.Input("length_unit", options=list(LENGTH_UNITS), default="seconds"),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=False),
                io.Int.Input("local_attn_size", default=12, min=6, max=64,
                             tooltip="Latent frames of KV cache (sink included); at least sink + 3"),
                io.Int.Input("sink_size", default=3, min=0, max=30, tooltip="First frames kept forever"),
                io.Combo.Input("switch_policy", options=list(SWITCH_POLICIES), default="recache",
                               tooltip="At a prompt change: recache (rebuild the cache under the new prompt), "
                                       "reset (start fresh), keep (follow slowly)"),
                io.String.Input("session_id", default="", tooltip="Empty: every run is a new video. A name: runs "
                                "continue the same video until reset"),
                io.Boolean.Input("reset", default=False, tooltip="Start the named session over"),
                io.Int.Input("batch_size", default=1, min=1, max=16),
                io.Boolean.Input("live", default=False, tooltip="Keep generating until stopped (LongLive panel, or "
                                 "POST /longlive/sessions/{id}/stop) or until `length`; prompts typed in the panel "
                                 "(POST .../prompt) switch at the next block. Needs a session id"),
                io.Vae.Input("vae", optional=True, tooltip="Wan 2.1 VAE: decode each block as soon as it is made "
                             "(the preview shows real frames, IMAGE gets this run's frames, continuing the session's "
                             "video seamlessly). Without it IMAGE is empty: decode LATENT with LongLive VAE Decode"),
                io.Boolean.Input("compile_vae", default=False, optional=True, tooltip="With a VAE: decode through the "
                                 "compiled decoder, as LongLive VAE Decode's `compile` (faster after a one-time compile)"),
            ],
            outputs=[io.Latent.Output(display_name="LATENT"), io.Image.Output(display_name="IMAGE")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, session_id="", **_):
        # a named session changes with every run: never serve it from the cache
        return float("nan") if session_id else None

    @classmethod
    def validate_inputs(cls, length, length_unit, switch_policy, session_id) -> bool | str:
        """At queue time: ComfyUI checks neither a V3 node's lists nor NaN against bounds. (An input fed by a link
        is None here: execute checks it.)"""
        if None in (length, length_unit, switch_policy, session_id):
            return True
        try:
            check_session_id(session_id)
        except ConfigError as exc:
            return str(exc)
        return first_error(length_error(length, length_unit), switch_policy in SWITCH_POLICIES
                           or f"switch_policy: '{switch_policy}' is not one of {', '.join(SWITCH_POLICIES)}")

    @classmethod
    def execute(cls, model: LongLiveModel, schedule, width, height, length, length_unit, seed, local_attn_size,
                sink_size, switch_policy, session_id, reset, batch_size, live=False, vae=None,
                compile_vae=False) -> io.NodeOutput:
        session_id = check_session_id(session_id)
        if live and not session_id:
            raise PromptError("live needs a session_id: the panel and the routes find the session by it")
        frames = latent_frames(length, length_unit)
        settings = {"model": list(model.signature), "batch": batch_size, "width": width,
                    "height": height, "local_attn_size": local_attn_size, "sink_size": sink_size,
                    "switch_policy": switch_policy, "seed": seed}
        load(model)
        state = open_session(model, settings, session_id, reset)
        frames = fit_to_rope(state, frames, live)
        schedule_run(state, model, schedule.segments, frames)
        state.encoder = schedule.encoder
        decoder = BlockDecoder(state, model, vae, compile_vae) if vae is not None else None
        latents, images = run_blocks(state, model, frames, cls.hidden.unique_id if cls.hidden else None, live, decoder)
        return io.NodeOutput({"samples": raw_latents(latents).to(mm.intermediate_device())}, images)


def raw_latents(latents: torch.Tensor) -> torch.Tensor:
    """Engine blocks [B, T, C, h, w] (normalized) -> ComfyUI's LATENT [B, C, T, h, w] (raw VAE space)."""
    return WAN21.process_out(latents.transpose(1, 2).contiguous())


class BlockDecoder:
    """Decodes each block right after it is made, continuing the session's own decoder cache."""

    def __init__(self, state: NodeSession, model: LongLiveModel, vae, fast: bool = False):
        check_wan_vae(vae)
        self.vae, self.model, self.fast = vae, model, fast
        key = ("sampler", weights_id(vae))  # apart from LongLive VAE Decode's caches
        self.cache = state.decoders.setdefault(key, new_cache(vae))

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        images = stream_decode(self.vae, raw_latents(block), self.cache, self.fast)  # [B * frames, H, W, 3]
        load(self.model)  # the VAE may have made ComfyUI move our weights out
        return images

    @staticmethod
    def preview(images: torch.Tensor):
        from PIL import Image

        return "JPEG", Image.fromarray(images[-1].mul(255).round().byte().cpu().numpy()), 512


def load(model: LongLiveModel) -> None:
    """Makes sure the weights are on the GPU (ComfyUI may have moved them) and the graphs still fit."""
    mm.load_models_gpu([model.patcher], force_full_load=True)
    model.refresh_graphs()


def open_session(model: LongLiveModel, settings: dict, session_id: str, reset: bool) -> NodeSession:
    settings = {**settings, "session_id": session_id}

    def make() -> NodeSession:
        runner = new_runner(model)
        session = StreamSession(model.model, batch=settings["batch"], height=settings["height"],
                                width=settings["width"], local_attn_size=settings["local_attn_size"],
                                sink_size=settings["sink_size"], seed=settings["seed"],
                                switch_policy=settings["switch_policy"], runner=runner)
        start = time.perf_counter()
        warm_up(session)  # compile + capture now: no later block or switch pays for it
        state = NodeSession(session, settings)
        state.stats.update(warm_up_s=round(time.perf_counter() - start, 2))
        return state

    if not session_id:
        return make()
    if reset:
        SESSIONS.delete(session_id)
    state, created = SESSIONS.get_or_create(session_id, make, lambda s: s.nbytes)
    changed = [f"{k}: {state.settings[k]} -> {v}" for k, v in settings.items()
               if k != "seed" and state.settings[k] != v]
    if changed:
        raise ConfigError(f"session '{session_id}' was made with other settings ({', '.join(changed)}); turn on "
                          f"reset to start it over with these, or use another session id")
    if state.session.model is not model.model:  # ComfyUI loaded the same file again (its cache was freed)
        log.info("LongLive session '%s' continues with the model loaded again", session_id)
        state.session.use_model(model.model, new_runner(model))
    log.info("%s LongLive session '%s' at frame %d", "new" if created else "continuing", session_id, state.session.frame)
    return state


def graph_state(runner) -> str:
    """For the session list: whether the session's passes replay as CUDA graphs, and why not."""
    if not isinstance(runner, GraphRunner):
        return "off (fast is off or not on CUDA)"
    return f"off: {runner.failed}" if runner.failed else f"{len(runner.graphs)} captured"


def new_runner(model: LongLiveModel) -> GraphRunner | None:
    if not model.fast:
        return None
    runner = GraphRunner(model.model)
    model.runners.add(runner)
    return runner


def fit_to_rope(state: NodeSession, frames: int, live: bool) -> int:
    """A video can run to latent frame 1024 (Wan's RoPE table); a live run stops there, others are refused."""
    room = (ROPE_POSITIONS - state.session.pos) // FRAMES_PER_BLOCK * FRAMES_PER_BLOCK
    if frames <= room:
        return frames
    if live and room > 0:
        log.info("live run limited to %d latent frames (RoPE table ends at %d)", room, ROPE_POSITIONS)
        return room
    raise ConfigError(f"length: this run needs {frames} latent frames but the session has room for {room} more "
                      f"(the model's RoPE table ends at latent frame {ROPE_POSITIONS}, about 4 minutes); shorten "
                      f"the run or reset the session")


def schedule_run(state: NodeSession, model: LongLiveModel, segments: list[Segment], frames: int) -> None:
    """Schedules this run's prompts relative to its first frame; an unchanged first prompt is no switch."""
    check_starts([s.start for s in segments], frames)
    base = state.session.frame
    state.session.clear_pending()  # prompts of an earlier run that stopped early do not carry over
    state.upcoming.clear()
    for i, seg in enumerate(segments):
        state.upcoming[base + seg.start] = seg.key()
        if i == 0 and seg.key() == state.prompt_key:
            continue
        state.session.set_prompt(embeddings(seg, model), at_frame=base + seg.start)


def embeddings(seg: Segment, model: LongLiveModel) -> torch.Tensor:
    return seg.embeds if seg.embeds is not None else text_embeddings(seg.text, model, None)


def text_embeddings(text: str, model: LongLiveModel, encoder) -> torch.Tensor:
    if encoder is not None:
        return encoder(text)
    if not model.synthetic:
        raise PromptError("the prompt schedule has no text encoder: connect a CLIP (umt5-xxl, CLIPLoader type "
                          "wan) to the LongLive Prompt Schedule node")
    log.warning("tiny test model: prompt '%s' becomes hashed random embeddings (the video is noise)", text[:40])
    return hashed_embeds(text, model.model.cfg.text_dim)


def run_blocks(state: NodeSession, model: LongLiveModel, frames: int, node_id, live: bool,
               decoder: BlockDecoder | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Generates this run's blocks with progress + previews; an interrupt keeps finished blocks (and their
    decoded frames) for the next run. A live run also takes prompt changes between blocks and ends early
    on stop. Returns (latents [B, T, C, h, w], decoded images or None)."""
    blocks = frames // FRAMES_PER_BLOCK
    bar = comfy.utils.ProgressBar(blocks, node_id=node_id)
    # ComfyUI's own previewer: latent-to-RGB, or the tiny video decoder (models/vae_approx/lighttaew2_1*)
    # with --preview-method taesd
    previewer = latent_preview.get_previewer(state.session.model.device, WAN21)
    drain(state.inbox)
    state.stop.clear()
    state.live = live
    try:
        for i in range(blocks):
            if live and i > 0 and state.stop.is_set():  # a live run makes at least one block
                break
            posted = take_prompts(state, model) if live else None
            started_at = state.session.frame
            block, ms = timed_block(state)
            state.prompt_key = state.upcoming.pop(started_at, state.prompt_key)  # the prompt now in force
            state.undelivered.append(block.float())
            report_block(state, ms, posted)
            bar.update_absolute(i + 1, blocks, show(block, decoder, state, previewer))
    finally:
        state.live = False
        drain(state.inbox)  # a prompt posted as the run ended belongs to no run
    latents, images = torch.cat(state.undelivered, dim=1), state.undelivered_images
    state.undelivered, state.undelivered_images = [], []
    if decoder is None or not images:
        return latents, None
    return latents, torch.cat(images, dim=1).flatten(0, 1)  # [B * frames, H, W, 3], sample after sample


def show(block: torch.Tensor, decoder: BlockDecoder | None, state: NodeSession, previewer):
    """The block's preview: its last decoded frame with a VAE, else ComfyUI's latent preview."""
    if decoder is not None:
        images = decoder(block)
        state.undelivered_images.append(images.view(block.shape[0], -1, *images.shape[1:]).to(mm.intermediate_device()))
        return decoder.preview(images)
    return previewer.decode_latent_to_preview_image("JPEG", block.transpose(1, 2)) if previewer else None


def drain(inbox) -> tuple | None:
    """Empties the inbox; returns the newest entry (older prompts are superseded)."""
    newest = None
    while not inbox.empty():
        newest = inbox.get_nowait()
    return newest


def take_prompts(state: NodeSession, model: LongLiveModel) -> tuple | None:
    """Applies the newest prompt posted since the last block, with the session's switch policy."""
    posted = drain(state.inbox)
    if posted is not None:
        text, _, blocks, blend = posted
        segment = Segment(state.session.frame, text, state.encoder(text) if state.encoder else None)
        if state.encoder:
            load(model)  # encoding may have made ComfyUI move our weights out
        state.session.set_prompt(embeddings(segment, model), blend_blocks=blocks, blend=blend)
        state.upcoming[state.session.frame + FRAMES_PER_BLOCK * (blocks - 1)] = segment.key()
    return posted


def timed_block(state: NodeSession) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    try:
        block = state.session.step_block()
    except LongLiveError:
        raise  # refused before any work: the session is unchanged
    except Exception:
        reset_state(state)
        log.exception("LongLive block failed; the session was reset")
        raise
    if block.is_cuda:  # the preview needs the block anyway; this makes the stats wall time
        torch.cuda.current_stream().synchronize()
    return block, (time.perf_counter() - start) * 1e3


def report_block(state: NodeSession, ms: float, posted: tuple | None) -> None:
    """Session stats for GET /longlive/sessions, and a `longlive.block` event for the page."""
    frame = state.session.frame
    state.stats.update(last_block_ms=round(ms, 1), fps=round(4 * FRAMES_PER_BLOCK * 1e3 / max(ms, 1e-3), 1),
                       graphs=graph_state(state.session.runner))
    if posted is not None:
        latency = (time.time() - posted[1]) * 1e3
        state.switches.append({"frame": frame - FRAMES_PER_BLOCK, "text": posted[0][:200],
                               "prompt_to_block_ms": round(latency, 1)})
        state.stats.update(last_switch_ms=round(latency, 1))
    send_event("longlive.block", {"session": state.settings.get("session_id", ""), "frame": frame, **state.stats,
                                  "switched": posted is not None, "live": state.live})


def send_event(event: str, data: dict) -> None:
    from server import PromptServer

    server = getattr(PromptServer, "instance", None)
    if server is not None:
        server.send_sync(event, data)


def reset_state(state: NodeSession) -> None:
    """A block that failed half way may have written part of the cache: start the video over."""
    state.session.reset()
    state.prompt_key = None
    state.upcoming.clear()
    state.undelivered.clear()
    state.undelivered_images.clear()
    state.decoders.clear()
