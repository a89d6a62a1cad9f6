"""Where a sampler run's decoded frames go, block by block: converted to uint8 on the GPU once, then to the video
files of the LongLive Save Video nodes it feeds, to the viewers of its session, and (only when a node takes it) to
the IMAGE output. Nothing here holds the whole video in memory unless IMAGE is taken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
from typing import Callable

import comfy.model_management as mm
import folder_paths
import torch

from ..longlive_core import BlockDone, ConfigError, DecodeStream, SideStream, Video, on_device
from . import viewer
from .decode import check_wan_vae, new_stream, raw_latents, stream_decode_pieces, vae_on, weights_id
from .recording import FileSpec, Recording, RecordingError

log = logging.getLogger("longlive")

SAVE_NODE = "LongLive_SaveVideo"
VIDEO_OUTPUT = 2  # the sampler's output that feeds LongLive Save Video
IMAGE_OUTPUT = 1
PER_RUN, APPEND = "one file per run", "append to the session's file"
SAVE_MODES = (PER_RUN, APPEND)
_LANE = SideStream()  # one decode stream per GPU for the server's life: a session's decoder cache stays on it


@dataclasses.dataclass(frozen=True)
class SaveRequest:
    """A LongLive Save Video node fed by the sampler, as queued."""

    node_id: str
    prefix: str
    mode: str


def output_taken(graph: dict | None, node_id: str, output: int) -> bool:
    """Whether any node of the queued graph takes the sampler's output (unknown graph: assume so)."""
    if graph is None:
        return True
    link = [str(node_id), output]
    return any(isinstance(v, list) and [str(x) for x in v[:1]] + v[1:] == link
               for node in graph.values() for v in node.get("inputs", {}).values())


def save_requests(graph: dict | None, node_id: str) -> list[SaveRequest]:
    """The LongLive Save Video nodes fed by this sampler, read from the queued graph: the sampler writes their files
    while it generates, so their inputs must be typed in (not links from other nodes)."""
    found = []
    for key, node in (graph or {}).items():
        inputs = node.get("inputs", {})
        if node.get("class_type") != SAVE_NODE or inputs.get("video") != [str(node_id), VIDEO_OUTPUT]:
            continue
        prefix, mode = inputs.get("filename_prefix"), inputs.get("mode", PER_RUN)
        if not isinstance(prefix, str) or mode not in SAVE_MODES:
            raise ConfigError(f"LongLive Save Video (node {key}): filename_prefix must be typed into the node (not "
                              f"linked from another node) and mode one of: {', '.join(SAVE_MODES)}")
        found.append(SaveRequest(key, prefix, mode))
    return found


def new_files(prefix: str, width: int, height: int, batch: int) -> list[FileSpec]:
    """The next free name in ComfyUI's output folder for the prefix, as SaveVideo names its files (one counter for
    the run; a batch's samples are told apart after it: `_b0`, `_b1`, ...)."""
    try:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            prefix, folder_paths.get_output_directory(), width, height)
    except Exception as err:  # ComfyUI raises a bare Exception for a prefix that leaves the output folder
        raise ConfigError(f"filename_prefix '{prefix}': {err}") from err
    names = [f"{name}_{counter:05}_.mp4"] if batch == 1 else [f"{name}_{counter:05}_b{b}_.mp4" for b in range(batch)]
    return [FileSpec(os.path.join(folder, filename), filename, subfolder) for filename in names]


