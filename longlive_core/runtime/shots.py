"""A LongLive 2.0 video (LONGLIVE_V2.md): the Wan2.2-TI2V-5B network made causal, generating blocks of 8 latent
frames with 4-step UniPC, a prompt per block, and shots.

One block: its frames get cache slots, four denoising passes write their post-RoPE K/V there and attend to
the cached frames plus themselves, the sampler's table (runtime/unipc.py) turns the four velocities into the
block, and a clean pass at timestep 0 writes the block's final K/V. A scene cut (a block whose prompt starts a
new shot) moves the time positions of the new shot `shot_offset` frames on, and after its clean pass its first
frames become the pinned shot sink. What a block attends to: its own frames, the global sink (the first `sink`
frames), the shot sink, and the most recent other frames that fit in `window` frames in all. No mask: the order
of the cache slots does not matter, so frames take the lowest free slot and evict the oldest unprotected frames.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import torch

from ..errors import ConfigError, PromptError
from ..model.cache import KVCache, TextCache
from ..model.config import PATCH, TEXT_LEN
from ..model.wan import CausalWan, PassPlan, RopeTable, TimeEmbedding
from .session import Runner
from .unipc import SHIFT, unipc_table

V2_CHANNELS = 48
SCENE_CUT_PREFIX = "The scene transitions. "
SHOT_SWITCH_POLICIES = ("keep", "recache", "reset")


@dataclasses.dataclass(frozen=True)
class ShotSettings:
    """Upstream's inference settings (the configs'): 8-frame blocks, a window of 32 frames with a global sink of 8,
    the multi-shot sink, a RoPE offset of 8 a shot, 4 UniPC steps at shift 5. shot_clean_recache (off in every
    config): at a cut, before the cut block's clean pass, the cache is cut back to the global sink, so the new shot
    continues from the global sink and its own shot sink only. switch_policy, at a prompt change inside a shot (no
    cut): keep (upstream: only the text changes), recache (v1's: the current shot's cached frames are run again at
    timestep 0 under the new prompt, so their K/V follow it), reset (a new video starts at that block)."""

    block: int = 8
    window: int = 32
    sink: int = 8
    shot_sink: bool = True
    shot_offset: int = 8
    steps: int = 4
    shift: float = SHIFT
    shot_clean_recache: bool = False
    switch_policy: str = "keep"

    def check(self) -> None:
        if self.block < 1 or self.sink < 0 or self.window < self.sink + self.block or self.shot_offset < 0:
            raise ConfigError(f"shot settings: window {self.window} must hold the sink ({self.sink}) and a block "
                              f"({self.block}); sink and shot_offset must be >= 0")
        pinned = min(self.sink, self.block) if self.shot_sink else 0
        if self.window < self.sink + pinned + self.block:
            raise ConfigError(f"shot settings: window {self.window} cannot hold the global sink ({self.sink}), the shot "
                              f"sink ({pinned}) and a block ({self.block}); raise the window to at least "
                              f"{self.sink + pinned + self.block} or turn the shot sink off")
        if self.sink % self.block or self.window % self.block:
            raise ConfigError(f"shot settings: window {self.window} and sink {self.sink} must be multiples of the "
                              f"block ({self.block} frames)")
        if self.switch_policy not in SHOT_SWITCH_POLICIES:
            raise ConfigError(f"switch_policy '{self.switch_policy}' is unknown; choose one of "
                              f"{', '.join(SHOT_SWITCH_POLICIES)}")
        if self.steps not in (2, 3, 4):
            raise ConfigError(f"steps={self.steps}: LongLive 2.0 samples with 2, 3 or 4 UniPC steps")


class ShotSession:
    """A LongLive 2.0 video being generated, block after block. noise(block) -> [B, 8, 48, h, w]: each block's
    initial noise (the sampler draws nothing else). image: image-to-video, the normalized latent [1 or B, 1, 48, h,
    w] of the first frame: in the first block latent frame 0 is held at it, at timestep 0, in every pass. runner: what
    runs the passes (fast/runner.GraphRunner: CUDA graphs of the steady ones); the model by default."""

    position_mode = "absolute"  # time positions grow with the video (and each shot's offset)
    # ... with no end: their angles are computed for any position (RopeTable.time), as upstream computes them once a
    # shot has an offset (its 1024-row table ends only a first shot that long, where upstream fails)
    end_position = None

    def __init__(self, model: CausalWan, *, batch: int, latent_hw: tuple[int, int],
                 noise: Callable[[int], torch.Tensor] | None = None, settings: ShotSettings = ShotSettings(),
                 image: torch.Tensor | None = None, seed: int = 0, runner: Runner | None = None):
        if model.cfg.in_dim != V2_CHANNELS:
            raise ConfigError(f"this model has {model.cfg.in_dim} latent channels: a LongLive 2.0 video needs the "
                              f"Wan2.2-TI2V-5B network (48); LongLive 1.x models run in a StreamSession")
        settings.check()
        h, w = latent_hw
        if h % PATCH[1] or w % PATCH[2]:
            raise ConfigError(f"latent size {h}x{w} must be even in both directions (pixels: multiples of 32)")
        self.model, self.cfg, self.settings, self.batch, self.seed = model, model.cfg, settings, batch, seed
        self.runner: Runner = runner or model
        self._noise_arg = noise
        self.latent_hw, self.grid = latent_hw, (h // PATCH[1], w // PATCH[2])
        self.frame_tokens = self.grid[0] * self.grid[1]
        self.table = unipc_table(settings.steps, settings.shift)
        cfg, dev = self.cfg, model.device
        self.cache = KVCache(*(torch.zeros(cfg.num_layers, batch, settings.window * self.frame_tokens, cfg.num_heads,
                                           cfg.head_dim, device=dev, dtype=model.kv_dtype) for _ in range(2)),
                             settings.window, settings.sink, self.frame_tokens)
        self.text = TextCache.allocate(cfg.num_layers, batch, TEXT_LEN, cfg.num_heads, cfg.head_dim, dev, model.dtype)
        self.rope = RopeTable(cfg.head_dim, dev)
        self.image = None if image is None else self._check_image(image, latent_hw)
        self._embed_times()
        self.pending: dict[int, tuple[torch.Tensor, bool]] = {}  # frame -> (embeds, cut): prompts scheduled
        self.reset()

    def reset(self) -> None:
        """Starts a new video: empty caches, no prompt, frame 0, noise from the seed again (the image stays)."""
        self.cache.zero_()
        self.text.zero_()
        self.noise = self._noise_arg or _seeded_noise(self.seed, self.batch, self.settings.block, self.grid)
        self.slots: list[int | None] = [None] * self.settings.window  # the latent frame each cache slot holds
        self.pinned: set[int] = set()  # the shot sink's frames
        self.frame, self.shot, self._embeds = 0, 0, None
        self.origin = 0  # the frame at time position 0 (a reset starts a new video there)
        self.shot_start = 0  # the first frame of the current shot
        self.clean: dict[int, tuple[torch.Tensor, int]] = {}  # recache: held frame -> (its latent, its position)
        self.pending.clear()

    # --- as a named video runs it (runtime/video.py): prompts scheduled by frame ------------------------------

    @property
    def pos(self) -> int:
        """The time position of the next frame."""
        return self._position(self.frame)

    def set_prompt(self, embeds: torch.Tensor, at_frame: int | None = None, blend_blocks: int = 1,
                   blend: str = "linear", cut: bool = False) -> None:
        """Schedules a prompt for the block starting at `at_frame` (default: the next block); `cut`: that block
        starts a new shot. LongLive 2.0 switches prompts at a block: no blending."""
        at = self.frame if at_frame is None else at_frame
        if blend_blocks != 1:
            raise PromptError(f"blend_blocks={blend_blocks}: LongLive 2.0 switches prompts at a block (its switch "
                              f"policies: {', '.join(SHOT_SWITCH_POLICIES)}); post the prompt without blending")
        if at % self.settings.block or at < self.frame:
            raise PromptError(f"a prompt must start at a block boundary (a multiple of {self.settings.block} latent "
                              f"frames) not before frame {self.frame}; got frame {at}")
        self.pending[at] = (embeds, cut)

    def clear_pending(self) -> None:
        """Drops the prompts scheduled for later blocks."""
        self.pending.clear()

    def step_block(self, between_passes: Callable[[], None] | None = None) -> torch.Tensor:
        """The next block under the prompt scheduled for it, or the prompt in force."""
        embeds, cut = self.pending.get(self.frame, (self._embeds, False))
        if embeds is None:
            raise PromptError("no prompt is set for this session; call set_prompt before generating")
        block = self.make_block(embeds, cut, between_passes)
        self.pending.pop(self.frame - self.settings.block, None)
        return block

    def use_model(self, model: CausalWan, runner=None) -> None:
        """Continues the video with another load of the same weights (a host that reloaded them)."""
        if model.cfg != self.cfg or model.device != self.cache.k.device:
            raise ConfigError(f"use_model needs the same network on {self.cache.k.device}; start a new session")
        self.model, self.runner = model, runner or model
        self._embed_times()  # from this load's weights

    def export_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything the next block depends on, as tensors and JSON-able fields (runtime/durable.py; the noise comes
        from the seed and the block index)."""
        tensors = {"cache.k": self.cache.k, "cache.v": self.cache.v}
        tensors.update({f"text.{name}": t for name, t in self.text.state().items()})
        if self._embeds is not None:
            tensors["prompt"] = self._embeds
        if self.image is not None:
            tensors["image"] = self.image
        tensors.update({f"pending.{frame}": embeds for frame, (embeds, _) in self.pending.items()})
        tensors.update({f"clean.{frame}": latent for frame, (latent, _) in self.clean.items()})
        fields = {"frame": self.frame, "shot": self.shot, "origin": self.origin, "shot_start": self.shot_start,
                  "slots": self.slots, "pinned": sorted(self.pinned),
                  "pending": {str(f): cut for f, (_, cut) in self.pending.items()},
                  "clean": {str(f): position for f, (_, position) in self.clean.items()}}
        return tensors, fields

    def import_state(self, tensors: dict[str, torch.Tensor], fields: dict) -> None:
        """The inverse of export_state, into this session's own buffers (the caller checked the caches' shapes)."""
        dev = self.model.device
        self.cache.k.copy_(tensors["cache.k"])
        self.cache.v.copy_(tensors["cache.v"])
        self.text.load_state({k.removeprefix("text."): t for k, t in tensors.items() if k.startswith("text.")})
        self._embeds = tensors["prompt"].to(dev) if "prompt" in tensors else None
        self.image = tensors["image"].to(dev) if "image" in tensors else None
        self._embed_image_times()
        self.frame, self.shot, self.origin, self.shot_start = (fields[k] for k in ("frame", "shot", "origin", "shot_start"))
        self.slots, self.pinned = list(fields["slots"]), set(fields["pinned"])
        self.pending = {int(f): (tensors[f"pending.{f}"].to(dev), cut) for f, cut in fields["pending"].items()}
        self.clean = {int(f): (tensors[f"clean.{f}"].to(dev), position) for f, position in fields["clean"].items()}

    def _state(self) -> tuple:
        return (list(self.slots), set(self.pinned), self.shot, self.origin, self.shot_start, dict(self.clean),
                self._embeds)

    def _restore(self, state: tuple) -> None:
        embeds = self._embeds
        self.slots, self.pinned, self.shot, self.origin, self.shot_start, self.clean, self._embeds = state
        if self._embeds is not embeds and self._embeds is not None:  # the text cache holds the prompt in force again
            self.model.fill_text_cache(self._embeds.expand(self.batch, -1, -1), self.text)

    def _check_image(self, image: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
        want = (V2_CHANNELS, *latent_hw)
        if image.dim() != 5 or image.shape[1] != 1 or tuple(image.shape[2:]) != want or image.shape[0] not in (1, self.batch):
            raise ConfigError(f"image: the first frame's latent must be [1 or {self.batch}, 1, {', '.join(map(str, want))}] "
                              f"(a frame the video's size, encoded by the Wan 2.2 VAE); got {list(image.shape)}")
        return image.to(self.model.device, torch.float32).expand(self.batch, -1, -1, -1, -1)

    # --- one block ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def make_block(self, embeds: torch.Tensor, cut: bool = False,
                   between_passes: Callable[[], None] | None = None) -> torch.Tensor:
        """Generates the next block under `embeds` ([1 or B, 512, text_dim] umt5 embeddings); `cut`: this block
        starts a new shot (the first block never does). Returns the block's latents [B, 8, 48, h, w].
        `between_passes` runs before each denoising pass and may raise to stop the block there (an interrupt): the
        session is then as it was before the call (the passes wrote only the slots the block takes again)."""
        s, index = self.settings, self.frame // self.settings.block
        cut = cut and index > 0
        before = self._state()
        try:
            self._prompt(embeds, cut, index)
            plan = self._plan()
            image = self.image if index == 0 else None
            block = self._denoise(self.noise(index).to(self.model.device, torch.float32), plan, image, between_passes)
        except BaseException:
            self._restore(before)
            raise
        if cut and s.shot_clean_recache:
            plan = self._cut_back(plan)
        self._pass(block, self.times[-1], dataclasses.replace(plan, cache_only=True))  # clean K/V
        if cut and s.shot_sink and s.sink:
            self.pinned = set(range(self.frame, self.frame + min(s.sink, s.block)))
        if s.switch_policy == "recache":
            self._keep_clean(block)
        self.frame += s.block
        return block

    def _prompt(self, embeds: torch.Tensor, cut: bool, index: int) -> None:
        """A cut starts a shot; a prompt change inside a shot goes by the switch policy."""
        if cut:
            self.shot += 1 if self.settings.shot_offset else 0
            self.shot_start = self.frame
        if self._set_text(embeds) and index > 0 and not cut:
            if self.settings.switch_policy == "reset":
                self._restart()
            elif self.settings.switch_policy == "recache":
                self._recache()

    def _denoise(self, eps: torch.Tensor, plan: PassPlan, image: torch.Tensor | None,
                 between_passes: Callable[[], None] | None = None) -> torch.Tensor:
        """The sampler's passes: input i is eps + sum_j c_ij v_j (frame 0 held at the image), the block the
        table's last row."""
        velocities: list[torch.Tensor] = []
        for step in range(len(self.table.timesteps)):
            if between_passes is not None:
                between_passes()
            x = _held(_combine(eps, self.table.steps[step], velocities), image)
            velocities.append(self._pass(x, self._time(step, image), plan).float())
        return _held(_combine(eps, self.table.output, velocities), image)

    def _set_text(self, embeds: torch.Tensor) -> bool:
        """Fills the text cache for a new prompt (padded with zero embeddings to 512 tokens, as upstream's text
        embedding pads the umt5 output); returns whether the prompt changed."""
        if embeds.shape[1] > TEXT_LEN:
            raise ConfigError(f"prompt embeddings of {embeds.shape[1]} tokens: umt5 gives at most {TEXT_LEN}")
        embeds = torch.nn.functional.pad(embeds, (0, 0, 0, TEXT_LEN - embeds.shape[1]))
        if self._embeds is not None and self._embeds.shape == embeds.shape and torch.equal(self._embeds, embeds):
            return False
        self.model.fill_text_cache(embeds.expand(self.batch, -1, -1), self.text)
        self._embeds = embeds.clone()
        return True

    # --- switch policies -------------------------------------------------------------------------------------

    def _restart(self) -> None:
        """reset: the cache empties and time positions start again at this block (a new video from here)."""
        self.slots = [None] * self.settings.window
        self.pinned, self.clean = set(), {}
        self.origin = self.shot_start = self.frame
        self.shot = 0

    def _keep_clean(self, block: torch.Tensor) -> None:
        """recache: the block's clean latents and positions, kept while their frames are in the cache."""
        for i in range(block.shape[1]):
            self.clean[self.frame + i] = (block[:, i:i + 1], self._position(self.frame + i))
        held = set(self.slots)
        self.clean = {f: kept for f, kept in self.clean.items() if f in held}

    def _recache(self) -> None:
        """recache: the current shot's cached frames run again at timestep 0 under the new prompt (already in the
        text cache), each at its own position, writing their K/V where they are."""
        frames = [(slot, f) for slot, f in enumerate(self.slots) if f is not None and f >= self.shot_start]
        if not frames:
            return
        x = torch.cat([self.clean[f][0] for _, f in frames], dim=1)
        angles = [self.rope.cos_sin(self.clean[f][1], 1, *self.grid) for _, f in frames]
        tokens = (torch.tensor([slot for slot, _ in frames])[:, None] * self.frame_tokens
                  + torch.arange(self.frame_tokens)).flatten()
        plan = PassPlan(torch.cat([c for c, _ in angles]), torch.cat([s for _, s in angles]),
                        tokens.to(self.model.device), self._held_tokens(), cache_only=True)
        self._pass(x, self.times[-1], plan)

    def _embed_times(self) -> None:
        """The time embeddings (with each layer's modulation) of the steps and of the clean pass (t = 0), and with an
        image those of the first block's steps (a timestep a frame: frame 0 at 0): the same tensors every block, so
        that a runner's CUDA graphs replay them."""
        dev = self.model.device
        self.times = [self.model.time_embed(torch.full((self.batch,), float(t), device=dev), layers=True)
                      for t in [*self.table.timesteps, 0.0]]
        self._embed_image_times()

    def _embed_image_times(self) -> None:
        frames = self.settings.block - 1
        self.image_times = None if self.image is None else [
            self.model.time_embed(torch.tensor([0.0] + [float(t)] * frames, device=self.model.device).expand(
                self.batch, -1), layers=True) for t in self.table.timesteps]

    def _time(self, step: int, image: torch.Tensor | None) -> TimeEmbedding:
        """The time embedding of a step; with the image, the first block's."""
        return self.times[step] if image is None else self.image_times[step]

    def _pass(self, x: torch.Tensor, time: TimeEmbedding, plan: PassPlan) -> torch.Tensor | None:
        return self.runner(x, time, plan, self.cache, self.text)

    # --- where the block's K/V go, and what it attends to ------------------------------------------------------

    def warm_up_passes(self) -> list[tuple[torch.Tensor, TimeEmbedding, PassPlan]]:
        """(latents, time, plan) of what a runner's warm-up compiles and captures, on zero latents in the first slots:
        the passes that repeat once the window is full (a block's steps and its clean pass), and with an image the
        first block's steps (their own compiled variant: a modulation a frame). They write garbage K/V: the caller
        zeroes the cache after."""
        s, dev = self.settings, self.model.device
        tokens = torch.arange(s.block * self.frame_tokens, device=dev)
        cos, sin = self.rope.cos_sin(0, s.block, *self.grid)
        steady = PassPlan(cos, sin, tokens, s.window * self.frame_tokens)
        x = torch.zeros(self.batch, s.block, V2_CHANNELS, *self.latent_hw, device=dev)
        passes = [*((x, time, steady) for time in self.times[:-1]),
                  (x, self.times[-1], dataclasses.replace(steady, cache_only=True))]
        first = PassPlan(cos, sin, tokens, s.block * self.frame_tokens)
        return passes + [(x, time, first) for time in self.image_times or []]

    def held_frames(self) -> list[int]:
        """The latent frames whose K/V the cache holds: what the next block attends to besides itself (the last
        block made is among them)."""
        return sorted(f for f in self.slots if f is not None)

    def _plan(self) -> PassPlan:
        slots = self._take_slots(self.settings.block)
        for offset, slot in enumerate(slots):
            self.slots[slot] = self.frame + offset
        tokens = (torch.tensor(slots)[:, None] * self.frame_tokens + torch.arange(self.frame_tokens)).flatten()
        cos, sin = self.rope.cos_sin(self._position(self.frame), self.settings.block, *self.grid)
        return PassPlan(cos, sin, tokens.to(self.model.device), self._held_tokens())

    def _held_tokens(self) -> int:
        """The cache tokens a pass attends to: frames fill the lowest slots, so a prefix up to the last held one."""
        return (max(i for i, f in enumerate(self.slots) if f is not None) + 1) * self.frame_tokens

    def _cut_back(self, plan: PassPlan) -> PassPlan:
        """shot_clean_recache: every frame but the global sink leaves the cache; the block's clean pass writes its
        K/V right after the sink and attends to the sink and itself."""
        self.slots = [f if f is not None and f < self.origin + self.settings.sink else None for f in self.slots]
        self.pinned = set()
        return self._plan()

    def _position(self, frame: int) -> int:
        """A frame's time position: its index in the video (since a reset), plus the shot offset."""
        return frame - self.origin + self.shot * self.settings.shot_offset

    def _take_slots(self, count: int) -> list[int]:
        """The block's slots: free ones first, then those of the oldest frames outside the global and shot sinks."""
        free = [i for i, f in enumerate(self.slots) if f is None]
        if len(free) < count:
            protected = set(range(self.origin, self.origin + self.settings.sink)) | self.pinned
            held = sorted((f, i) for i, f in enumerate(self.slots) if f is not None and f not in protected)
            free += [i for _, i in held[:count - len(free)]]
        return sorted(free[:count])


def _seeded_noise(seed: int, batch: int, block: int, grid: tuple[int, int]) -> Callable[[int], torch.Tensor]:
    """Each block's noise [B, block, 48, h, w] drawn from the seed and the block index (on the CPU: the same on
    every machine)."""
    shape = (batch, block, V2_CHANNELS, grid[0] * PATCH[1], grid[1] * PATCH[2])

    def noise(index: int) -> torch.Tensor:
        key = int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1
        return torch.randn(shape, generator=torch.Generator().manual_seed(key))

    return noise


def _held(x: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
    """Latent frame 0 replaced by the image's (image-to-video's first block)."""
    if image is not None:
        x[:, :1] = image
    return x


def _combine(eps: torch.Tensor, coefficients: tuple[float, ...], velocities: list[torch.Tensor]) -> torch.Tensor:
    """eps + sum_j c_j v_j (the sampler's table row), float32."""
    x = eps.clone()
    for c, v in zip(coefficients, velocities):
        if c:
            x.add_(v, alpha=c)
    return x


def is_cut(prompt: str, prefix: str = SCENE_CUT_PREFIX) -> bool:
    """Whether a block's prompt starts a new shot (upstream marks it with a text prefix)."""
    return prompt.startswith(prefix)
