"""A named video: the one owner of what a video is made of between runs (its StreamSession, the CUDA graphs of its
passes, its decoder streams, the prompts posted to it while it runs live, its stats), and how a run generates it.

The host (ComfyUI's nodes) passes in what only it can do as RunHooks: encode a text, decode a block, show
progress. A run that is interrupted keeps its finished blocks (and their decoded frames) for the next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import queue
import threading
import time
from typing import Any, Callable

import torch

from ..errors import ConfigError, LongLiveError, PromptError, RunEndingError
from ..fast.runner import GraphRunner, warm_up
from ..model.config import ROPE_POSITIONS
from ..model.wan import CausalWan
from ..timing import GpuTimer
from .devices import on_device
from .family import V1, V2, Family, family_of
from .prompt_text import check_starts
from .session import StreamSession
from .shots import ShotSession, ShotSettings

log = logging.getLogger(__name__)
# a live run starts its next block when less video waits at its viewers than a block's making time + this: the
# buffer that absorbs a slow block (a switch, a stall) without a gap; a posted prompt's first frame skips it
PACE_MARGIN_S = 0.5
FIRST_ENCODE_S = 0.1  # a text encoding's time until one is timed (umt5-xxl, the schedule's encode: 42-99 ms, run 132)
PASS_POLL_S = 0.0005  # how often a live block looks whether its last pass is done (or a prompt came)
MAX_UNDECODED_FRAMES = 256  # latent frames of delivered runs kept for a decode that was interrupted (100 MB at 480x832)


@dataclasses.dataclass(frozen=True)
class VideoSettings:
    """What a video is made with; a run that continues it must ask for the same (the seed may differ)."""

    model: tuple  # what the model was loaded with: the same means the same weights
    batch: int
    width: int
    height: int
    local_attn_size: int
    sink_size: int
    switch_policy: str
    seed: int
    session_id: str = ""
    position_mode: str = "absolute"  # "relative": unbounded length (StreamSession)

    def changes(self, wanted: "VideoSettings") -> list[str]:
        """The settings `wanted` changes, as 'name: old -> new' (the seed may change)."""
        old, new = dataclasses.asdict(self), dataclasses.asdict(wanted)
        return [f"{k}: {old[k]} -> {new[k]}" for k in old if k != "seed" and old[k] != new[k]]


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt of a run: its start (latent frame, relative to the run), its text (may be empty) and embeddings
    (None: the run's hooks make them from the text)."""

    start: int
    text: str
    embeds: torch.Tensor | None = None
    cut: bool = False  # LongLive 2.0: this prompt starts a new shot (its text carries upstream's scene-cut prefix)

    def key(self) -> str:
        """Identity of the prompt, to tell whether a continuing run changed it."""
        if self.embeds is None:
            return "text:" + self.text
        data = self.embeds.detach().float().cpu().contiguous().numpy().tobytes()
        return "embeds:" + hashlib.sha256(data).hexdigest()


# a prompt's key, or the prompt itself where its key (a hash of its embeddings) is taken only when asked for
PromptKey = str | Prompt | None


def key_of(prompt: PromptKey) -> str | None:
    return prompt.key() if isinstance(prompt, Prompt) else prompt


@dataclasses.dataclass(frozen=True)
class PostedPrompt:
    """A prompt posted to a live run: it switches at the next block, or blends in over blend_blocks blocks."""

    text: str
    posted_at: float  # time.time()
    blend_blocks: int = 1
    blend: str = "linear"
    cut: bool = False  # LongLive 2.0: it starts a new shot (its text carries upstream's scene-cut prefix)


@dataclasses.dataclass
class Stats:
    warm_up_s: float | None = None
    warm_up_compile_s: float | None = None  # of warm_up_s: the first round of passes (torch.compile compiles there)
    decoder_warm_up_s: float | None = None  # this run readied the decoder: the time its blocks waited for that
    decoder_beside_s: float | None = None  # and the readying's own time, where it ran beside the generation
    last_block_ms: float | None = None
    last_decode_ms: float | None = None  # the decodes (GPU time) that had finished by the last block's hand-off
    fps: float | None = None
    graphs: str | None = None
    last_switch_ms: float | None = None
    last_encode_ms: float | None = None  # the last posted prompt's text encoding on its way to the screen (0: ahead)

    def as_dict(self) -> dict:
        """The figures known so far."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class BlockDone:
    """A block of a run: its index of `blocks`, latents [B, block, C, h, w], decoded images [B * pixel frames, H, W, 3]
    or None, the posted prompt it switched to, and the video's latent frames up to its end."""

    index: int
    blocks: int
    latents: torch.Tensor
    images: torch.Tensor | None
    posted: PostedPrompt | None
    frame: int


def _nothing(_done: BlockDone) -> None:
    return None