class Files:
    """The video files of one run: per-run files are opened now and finished with the run; appended ones live in
    the video (video.outputs) until it is reset or freed."""

    def __init__(self, video: Video, requests: list[SaveRequest], batch: int, width: int, height: int):
        self.video, self.run_files, self.by_node = video, [], {}
        self.appended: dict[str, str] = {}  # node id -> its files' key in video.outputs
        self.fps = video.family.fps
        named = bool(video.settings.session_id)
        opened: list[Recording] = []
        new_keys: list[str] = []  # the session's appended files this run opened
        try:
            for request in requests:
                key = f"file {request.node_id} {request.prefix}"
                if request.mode == APPEND and named and key in video.outputs:
                    recordings = video.outputs[key].recordings
                else:
                    recordings = self._open(request.prefix, batch, width, height)
                    opened += recordings
                    if request.mode == APPEND and named:
                        video.outputs[key] = _Kept(recordings)
                        new_keys.append(key)
                    else:
                        self.run_files.extend(recordings)
                if request.mode == APPEND and named:
                    self.appended[request.node_id] = key
                self.by_node[request.node_id] = recordings
        except BaseException:  # a later node's prefix refused or its file not opened: the run leaves no file behind
            for key in new_keys:
                del video.outputs[key]
            _remove(opened)
            raise
    def _open(self, prefix: str, batch: int, width: int, height: int) -> list[Recording]:
        opened = []
        try:
            for spec in new_files(prefix, width, height, batch):
                opened.append(Recording(spec, width, height, self.fps))
        except RecordingError:
            for recording in opened:
                recording.close()
            raise
        return opened

    def write(self, frames: torch.Tensor) -> None:
        """frames: uint8 [B, N, H, W, 3] on the CPU, to every node's files. A file that failed (a full disk) is reported
        once the others have the frames; a session's appended file that failed is let go, so that its next run starts
        a new one."""
        errors = []
        for node, recordings in self.by_node.items():
            try:
                for recording, sample in zip(recordings, frames):
                    recording.write(sample)
            except RecordingError as err:
                errors.append(err)
                self._let_go(node)
        if errors:
            raise errors[0]

    def _let_go(self, node: str) -> None:
        kept = self.video.outputs.pop(self.appended.pop(node, None), None)
        if kept is not None:
            close_all(kept.recordings)  # their error is the one the run reports

    def finish(self) -> dict[str, list[FileSpec]]:
        """Finishes the per-run files; returns each Save node's files (what it shows)."""
        errors = close_all(self.run_files)
        if errors:
            raise errors[0]
        return {node: [r.spec for r in recordings] for node, recordings in self.by_node.items()}

    def abandon(self) -> None:
        """A failed or interrupted run: its per-run files are finished with what they hold (playable)."""
        for err in close_all(self.run_files):
            log.warning("%s", err)


def _remove(opened: list[Recording]) -> None:
    """Closes and deletes files opened for a run that never began."""
    close_all(opened)
    for recording in opened:
        with contextlib.suppress(OSError):
            os.remove(recording.spec.path)


def close_all(recordings: list[Recording]) -> list[RecordingError]:
    """Finishes every file, whichever fail; returns their errors."""
    errors = []
    for recording in recordings:
        try:
            recording.close()
        except RecordingError as err:
            errors.append(err)
    return errors


class _Kept:
    """A session's appended files, closed with the video."""

    def __init__(self, recordings: list[Recording]):
        self.recordings = recordings

    def close(self) -> None:
        errors = close_all(self.recordings)
        if errors:
            raise errors[0]


