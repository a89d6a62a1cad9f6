"""LongLive Streaming Sampler: a named video (longlive_core.Video) that continues across queue runs."""

from __future__ import annotations

import logging
import math
import os

import comfy.model_management as mm
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..longlive_core import (DEFAULT_DEVICE, POSITION_MODES, SWITCH_POLICIES, V1, V2, BlockDone, ConfigError, Family,
                             PromptError, RunHooks, Video, VideoSettings, family_of, hashed_embeds, restore_video,
                             session_bytes, video_time)
from .decode import LATENT_FORMATS, check_wan_vae, decode_device_input, is_tiny, model_latents, raw_latents
from .loader import ModelType
from .outputs import IMAGE_OUTPUT, BlockDecoder, Files, output_taken, save_requests
from .save import FilesType
from .schedule import ScheduleType
from .state import (LongLiveModel, PromptList, check_session_id, claim_session, device_error, first_error,
                    free_session, save_path)

log = logging.getLogger("longlive")
LENGTH_UNITS = ("seconds", "pixel frames", "latent frames")


MAX_LENGTH = 4096.0


def length_error(length, unit) -> bool | str:
    """True, or what is wrong with a run's length (ComfyUI's own bounds check lets NaN through)."""
    if unit not in LENGTH_UNITS:
        return f"length_unit: '{unit}' is not one of {', '.join(LENGTH_UNITS)}"
    if not (isinstance(length, (int, float)) and math.isfinite(length) and 0 < length <= MAX_LENGTH):
        return f"length: {length} is not a number above 0 and at most {MAX_LENGTH:g}"
    return True


def latent_frames(length: float, unit: str, family: Family = V1) -> int:
    """Latent frames for a length, rounded up to the family's whole blocks (each latent frame is 4 pixel frames)."""
    problem = length_error(length, unit)
    if problem is not True:
        raise ConfigError(problem)
    if unit == "latent frames":
        frames = math.ceil(length)
    else:
        pixels = length * family.fps if unit == "seconds" else length
        frames = math.ceil(pixels / 4)
    return family.blocks_for(frames)


class StreamingSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongLive_StreamingSampler", display_name="LongLive Streaming Sampler", category="LongLive",
            description="Generates video block by block (LongLive 1.x: 3 latent frames, 4 steps each; LongLive 2.0: "
                        "8, 4 UniPC steps, shots, image-to-video). With a session id the KV cache stays on the server "
                        "and every run continues the same video.",
            inputs=[
                ModelType.Input("model"), ScheduleType.Input("schedule"),
                io.Int.Input("width", default=832, min=16, max=2048, step=16, tooltip="Multiple of 16; trained at 832"),
                io.Int.Input("height", default=480, min=16, max=2048, step=16, tooltip="Multiple of 16; trained at 480"),
                io.Float.Input("length", default=5.0, min=0.1, max=MAX_LENGTH, step=0.1,
                               tooltip="How much new video this run makes; rounded up to whole blocks"),
                io.Combo.Input("length_unit", options=list(LENGTH_UNITS), default="seconds"),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=False),
                io.Int.Input("local_attn_size", default=12, min=6, max=64,
                             tooltip="Latent frames of KV cache (sink included); at least sink + 3. LongLive 2.0: "
                                     "its window, 32 upstream (multiples of 8)"),
                io.Int.Input("sink_size", default=3, min=0, max=30, tooltip="First frames kept forever (LongLive "
                             "2.0: 8 upstream)"),
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
                io.Vae.Input("vae", optional=True, tooltip="The Wan VAE (2.1 for LongLive 1.x, 2.2 for 2.0), or its "
                             "tiny decoder (lighttaew2_1, lighttaew2_2: many times faster, blurrier): decode each "
                             "block as soon as it is made, continuing the session's video seamlessly: the frames go at "
                             "once to LongLive Save Video, to the LongLive panel, and to IMAGE when a node takes it. "
                             "Without it IMAGE is empty: decode LATENT with LongLive VAE Decode"),
                io.Boolean.Input("compile_vae", default=False, optional=True, tooltip="With a Wan VAE: decode through "
                                 "the compiled decoder, as LongLive VAE Decode's `compile` (faster after a one-time "
                                 "compile); a tiny decoder is not compiled"),
                io.Image.Input("image", optional=True, tooltip="LongLive 2.0 image-to-video: the video's first "
                               "frame (the video's width x height), encoded with the Wan 2.2 VAE on the vae input; "
                               "only a new video takes it"),
                io.Combo.Input("position_mode", options=list(POSITION_MODES), default="absolute", optional=True,
                               tooltip="absolute: upstream's default; a LongLive 1.x video ends at latent frame 1024 "
                                       "(about 4 minutes), a LongLive 2.0 one never. relative (LongLive 1.x): "
                                       "upstream's infinite-length mode (block-relativistic RoPE): no end, for live "
                                       "sessions. A session keeps the mode it was made with"),
                decode_device_input(),
            ],
            outputs=[io.Latent.Output(display_name="LATENT"), io.Image.Output(display_name="IMAGE"),
                     FilesType.Output(display_name="video", tooltip="To LongLive Save Video (needs the VAE)")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def fingerprint_inputs(cls, session_id="", **_):
        # a named session changes with every run: never serve it from the cache
        return float("nan") if session_id else None

    @classmethod
    def validate_inputs(cls, length, length_unit, switch_policy, session_id, position_mode="absolute",
                        decode_device=None) -> bool | str:
        """At queue time: ComfyUI checks neither a V3 node's lists nor NaN against bounds. (An input fed by a link
        is None here: execute checks it.)"""
        if None in (length, length_unit, switch_policy, session_id):
            return True
        try:
            check_session_id(session_id)
        except ConfigError as exc:
            return str(exc)
        return first_error(length_error(length, length_unit), switch_policy in SWITCH_POLICIES
                           or f"switch_policy: '{switch_policy}' is not one of {', '.join(SWITCH_POLICIES)}",
                           position_mode in (None, *POSITION_MODES)
                           or f"position_mode: '{position_mode}' is not one of {', '.join(POSITION_MODES)}",
                           device_error(decode_device, "decode_device"))

    @classmethod
    def execute(cls, model: LongLiveModel, schedule: PromptList, width, height, length, length_unit, seed,
                local_attn_size, sink_size, switch_policy, session_id, reset, batch_size, live=False, vae=None,
                compile_vae=False, position_mode="absolute", image=None, decode_device=None) -> io.NodeOutput:
        session_id = check_session_id(session_id)
        if live and not session_id:
            raise PromptError("live needs a session_id: the panel and the routes find the session by it")
        family = family_of(model.model)
        frames = latent_frames(length, length_unit, family)
        settings = VideoSettings(model.signature, batch_size, width, height, local_attn_size, sink_size,
                                 switch_policy, seed, session_id, position_mode)
        node_id, graph = (cls.hidden.unique_id, cls.hidden.prompt) if cls.hidden else (None, None)
        requests = save_requests(graph, node_id)
        if requests and vae is None:
            raise ConfigError("LongLive Save Video needs decoded frames: connect the Wan VAE (2.1 for LongLive 1.x, 2.2 "
                              "for 2.0) to the sampler's vae input")
        if vae is None and decode_device not in (None, DEFAULT_DEVICE):
            raise ConfigError(f"decode_device: {decode_device} decodes with the vae input; connect the Wan VAE, or "
                              f"choose '{DEFAULT_DEVICE}'")
        first = None if image is None else first_frame_latent(vae, image, width, height, family)
        load(model)
        if model.model.device.type == "cuda":  # the peak memory the sessions route reports is this run's
            torch.cuda.reset_peak_memory_stats(model.model.device)
        video, note = open_video(model, settings, reset, first)
        try:  # claimed: a DELETE or a save of the session is refused until the run's end
            frames = video.fit(frames, live)
            files = Files(video, requests, batch_size, width, height)
            try:
                decoder = None if vae is None else BlockDecoder(video, vae, compile_vae, files,
                                                                output_taken(graph, node_id, IMAGE_OUTPUT), live,
                                                                decode_device)
                hooks = run_hooks(video, model, schedule, decoder, frames // family.block, node_id)
                video.schedule(schedule.for_family(family), frames, hooks.embed_text)
                latents, images = video.run(frames, live, hooks)
            except BaseException:
                files.abandon()
                raise
            written = files.finish()
            samples = raw_latents(latents).to(mm.intermediate_device())
            if session_id and vae is None:
                video.deliver(samples)  # kept until LongLive VAE Decode takes it (an interrupt there keeps it)
        finally:
            video.unclaim()
        return io.NodeOutput({"samples": samples}, images, written, ui={"text": [note]})


def load(model: LongLiveModel) -> None:
    """Makes sure the weights are on the GPU (ComfyUI may have moved them) and the graphs still fit."""
    mm.load_models_gpu([model.patcher], force_full_load=True)
    model.refresh_graphs()


def fully_loaded(patcher) -> bool:
    """Whether ComfyUI holds the whole model on its GPU (not unloaded, not partly loaded in low-VRAM mode): its weights
    are where the run's last load left them, so a block needs no load, and a run readies its decoder beside its first
    blocks only then (the weights stay where they are meanwhile)."""
    return patcher in mm.loaded_models() and not getattr(patcher.model, "model_lowvram", False)


def first_frame_latent(vae, image: torch.Tensor, width: int, height: int, family: Family) -> torch.Tensor:
    """Image-to-video: the IMAGE [B, H, W, C] encoded by the Wan 2.2 VAE -> the engine's latent [B, 1, 48, h, w]."""
    if family is not V2:
        raise ConfigError(f"image: image-to-video is LongLive 2.0's; this is a {family.name} model (text-to-video): "
                          f"disconnect the image or load a LongLive 2.0 model")
    if vae is None:
        raise ConfigError("image: image-to-video encodes the image with the Wan 2.2 VAE (wan2.2_vae.safetensors): "
                          "connect it to the sampler's vae input")
    check_wan_vae(vae, V2.latent_channels)
    if is_tiny(vae):
        raise ConfigError("image: image-to-video encodes the image with the Wan 2.2 VAE (wan2.2_vae.safetensors), and "
                          "the vae input holds Wan 2.2's tiny decoder, which cannot encode: connect the Wan 2.2 VAE "
                          "(and decode with LongLive VAE Decode's 'tiny draft' if you want the tiny decoder)")
    if tuple(image.shape[1:3]) != (height, width):
        raise ConfigError(f"image: {image.shape[2]}x{image.shape[1]} pixels, but the video is {width}x{height}; scale "
                          f"the image to {width}x{height} (ImageScale) or set the sampler's width and height to its size")
    return model_latents(vae.encode(image[..., :3]))


def open_video(model: LongLiveModel, settings: VideoSettings, reset: bool,
               image: torch.Tensor | None = None) -> tuple[Video, str]:
    """The named video (made outside the registry's lock), or a new unnamed one, claimed for this run (Video.claim:
    the caller unclaims it); and what the node shows about it. image: image-to-video's first-frame latent, which only
    a new video takes."""
    key = settings.session_id

    saved = save_path(key) if key and not reset else None

    def make() -> Video:
        make_room(model, settings)
        video = Video.open(model.model, settings, model.fast, image)
        if saved and os.path.exists(saved):  # a session saved before the server restarted resumes
            restore_video(video, saved)
            video.resumed_from = saved
        model.videos.add(video)
        return video

    if not key:
        video = unnamed_video(model, settings, make, image)
        video.claim()
        return video, "a new video (no session id)"
    if model.spare is not None:  # a named session needs its room more
        model.spare, spare = None, model.spare
        spare.close()
    if reset:
        free_session(key)
    video, created = claim_session(key, make)
    try:
        return video, _check_session(video, created, model, settings, reset, image)
    except BaseException:
        video.unclaim()
        raise


def _check_session(video: Video, created: bool, model: LongLiveModel, settings: VideoSettings, reset: bool,
                   image: torch.Tensor | None) -> str:
    """Refuses a named video this run cannot continue; takes the model ComfyUI loaded again; what the node shows."""
    key = settings.session_id
    if image is not None and not created:
        raise ConfigError(f"image: session '{key}' is at latent frame {video.session.frame}; an image starts a new "
                          f"video: turn on reset, use a new session id, or disconnect the image")
    changed = video.settings.changes(settings)
    if changed:
        raise ConfigError(f"session '{key}' was made with other settings ({', '.join(changed)}); turn on "
                          f"reset to start it over with these, or use another session id")
    if video.session.model is not model.model:  # ComfyUI loaded the same file again (its cache was freed)
        log.info("LongLive session '%s' continues with the model loaded again", key)
        video.use_model(model.model, model.fast)
        model.videos.add(video)
    if created and video.resumed_from:
        note = f"session '{key}' resumes from its save {video.resumed_from} at latent frame {video.session.frame}"
        log.info("LongLive %s", note)
    elif created and not reset:
        note = (f"session '{key}' is new: this server had no session of that name (a restart or a DELETE ends one) "
                f"and no save of it, so this run starts a new video at frame 0")
        log.warning("LongLive %s", note)
    else:
        note = f"session '{key}' {'starts' if created else 'continues'} at latent frame {video.session.frame}"
        log.info("LongLive %s", note)
    return note


def unnamed_video(model: LongLiveModel, settings: VideoSettings, make, image: torch.Tensor | None = None) -> Video:
    """A new video for a run without a session id: the last one started over where it has the same settings but the
    seed and neither holds an image (its caches and CUDA graphs stay: no capture), else a new one that replaces it."""
    spare = model.spare
    if spare is not None and image is None and spare.session.image is None and not spare.settings.changes(settings) \
            and spare.session.model is model.model:
        spare.restart(settings.seed)
        return spare
    model.spare = None
    if spare is not None:
        spare.close()
    model.spare = make()
    return model.spare


def make_room(model: LongLiveModel, settings: VideoSettings) -> None:
    """Asks ComfyUI's model management to free what a new session needs (other models it can unload), before the
    engine checks that the session fits."""
    needs = session_bytes(model.model, settings.batch, settings.height, settings.width, settings.local_attn_size)
    mm.free_memory(sum(needs.values()), model.model.device, keep_loaded=[model.patcher])


def run_hooks(video: Video, model: LongLiveModel, schedule: PromptList, decoder: BlockDecoder | None, blocks: int,
              node_id) -> RunHooks:
    """ComfyUI's side of a run: the text encoder, the weights loaded again before a block where ComfyUI moved some
    out (for the text encoder or the VAE; its load of a model it holds whole, which did nothing but took the host 10-13
    ms on the way of each prompt switch in run 113, is skipped), its interrupt between passes, the decode of each
    block to its outputs (compiled before the first block), the progress bar with a preview, the `longlive.block`
    event for the page, the live pace (the session's viewers)."""

    def prepare() -> None:
        if not fully_loaded(model.patcher):
            load(model)

    def made(done: BlockDone) -> None:
        if decoder is not None:
            decoder.made(done)
        send_block_event(video, done)

    return RunHooks(embed_text=lambda text: text_embeddings(text, model),
                    encode=schedule.encoder, prepare=prepare, check=mm.throw_exception_if_processing_interrupted,
                    decode=decoder, made=made, shown=progress(video, blocks, node_id, decoder),
                    lead=decoder and decoder.lead, ready_decode=decoder and decoder.readying,
                    beside=lambda: fully_loaded(model.patcher))


def progress(video: Video, blocks: int, node_id, decoder: BlockDecoder | None):
    """ComfyUI's progress bar, and the hook that advances it with each block's preview: its last decoded frame with a
    VAE, else ComfyUI's own latent previewer (latent-to-RGB, or with --preview-method taesd the tiny video decoder
    in models/vae_approx)."""
    bar = comfy.utils.ProgressBar(blocks, node_id=node_id)
    previewer = latent_preview.get_previewer(video.session.model.device, LATENT_FORMATS[video.family.latent_channels])

    def shown(done: BlockDone) -> None:
        if decoder is not None:
            preview = ("JPEG", _image(decoder.last_frame), 512)
        else:
            preview = previewer.decode_latent_to_preview_image("JPEG", done.latents.transpose(1, 2)) if previewer else None
        bar.update_absolute(done.index + 1, done.blocks, preview)

    return shown


def _image(frame: torch.Tensor):
    from PIL import Image

    return Image.fromarray(frame.numpy())


def text_embeddings(text: str, model: LongLiveModel) -> torch.Tensor:
    """Embeddings of a prompt that has none: only a tiny test model (hashed random embeddings) runs without an
    encoder."""
    if not model.synthetic:
        raise PromptError("the prompt schedule has no text encoder: connect a CLIP (umt5-xxl, CLIPLoader type "
                          "wan) to the LongLive Prompt Schedule node")
    log.warning("tiny test model: prompt '%s' becomes hashed random embeddings (the video is noise)", text[:40])
    return hashed_embeds(text, model.model.cfg.text_dim)


def send_block_event(video: Video, done: BlockDone) -> None:
    """Session stats for the page, as a `longlive.block` event."""
    from server import PromptServer

    server = getattr(PromptServer, "instance", None)
    if server is not None:
        server.send_sync("longlive.block", {"session": video.settings.session_id, "frame": done.frame,
                                            "video_time": video_time(done.frame, video.family.fps),
                                            **video.stats.as_dict(), "switched": done.posted is not None,
                                            "live": video.live})