@dataclasses.dataclass
class RunHooks:
    """What the host does around a run. encode: the text encoder of posted prompts (None: none connected); embed_text:
    embeddings of a prompt that has none (raises where that cannot be); prepare: before each block (the host makes
    sure the weights are where the model runs); check: before each denoising pass (raises to interrupt the run
    inside a block); decode: launches the decode of block latents and returns what finishes it (None: no decoding);
    the finisher returns images [B * frames, H, W, 3], or None where the frames went elsewhere (a file, the viewers)
    and the run returns no images (nor where it raises, a full disk under a file: the decode went through, so the
    block is not decoded again and the images skip its frames). A run that is not live finishes a block's decode
    after it has launched the next block, so the GPU never waits for the host's hand-off. made: after a block is
    generated (stats are current); shown: after it is decoded (progress, preview; may raise to interrupt the run);
    lead: in a live run, seconds of video made and not yet shown to its viewers (the run waits while that is more
    than a block takes to make, so it stays about one block ahead, and at its end until it is 0); ready_decode:
    before the first block, on the run's thread (it may load the decoder's weights), returns what readies the decode
    for this video's blocks (compiles it, runs cuDNN's finds), or None where nothing needs readying: a live run runs
    it there, before its first block; another runs it on a thread of its own while its first blocks are generated,
    and decodes them once it is done, where `beside` says the host's weights stay where they are meanwhile (called
    after ready_decode); what the readying raises there (the host's interrupt too) is raised on the run's thread
    once it is done. Embeddings are [1 or B, tokens, text_dim]."""

    embed_text: Callable[[str], torch.Tensor]
    encode: Callable[[str], torch.Tensor] | None = None
    prepare: Callable[[], None] = lambda: None
    check: Callable[[], None] | None = None
    decode: Callable[[torch.Tensor], Callable[[], torch.Tensor | None]] | None = None
    made: Callable[[BlockDone], None] = _nothing
    shown: Callable[[BlockDone], None] = _nothing
    lead: Callable[[], float] | None = None
    ready_decode: Callable[[], Callable[[], None] | None] | None = None
    beside: Callable[[], bool] = lambda: True