class BlockDecoder:
    """Decodes each block right after it is made, continuing the video's own decoder stream, and hands the frames
    to the files, the viewers and (when taken) IMAGE. decode_device: where it decodes (nodes/decode.vae_on); on
    another GPU a block's latents go there as it finishes, and its decode overlaps the next block's generation."""

    def __init__(self, video: Video, vae, fast: bool, files: Files, keep_images: bool, live: bool,
                 decode_device: str | None = None):
        check_wan_vae(vae, video.family.latent_channels)
        vae = vae_on(vae, decode_device)
        self.video, self.vae, self.fast, self.files = video, vae, fast, files
        self.keep_images, self.live = keep_images, live
        self.stream = video.decoder(f"sampler {weights_id(vae)}", lambda: new_stream(vae))  # apart from VAE Decode's
        # latent frames a decoder call: a live Wan 2.1 block's one at a time (None: the stream's own, 3 or Wan 2.2's 1)
        self.piece = 1 if live and isinstance(self.stream, DecodeStream) else None
        self.stream.move_to(vae.device)  # a session's decode continues where this run decodes
        key = video.settings.session_id
        self.channel = viewer.channel(key) if key else None
        if self.channel is not None:
            self.channel.fps = video.family.fps
        self.posted, self.last_frame = None, None

    def made(self, done: BlockDone) -> None:
        self.posted = done.posted

    def readying(self) -> Callable[[], None] | None:
        """What readies the Wan decoder before the video's first decode (once per process, decoder, piece shape and
        mode), with the VAE loaded for it here; None where nothing needs readying. It runs on the decode's own stream
        (its memory stays there for the decode), on the run's thread or on one of its own (Video.run: in inference
        mode, as the decodes run). With compile on it compiles the steady chunk (5-8 s at 480x832 on the H200 with
        warm on-disk caches, 22 s on empty ones); eager on a GPU it runs cuDNN's finds for the video's chunks (2.4 s,
        run 120). No decode then stalls the video for them. A stream under way (continued, or restored from a save
        after a restart: its cache comes back with the strides it had) uses the same code."""
        stream, fsm = self.stream, self.vae.first_stage_model
        if not isinstance(stream, DecodeStream):
            return None  # a tiny decoder
        if not (self.fast or (stream.timed_plans and self.vae.device.type == "cuda")):
            return None  # eager with nothing to find
        b, t, c, h, w = self.video.block_shape
        if stream.is_warm(fsm, (b, c, t, h, w), self.fast, self.piece):
            return None
        mm.load_models_gpu([self.vae.patcher])

        def ready() -> None:
            with torch.inference_mode():
                z = raw_latents(torch.zeros(self.video.block_shape, device=self.vae.device, dtype=self.vae.vae_dtype))
                with self._lane(z) as (z,), on_device(z.device):
                    stream.warm_up(fsm, z, self.fast, self.piece)

        return ready

    def _lane(self, block: torch.Tensor):
        """Where a block decodes: on the generating GPU a stream of its own (the VAE's weights read there)."""
        if self.vae.device != block.device:
            return contextlib.nullcontext((block,))
        fsm = self.vae.first_stage_model
        return _LANE.beside(block, reads=itertools.chain(fsm.parameters(), fsm.buffers()))

    def __call__(self, block: torch.Tensor) -> Callable[[], torch.Tensor | None]:
        """Launches the block's decode and its copies to the host; returns what hands the frames on once they are
        there (the run calls it after it has launched the next block). On the generating GPU the decode goes on a
        stream of its own, beside the next block's generation; ComfyUI loads the VAE first, on the generating
        stream, and weights it frees while the decode runs (unloading the VAE for the generator) wait for it. A live
        block decodes with the Wan decoder a latent frame at a time (`piece`), each piece handed on as soon as it is
        on the host: its first frames reach the viewers after a third of the block's decode."""
        mm.load_models_gpu([self.vae.patcher])
        pieces = []
        with self._lane(block) as (block,):
            stream_decode_pieces(self.vae, raw_latents(block), self.stream, self.fast, self.piece,
                                 lambda images: pieces.append(self._copy(images, self.keep_images)))
        start = self.video.decoding_at

        def finish() -> torch.Tensor | None:
            frame = 0 if start == 0 else 4 * start - 3
            for host, copied, _ in pieces:
                if copied is not None:
                    copied.synchronize()
                self.files.write(host)
                if self.channel is not None:
                    self.channel.publish(host[0], frame, self.posted, paced=self.live)
                self.posted, self.last_frame, frame = None, host[0, -1], frame + host.shape[1]
            if not self.keep_images:
                return None
            kept = [images for *_, images in pieces]
            images = kept[0] if len(kept) == 1 else torch.cat(kept, dim=1)  # a block in one piece: no copy
            return images.flatten(0, 1).to(mm.intermediate_device()).float()

        return finish

    @staticmethod
    def _copy(images: torch.Tensor, keep: bool) -> tuple[torch.Tensor, torch.cuda.Event | None, torch.Tensor | None]:
        """Launches the copy of decoded images [B, N, H, W, 3] to the host as uint8, on the current stream: (frames on
        the host, the event of their copy (None: on the CPU), the images where `keep`)."""
        kept = images if keep else None
        with on_device(images.device):  # the copy and its event on the decoder's stream
            frames = images.mul(255).round_().clamp_(0, 255).to(torch.uint8)
            if not frames.is_cuda:
                return frames, None, kept
            host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(frames, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
        return host, copied, kept

    def lead(self) -> float:
        return self.channel.lead_s() if self.channel is not None else 0.0