class Video:
    """One named video. Make it with Video.open (which warms up its graphs before the first block)."""

    def __init__(self, model: CausalWan, settings: VideoSettings, fast: bool, image: torch.Tensor | None = None):
        self.settings = settings
        self.family = family_of(model)
        self.session = _new_session(self.family, model, settings, fast, image)
        self.in_force: PromptKey = None  # the prompt in force, to tell whether a new run changes it
        self.upcoming: dict[int, PromptKey] = {}  # frame -> the prompt starting there
        self.undelivered: list[torch.Tensor] = []  # blocks of an interrupted run
        self.undelivered_images: list[torch.Tensor] = []  # and their decoded frames (empty: decoded, not kept)
        self.delivered: list[torch.Tensor] = []  # runs' latents as handed on, until a decode of the video takes them
        self.decoders: dict[str, Any] = {}  # decoder streams by the decoder's identity
        self.stats = Stats()
        self.live = False  # a live run is generating: posted prompts are taken
        self.playing_out = False  # a live run's last frames are leaving for its viewers: a stop ends the wait
        self.running = False  # a run is generating (live or not)
        self.busy = threading.Lock()  # held by a run and by a save (runtime/durable.py): one at a time
        self._close_when_done = False
        self.inbox: "queue.Queue[PostedPrompt]" = queue.Queue()
        self.taking_posts = False  # a live run takes posted prompts (until its last block or a stop: _close_posts)
        self._posts = threading.Lock()  # a post and the run's closing of posts, one at a time
        self.claims = 0  # the host's runs and decodes holding the video (claim: a DELETE or a save refuses it then)
        self._claims = threading.Lock()
        self.stop = threading.Event()
        self.switches: list[dict] = []
        self.resumed_from: str | None = None  # the save it was restored from (runtime/durable.py)
        self.outputs: dict[str, Any] = {}  # the host's outputs kept across runs (a file it appends to): closed with it
        self.decoding_at = 0  # the latent frame where the block the host decodes starts
        self._block_s = 0.0  # wall time of the last block with its decode and hooks (the live pace)
        self._waiting: _Made | None = None  # a run's block whose decode is launched, not yet handed to the host
        self.typed: str | None = None  # what a live run's viewer is typing: encoded while the run waits (type_ahead)
        self._typed_embeds: tuple[str, torch.Tensor] | None = None
        self._encode_s = FIRST_ENCODE_S  # how long the last text encoding took
        self._ahead = False  # the last posted prompt's text was encoded while it was typed

    @classmethod
    def open(cls, model: CausalWan, settings: VideoSettings, fast: bool, image: torch.Tensor | None = None) -> "Video":
        """image: LongLive 2.0's image-to-video, the first frame's latent [1 or B, 1, 48, h, w] (ShotSession)."""
        start = time.perf_counter()
        video = cls(model, settings, fast, image)
        with on_device(model.device):
            compiling = warm_up(video.session)  # compile + capture now: no later block or switch pays for it
        video.stats.warm_up_s = round(time.perf_counter() - start, 2)
        video.stats.warm_up_compile_s = None if compiling is None else round(compiling, 2)
        return video

    # --- what the video holds ---------------------------------------------------------------------------------

    @property
    def prompt_key(self) -> str | None:
        """The key of the prompt in force (Prompt.key)."""
        return key_of(self.in_force)

    @property
    def nbytes(self) -> int:
        s = self.session
        return s.cache.nbytes + 2 * s.text.k.numel() * s.text.k.element_size()

    def graph_state(self) -> str:
        """Whether the video's passes replay as CUDA graphs, and why not."""
        runner = self.session.runner
        if not isinstance(runner, GraphRunner):
            return "off (fast is off or not on CUDA)"
        return f"off: {runner.failed}" if runner.failed else f"{len(runner.graphs)} captured"

    def describe(self) -> dict:
        s = self.session
        return {"frames": s.frame, "blocks": s.frame // self.family.block, "family": self.family.name,
                "device": str(s.cache.k.device),
                "video_time": video_time(s.frame, self.family.fps),
                "settings": dataclasses.asdict(self.settings),
                "state": self.state,
                "switches": self.switches[-20:],
                "typed_encoded": typed[0][:200] if (typed := self._typed_embeds) else None,  # ready for its post
                "undelivered_frames": sum(b.shape[1] for b in self.undelivered),
                "cache_gib": round(self.nbytes / 2**30, 4), **self.stats.as_dict()}

    @property
    def state(self) -> str:
        """live (taking prompts), ending (a live run's last frames leaving), generating (another run), in use (a run
        or a decode of the host holds it: Video.claim), idle."""
        if self.live:
            return "live"
        if self.playing_out:
            return "ending"
        return "generating" if self.running else "in use" if self.claims else "idle"

    def decoder(self, key: str, make: Callable[[], Any]) -> Any:
        """The video's decoder stream for a decoder identity (made on first use)."""
        if key not in self.decoders:
            self.decoders[key] = make()
        return self.decoders[key]

    def deliver(self, samples: torch.Tensor) -> None:
        """Records a run's latents [B, C, T, h, w] as the host hands them on (undecoded_before, decoded)."""
        self.delivered.append(samples)
        while len(self.delivered) > 1 and sum(s.shape[2] for s in self.delivered) > MAX_UNDECODED_FRAMES:
            dropped = self.delivered.pop(0)
            log.warning("LongLive session '%s': %d latent frames delivered earlier were never decoded with it; they "
                        "are dropped", self.settings.session_id, dropped.shape[2])

    def undecoded_before(self, samples: torch.Tensor) -> list[torch.Tensor]:
        """The latents of earlier runs that no decode of this video took (their decode was interrupted), when
        `samples` is a run's delivered latents; else nothing."""
        ids = [id(s) for s in self.delivered]
        return self.delivered[:ids.index(id(samples))] if id(samples) in ids else []

    def decoded(self, samples: torch.Tensor) -> None:
        """A decode of this video took `samples` and everything delivered before it."""
        ids = [id(s) for s in self.delivered]
        if id(samples) in ids:
            del self.delivered[:ids.index(id(samples)) + 1]

    def use_model(self, model: CausalWan, fast: bool) -> None:
        """Continues with another load of the same weights (the host loaded the file again)."""
        self.session.use_model(model, GraphRunner(model) if fast else None)

    def drop_graphs(self) -> None:
        """After the weights moved: every graph is captured again (a runner whose capture failed stays without)."""
        if isinstance(self.session.runner, GraphRunner):
            self.session.runner.clear()

    def close(self) -> None:
        """Frees the GPU memory the graphs hold, now or, while a run generates, when it ends; the video stays usable
        (graphs are captured again if it runs again)."""
        if self.running:
            self._close_when_done = True
            return
        self.drop_graphs()
        for stream in self.decoders.values():
            stream.close()
        self.close_outputs()

    def close_outputs(self) -> None:
        """Finishes the host's outputs (files it appended to across runs)."""
        outputs, self.outputs = self.outputs, {}
        for output in outputs.values():
            try:
                output.close()
            except LongLiveError as err:  # the file's own error: what was written stays
                log.warning("%s", err)

    def reset(self) -> None:
        """A block that failed half way may have written part of the cache: the video starts over."""
        self.session.reset()
        self.in_force = None
        self.upcoming.clear()
        self.undelivered.clear()
        self.undelivered_images.clear()
        self.delivered.clear()
        self.decoders.clear()
        self.close_outputs()

    def restart(self, seed: int) -> None:
        """Starts a new video with this seed in the same caches and graphs (nothing is captured again)."""
        self.settings = dataclasses.replace(self.settings, seed=seed)
        self.session.seed = seed
        self.reset()
        if isinstance(self.session.runner, GraphRunner):
            self.session.runner.restart()
        self.switches.clear()
        self.stats = Stats(warm_up_s=0.0)

    # --- a run ------------------------------------------------------------------------------------------------

    def fit(self, frames: int, live: bool) -> int:
        """A LongLive 1.x video in absolute positions can run to latent frame 1024 (Wan's RoPE table): a live run
        stops there, others are refused. Relative positions and LongLive 2.0's have no end."""
        if self.session.end_position is None:
            return frames
        room = (self.session.end_position - self.session.pos) // self.family.block * self.family.block
        if frames <= room:
            return frames
        if live and room > 0:
            log.info("live run limited to %d latent frames (RoPE table ends at %d)", room, ROPE_POSITIONS)
            return room
        minutes = ROPE_POSITIONS * 4 / self.family.fps / 60
        raise ConfigError(f"length: this run needs {frames} latent frames but the session has room for {room} more "
                          f"(the model's RoPE table ends at position {ROPE_POSITIONS}, about {minutes:.0f} minutes); "
                          f"shorten the run, reset the session, or make the video with position_mode 'relative' "
                          f"(no limit)")

    def schedule(self, prompts: list[Prompt], frames: int, embed_text: Callable[[str], torch.Tensor]) -> None:
        """Schedules a run's prompts relative to its first frame; an unchanged first prompt is no switch."""
        check_starts([p.start for p in prompts], frames, self.family.block)
        cuts = [p for p in prompts if p.cut]
        if cuts and self.family is not V2:
            raise PromptError(f"the schedule marks a scene cut at latent frame {cuts[0].start}: scene cuts are LongLive "
                              f"2.0's (shots); a LongLive 1.x model changes prompts by its switch_policy: remove 'cut'")
        if prompts[0].cut:
            raise PromptError("the first prompt of a run cannot be a scene cut (a cut starts a new shot after another): "
                              "remove 'cut' from the first line")
        base = self.session.frame
        self.session.clear_pending()  # prompts of an earlier run that stopped early do not carry over
        self.upcoming.clear()
        for i, prompt in enumerate(prompts):
            self.upcoming[base + prompt.start] = prompt.key()
            if i == 0 and prompt.key() == self.prompt_key:
                continue
            embeds = prompt.embeds if prompt.embeds is not None else embed_text(prompt.text)
            self.session.set_prompt(embeds, at_frame=base + prompt.start, **({"cut": True} if prompt.cut else {}))

    def post(self, prompt: PostedPrompt) -> int:
        """Queues a prompt for the live run's next block; returns the frame it was posted at. Refused (RunEndingError)
        where the run takes no more prompts: it was stopped, or its last block is made; PromptError where the family
        cannot take it (a cut in LongLive 1.x or before the video's first block, a blend in LongLive 2.0)."""
        if prompt.cut and self.family is not V2:
            raise PromptError("'cut:' starts a new shot: scene cuts are LongLive 2.0's; post the text without 'cut:'")
        if prompt.cut and self.session.frame == 0:
            raise PromptError("'cut:' starts a new shot after another, and the video has no block yet (as a schedule's "
                              "first line cannot be a cut); post the text without 'cut:'")
        if prompt.blend_blocks != 1 and self.family is V2:
            raise PromptError(f"blend_blocks={prompt.blend_blocks}: LongLive 2.0 switches prompts at a block (with "
                              f"its switch policy); post the prompt without blending")
        with self._posts:
            if not self.taking_posts or self.stop.is_set():
                raise RunEndingError(f"session '{self.settings.session_id}': its live run is ending (stopped, or its "
                                     f"last block is made), so the prompt was not queued; queue the sampler again "
                                     f"with live on to go on with it")
            self.inbox.put(prompt)
            return self.session.frame

    def _close_posts(self, moment: str) -> None:
        """The run takes no more posted prompts: its last block is made, it stops, or it fails (`moment`: what the run
        did as a prompt it then drops was posted). A prompt it did not take is logged, but after a stop."""
        with self._posts:
            self.taking_posts = False
            late = _drain(self.inbox)
        if late is not None and not self.stop.is_set():
            log.warning("LongLive session '%s': the prompt '%s' was posted as the live run %s; the run ended without "
                        "it", self.settings.session_id, late.text[:200], moment)

    def claim(self) -> None:
        """A host's run (from the video's opening to its end) or decode holds the video until it unclaims it: a DELETE,
        which checks `claims` while it holds `busy`, and a save refuse it meanwhile. Waits for a save (busy) to end."""
        with self.busy, self._claims:
            self.claims += 1

    def unclaim(self) -> None:
        with self._claims:
            self.claims -= 1

    def type_ahead(self, text: str) -> None:
        """A text a live run's viewer is typing: the run encodes it while it waits for its viewers, so that posting it
        switches without waiting for its encoding."""
        self.typed = text

    def run(self, frames: int, live: bool, hooks: RunHooks) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Generates a run's blocks (a live run also takes posted prompts between blocks and ends early on stop).
        Returns (latents [B, T, C, h, w] float32, images [B * frames, H, W, 3] sample after sample, or None)."""
        with self.busy, on_device(self.session.model.device):  # its Triton kernels and graphs on the model's GPU
            return self._run(frames, live, hooks)

    def _run(self, frames: int, live: bool, hooks: RunHooks) -> tuple[torch.Tensor, torch.Tensor | None]:
        blocks = frames // self.family.block
        with self._posts:
            _drain(self.inbox)
            self.taking_posts = live
        self.stop.clear()
        self.typed = self._typed_embeds = None  # a text typed for another run (another encoder, maybe)
        self.live, self.running = live, True
        self._waiting = None
        readying: _Readying | None = None  # the decoder readied beside the first blocks (not live)
        backlog: list[_Made] = []  # blocks generated meanwhile, decoded once it is done
        try:
            try:
                self._decode_owed(hooks.decode)
                readying = self._ready_decode(hooks, live)
                for i in range(blocks):
                    if live and i > 0:
                        self._pace(hooks)
                        if self.stop.is_set():  # a live run makes at least one block
                            self._close_posts("stopped")
                            break
                    eager_runs = self._eager_runs()
                    backlog.append(self._generate(i, blocks, live, hooks))
                    if i == blocks - 1:
                        self._close_posts("launched its last pass")
                    if readying is not None:
                        if self._still_readying(readying, eager_runs):
                            continue
                        readying = None
                    for made in backlog:
                        self._pass_on(made, live, hooks)
                    backlog = []
                if readying is not None:  # a run shorter than the readying
                    readying.finish(self.stats)
                for made in backlog:
                    self._pass_on(made, live, hooks)
                if live:
                    self._play_out(hooks)
            finally:
                if readying is not None:
                    readying.wait()  # an interrupt: the blocks it held back are decoded by the next run (_decode_owed)
                waiting, self._waiting = self._waiting, None
                if waiting is not None and len(self.undelivered_images) < len(self.undelivered):
                    self._hand_off(waiting, hooks)  # its frames are made: not lost to an interrupt (nor kept after a reset)
        finally:
            self.live = self.running = False
            self._close_posts("was interrupted or failed")
            if self._close_when_done:
                self._close_when_done = False
                self.close()
        latents, images = torch.cat(self.undelivered, dim=1), self.undelivered_images
        self.undelivered, self.undelivered_images = [], []
        images = [i for i in images if i.numel()]
        if hooks.decode is None or not images:
            return latents, None
        return latents, torch.cat(images, dim=1).flatten(0, 1)

    def _ready_decode(self, hooks: RunHooks, live: bool) -> "_Readying | None":
        """Readies the decode before the first block is decoded (RunHooks.ready_decode), so no block's decode waits
        for it: a live run here (its first frame waits for it in any case), another on a thread of its own beside the
        generation of its first blocks where the host allows it (RunHooks.beside): returned, to be started once the
        blocks replay their CUDA graphs (compiled calls run one at a time in a process, fast/compile.py: a pass that
        calls compiled code waits while the readying compiles), and finished before the first decode."""
        self.stats.decoder_warm_up_s = self.stats.decoder_beside_s = None
        start = time.perf_counter()
        work = hooks.ready_decode() if hooks.ready_decode is not None and hooks.decode is not None else None
        if work is None:
            return None
        if live or not hooks.beside():
            work()
            self.stats.decoder_warm_up_s = round(time.perf_counter() - start, 2)
            return None
        return _Readying(work, waited=time.perf_counter() - start)  # the decoder's weights loaded for it

    def _eager_runs(self) -> int | None:
        """Passes run through the model so far rather than from a CUDA graph (GraphRunner.eager_runs): 0 without
        graphs where the model calls no compiled code; None where the session cannot replay graphs and its compiled
        code runs at every pass."""
        runner = self.session.runner
        if isinstance(runner, GraphRunner):
            return None if runner.failed else runner.eager_runs
        return None if self.session.model.calls_compiled else 0

    def _still_readying(self, readying: "_Readying", eager_before: int | None) -> bool:
        """After a block: starts the readying once a block ran every pass from its CUDA graphs, as every block does
        once the window is full (no compiled code then runs on this thread, where it would wait for the readying's
        compile: a switch that runs passes no graph holds does), or runs it here where the session cannot replay
        graphs. Returns whether it is still under way (the blocks wait to be decoded); one that is over has set its
        stats."""
        if not readying.started:
            now = self._eager_runs()
            if now is None:
                readying.finish(self.stats)
                return False
            if now == eager_before:
                readying.start()
            return True
        if not readying.done:
            return True
        readying.finish(self.stats)
        return False

    def _pass_on(self, made: "_Made", live: bool, hooks: RunHooks) -> None:
        """Launches a block's decode and hands the block before it (_waiting) to the host meanwhile (the GPU decodes
        this one while the host takes that one's frames); a live block, or one with nothing to decode, is handed on at
        once."""
        previous, self._waiting = self._waiting, None
        if previous is not None:
            self._hand_off(previous, hooks)
        self._waiting = self._launch_decode(made, hooks)
        if live or hooks.decode is None:
            made, self._waiting = self._waiting, None
            self._hand_off(made, hooks)

    @property
    def block_shape(self) -> tuple[int, int, int, int, int]:
        """A block's latents: [B, frames, C, h, w]."""
        s = self.session
        return (s.batch, self.family.block, self.family.latent_channels, *s.latent_hw)

    def _pace(self, hooks: RunHooks) -> None:
        """A live run waits while its viewers have more video queued than the next block takes to make (a posted
        prompt, a stop or an interrupt ends the wait), and meanwhile encodes the text being typed."""
        if hooks.lead is None:
            return
        while ((spare := hooks.lead() - self._block_s - PACE_MARGIN_S) > 0 and self.inbox.empty()
               and not self.stop.is_set()):
            if hooks.check is not None:
                hooks.check()
            if not self._encode_typed(hooks, spare):
                self.stop.wait(0.005)

    def _encode_typed(self, hooks: RunHooks, spare: float) -> bool:
        """Encodes the text being typed where it is new and its encoding fits in the `spare` seconds of the wait (a
        failure is left to its post, which encodes it again). Returns whether it encoded."""
        text = self.typed
        if text is None or spare < self._encode_s or (self._typed_embeds and self._typed_embeds[0] == text):
            return False
        try:
            self._typed_embeds = (text, self._encode(text, hooks))
        except Exception as err:  # the prompt is not posted yet: its post reports what is wrong with it
            log.warning("encoding the text being typed failed (%s); it is encoded again when posted", err)
            self.typed = None
        return True

    def _encode(self, text: str, hooks: RunHooks) -> torch.Tensor:
        """A text's embeddings from the host's encoder (without one: `embed_text`), timed."""
        start = time.perf_counter()
        embeds = hooks.encode(text) if hooks.encode is not None else hooks.embed_text(text)
        self._encode_s = time.perf_counter() - start
        return embeds

    def _play_out(self, hooks: RunHooks) -> None:
        """A live run ends once its viewers have been sent its last frame: the host may stall every thread as a run
        ends (ComfyUI's prompt worker collects garbage then: 0.3-0.5 s without a frame at the viewer, run 98). An
        interrupt or a stop sent meanwhile ends the wait (the stop that ended the run does not: its frames still play),
        and so does twice the time the queued video takes to play (a stuck viewer). No prompt is taken meanwhile (one
        posted now is refused: the run is no longer live)."""
        self.live = False
        if hooks.lead is None:
            return
        self.stop.clear()
        self.playing_out = True
        deadline = time.monotonic() + 2 * hooks.lead() + 0.5
        try:
            while not self.stop.is_set() and hooks.lead() > 0 and time.monotonic() < deadline:
                if hooks.check is not None:
                    hooks.check()
                self.stop.wait(0.005)
        finally:
            self.playing_out = False

    def _decode_owed(self, decode: Callable[[torch.Tensor], Callable[[], torch.Tensor | None]] | None) -> None:
        """Decodes the kept blocks without images (an interrupt cut their decode off, or their run decoded nothing):
        this run's IMAGE holds the frames of every block its LATENT holds."""
        if decode is None:
            return
        owed = self.undelivered[len(self.undelivered_images):]
        self.decoding_at = self.session.frame - sum(b.shape[1] for b in owed)
        for latents in owed:
            self._keep_images(decode(latents), latents)
            self.decoding_at += latents.shape[1]

    def _generate(self, index: int, blocks: int, live: bool, hooks: RunHooks) -> "_Made":
        """Launches a block's passes. In a live run, a prompt posted while a block is made under the old prompt cuts
        that block short at its next pass, and the block is made again under the new one."""
        start = time.perf_counter()
        posted = self._take_posted(hooks) if live else None
        hooks.prepare()
        started_at = self.session.frame
        timer = GpuTimer(self.session.model.device)
        try:
            try:
                latents = self._step(hooks.check,
                                     cut_short=live and posted is None and started_at not in self.session.pending)
            except _Superseded:
                posted = self._take_posted(hooks)
                hooks.prepare()
                timer = GpuTimer(self.session.model.device)
                latents = self._step(hooks.check, cut_short=False)
        finally:  # a block stopped between passes keeps the switch it applied: that prompt is in force
            if started_at not in self.session.pending:
                self.in_force = self.upcoming.pop(started_at, self.in_force)
        timer.stop()
        self.undelivered.append(latents.float())
        return _Made(index, blocks, latents, posted, started_at, timer, start)

    def _launch_decode(self, made: "_Made", hooks: RunHooks) -> "_Made":
        if hooks.decode is not None:
            self.decoding_at = made.started_at
            made.finish = hooks.decode(made.latents)
        return made

    def _hand_off(self, made: "_Made", hooks: RunHooks) -> None:
        """A block's stats, its decoded frames to the host, its progress."""
        self._record(made.timer.ms(), made.posted, made.started_at)
        end = made.started_at + made.latents.shape[1]
        hooks.made(BlockDone(made.index, made.blocks, made.latents, None, made.posted, end))
        images = None if made.finish is None else self._keep_images(made.finish, made.latents)
        hooks.shown(BlockDone(made.index, made.blocks, made.latents, images, made.posted, end))
        self._block_s = time.perf_counter() - made.start

    def _keep_images(self, finish: Callable[[], torch.Tensor | None], latents: torch.Tensor) -> torch.Tensor | None:
        """Finishes a launched decode and keeps its images for the run's output. A finisher that raises (a full disk
        under a video file) leaves the block decoded without images: the decoder moved past it, so it is never
        decoded again."""
        try:
            images = finish()
        except BaseException:
            self.undelivered_images.append(_per_sample(None, latents))
            raise
        self.undelivered_images.append(_per_sample(images, latents))
        return images

    def _take_posted(self, hooks: RunHooks) -> PostedPrompt | None:
        """Applies the newest prompt posted since the last block (older ones are superseded)."""
        posted = _drain(self.inbox)
        if posted is None:
            return None
        frame = self.session.frame
        self._ahead = self._typed_embeds is not None and self._typed_embeds[0] == posted.text
        embeds = self._typed_embeds[1] if self._ahead else self._encode(posted.text, hooks)
        self.stats.last_encode_ms = 0.0 if self._ahead else round(self._encode_s * 1e3, 1)
        self.session.set_prompt(embeds, blend_blocks=posted.blend_blocks, blend=posted.blend,
                                **({"cut": True} if posted.cut else {}))
        # the key of encoded embeddings is their hash, taken when it is first asked for (not on the way to the screen)
        key = Prompt(frame, posted.text, embeds if hooks.encode is not None else None, cut=posted.cut)
        self.upcoming[frame + self.family.block * (posted.blend_blocks - 1)] = key
        return posted

    def _step(self, check: Callable[[], None] | None, cut_short: bool) -> torch.Tensor:
        """The session's next block; `check` may stop it between passes, as may a posted prompt where `cut_short`
        (the session can then make the block again)."""
        stopped: list[BaseException] = []

        def between_passes() -> None:
            try:
                if check is not None:
                    check()
                if cut_short:
                    self._until_done_or_posted()
                    if not self.inbox.empty():
                        raise _Superseded
            except BaseException as exc:
                stopped.append(exc)
                raise

        runner = self.session.runner
        try:
            with runner.attempt() if isinstance(runner, GraphRunner) else contextlib.nullcontext():
                return self.session.step_block(between_passes)
        except LongLiveError:
            raise  # refused before any work: the session is unchanged
        except Exception:
            if not stopped:  # a stop between passes leaves the session able to make the block again
                self.reset()
                log.exception("LongLive block failed; the session was reset")
            raise

    def _until_done_or_posted(self) -> None:
        """Before a live block's next pass: waits until the GPU has run what is queued, or a prompt is posted (which
        then cuts the block short). Queued all at once, the passes would leave a prompt posted meanwhile waiting for
        all of them; a live run is paced by its viewers, so the GPU's short idle while a pass is launched costs no
        frames."""
        device = self.session.model.device
        if device.type != "cuda":
            return
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(device))
        while not done.query() and self.inbox.empty():
            time.sleep(PASS_POLL_S)

    def _record(self, ms: float, posted: PostedPrompt | None, frame: int) -> None:
        self.stats.last_block_ms = round(ms, 1)
        decoded = [t for t in (d.timing.take_ms() for d in self.decoders.values() if hasattr(d, "timing"))
                   if t is not None]
        if decoded:  # a host's decoder streams time their calls (vae/)
            self.stats.last_decode_ms = round(sum(decoded), 1)
        self.stats.fps = round(4 * self.family.block * 1e3 / max(ms, 1e-3), 1)
        self.stats.graphs = self.graph_state()
        if posted is not None:
            latency = round((time.time() - posted.posted_at) * 1e3, 1)
            self.switches.append({"frame": frame, "text": posted.text[:200], "prompt_to_block_ms": latency,
                                  "encode_ms": self.stats.last_encode_ms, "encoded_ahead": self._ahead,
                                  "cut": posted.cut})
            self.stats.last_switch_ms = latency


class _Superseded(Exception):
    """A prompt was posted while a live block was made under the old one."""


class _Readying:
    """The decoder's readying (RunHooks.ready_decode's work) on a thread of its own beside a run's blocks. What it
    raises there (an error, or the host's interrupt, which the host's decoder checks for at each of its layers) is
    raised on the run's thread when the run waits for it (finish)."""

    def __init__(self, work: Callable[[], None], waited: float = 0.0):
        self.work = work
        self.waited = waited  # the run's time on it (loading the decoder's weights for it, waiting for it)
        self.seconds: float | None = None  # its own time
        self.failed: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def done(self) -> bool:
        return self.started and not self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="longlive decoder readying", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            self.work()
        except BaseException as exc:  # noqa: BLE001 (raised on the run's thread by finish)
            self.failed = exc
        self.seconds = time.perf_counter() - start

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def finish(self, stats: Stats) -> None:
        """Waits for it (never started: runs it here) and raises what it raised; the run's time on it is its
        decoder_warm_up_s, and where it ran beside the blocks its own time is decoder_beside_s."""
        start = time.perf_counter()
        if not self.started:
            self.work()
        self.wait()
        stats.decoder_warm_up_s = round(self.waited + time.perf_counter() - start, 2)
        stats.decoder_beside_s = round(self.seconds, 2) if self.seconds is not None else None
        if self.failed is not None:
            raise self.failed


@dataclasses.dataclass
class _Made:
    """A block generated in a run, on its way to the host."""

    index: int
    blocks: int
    latents: torch.Tensor
    posted: PostedPrompt | None
    started_at: int  # its first latent frame
    timer: GpuTimer  # the block's generation
    start: float  # perf_counter when the run began it
    finish: Callable[[], torch.Tensor | None] | None = None  # its decode's finisher


def _new_session(family: Family, model: CausalWan, settings: VideoSettings, fast: bool,
                 image: torch.Tensor | None) -> StreamSession | ShotSession:
    """The family's session, with CUDA graphs where `fast`: LongLive 1.x's StreamSession, LongLive 2.0's ShotSession
    (its window and sink from the settings; image-to-video where an image is given)."""
    if family is V2:
        if settings.position_mode != "absolute":
            raise ConfigError("position_mode: LongLive 2.0 runs in absolute positions (its shots move them); choose "
                              "'absolute'")
        shots = ShotSettings(window=settings.local_attn_size, sink=settings.sink_size,
                             switch_policy=settings.switch_policy)
        return ShotSession(model, batch=settings.batch, latent_hw=(settings.height // 16, settings.width // 16),
                           settings=shots, image=image, seed=settings.seed, runner=GraphRunner(model) if fast else None)
    if image is not None:
        raise ConfigError("image: image-to-video is LongLive 2.0's; this is a LongLive 1.x model (text-to-video): "
                          "disconnect the image or load a LongLive 2.0 model")
    return StreamSession(model, batch=settings.batch, height=settings.height, width=settings.width,
                         local_attn_size=settings.local_attn_size, sink_size=settings.sink_size, seed=settings.seed,
                         switch_policy=settings.switch_policy, runner=GraphRunner(model) if fast else None,
                         position_mode=settings.position_mode)


def _per_sample(images: torch.Tensor | None, latents: torch.Tensor) -> torch.Tensor:
    """Decoded frames [B * frames, H, W, 3] -> [B, frames, H, W, 3]; frames not kept (None) -> an empty tensor, which
    still marks the block decoded."""
    return torch.empty(0) if images is None else images.view(latents.shape[0], -1, *images.shape[1:])


def video_time(latent_frames: int, fps: int = V1.fps) -> str:
    """Elapsed video time as minutes:seconds (a latent frame is 4 pixel frames), e.g. '12:30.0'."""
    minutes, seconds = divmod(latent_frames * 4 / fps, 60)
    return f"{int(minutes)}:{seconds:04.1f}"


def _drain(inbox: queue.Queue) -> PostedPrompt | None:
    """Empties the inbox; returns the newest entry."""
    newest = None
    while not inbox.empty():
        newest = inbox.get_nowait()
    return newest
