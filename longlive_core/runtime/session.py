"""Streaming sessions: prompt -> blocks -> switch -> continue -> reset, exactly as LongLive v1."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Callable, Iterator, Sequence

import torch

from ..errors import ConfigError, PromptError
from ..model.cache import FRAMES_PER_BLOCK, KVCache, TextCache, check_window
from ..model.config import ROPE_POSITIONS, TEXT_LEN
from ..model.wan import CausalWan, PassPlan, RopeTable, TimeEmbedding
from ..quant.fp8 import to_fp8
from .schedule import DenoisingSchedule, NoiseSource, SeededNoise

log = logging.getLogger(__name__)

SWITCH_POLICIES = ("recache", "reset", "keep")
POSITION_MODES = ("absolute", "relative")
VAE_STRIDE = 8
Runner = Callable[[torch.Tensor, TimeEmbedding, PassPlan, KVCache, TextCache], torch.Tensor]


BLENDS = ("linear", "slerp")
MAX_BLEND_BLOCKS = 64
SINK_MOVE_LAYERS = 10  # relative mode: layers whose sink keys are moved in one go (about 100 MB float32 at 480x832)


def mix(old: torch.Tensor, new: torch.Tensor, t: float, how: str) -> torch.Tensor:
    """Embeddings between two prompts: lerp, or slerp of each token vector (lerp where a token is zero
    or the two are parallel)."""
    lerp = old + (new - old) * t
    if how == "linear":
        return lerp
    a, b = old.float(), new.float()
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    cos = ((a * b).sum(-1, keepdim=True) / (na * nb).clamp(min=1e-12)).clamp(-1, 1)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    slerp = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin.clamp(min=1e-12)
    usable = (sin > 1e-4) & (na > 0) & (nb > 0)
    return torch.where(usable, slerp, lerp.float()).to(old.dtype)


def prepare_embeds(embeds: torch.Tensor, batch: int, text_dim: int, field: str = "embeds") -> torch.Tensor:
    """Checks prompt embeddings and brings them to [batch, 512, text_dim] (pad / truncate like Wan)."""
    if embeds.dim() == 2:
        embeds = embeds[None]
    if embeds.dim() != 3 or embeds.shape[-1] != text_dim:
        raise PromptError(f"{field} must be [batch, tokens, {text_dim}], got {list(embeds.shape)}; "
                          f"use the umt5-xxl text encoder of Wan 2.1")
    if embeds.shape[0] not in (1, batch):
        raise PromptError(f"{field} has batch {embeds.shape[0]} but the session has batch {batch}; "
                          f"give one embedding or one per sample")
    if embeds.shape[1] > TEXT_LEN:
        log.warning("%s has %d tokens; truncating to %d as Wan does", field, embeds.shape[1], TEXT_LEN)
        embeds = embeds[:, :TEXT_LEN]
    if embeds.shape[1] < TEXT_LEN:
        embeds = torch.nn.functional.pad(embeds, (0, 0, 0, TEXT_LEN - embeds.shape[1]))
    return embeds.expand(batch, -1, -1)


def hashed_embeds(text: str, text_dim: int, tokens: int = 16) -> torch.Tensor:
    """Deterministic pseudo-embeddings [1, tokens, text_dim] of a text, for tiny random models (no text encoder has
    their width)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return torch.randn(1, tokens, text_dim, generator=torch.Generator().manual_seed(seed))


class StreamSession:
    """One video being generated block by block, with its KV cache, prompt and noise.

    Latents come out as [B, 3, 16, H/8, W/8] per block, in the model's normalized latent space.
    """

    image = None  # image-to-video is LongLive 2.0's (ShotSession)

    @torch.inference_mode()
    def __init__(self, model: CausalWan, *, batch: int = 1, height: int = 480, width: int = 832,
                 local_attn_size: int = 12, sink_size: int = 3, seed: int = 0,
                 noise: NoiseSource | None = None, switch_policy: str = "recache", runner: Runner | None = None,
                 position_mode: str = "absolute"):
        if model.cfg.in_dim != 16:
            raise ConfigError(f"this model has {model.cfg.in_dim} latent channels: it is LongLive 2.0 (Wan2.2 TI2V "
                              f"5B), which generates in a ShotSession (8-frame blocks, shots); StreamSession runs "
                              f"LongLive 1.x")
        _check_size(batch, height, width)
        check_window(local_attn_size, sink_size)
        check_fits(model, batch, height, width, local_attn_size)
        if switch_policy not in SWITCH_POLICIES:
            raise ConfigError(f"switch_policy '{switch_policy}' is unknown; choose one of {', '.join(SWITCH_POLICIES)}")
        if position_mode not in POSITION_MODES:
            raise ConfigError(f"position_mode '{position_mode}' is unknown; choose one of {', '.join(POSITION_MODES)}")
        self.position_mode = position_mode
        self.model, self.cfg = model, model.cfg
        self.batch, self.switch_policy, self.seed = batch, switch_policy, seed
        self.latent_hw = (height // VAE_STRIDE, width // VAE_STRIDE)
        self.grid = (self.latent_hw[0] // 2, self.latent_hw[1] // 2)
        self.frame_tokens = self.grid[0] * self.grid[1]
        self._noise_arg = noise
        self.runner: Runner = runner or model
        self._allocate(local_attn_size, sink_size)
        self.reset()

    def _allocate(self, window: int, sink: int) -> None:
        cfg, dev, dt = self.cfg, self.model.device, self.model.dtype
        self.cache = KVCache.allocate(cfg.num_layers, self.batch, window, sink, self.frame_tokens,
                                      cfg.num_heads, cfg.head_dim, dev, self.model.kv_dtype,
                                      sink_keys_dtype=dt if self.position_mode == "relative" else None)
        self.text = TextCache.allocate(cfg.num_layers, self.batch, TEXT_LEN, cfg.num_heads, cfg.head_dim, dev, dt)
        self.rope = RopeTable(cfg.head_dim, dev)
        self.schedule = DenoisingSchedule.warped()
        self._embed_times()

    def _embed_times(self) -> None:
        """The time embeddings (with each layer's modulation) of the steps and of the clean pass (t = 0)."""
        times, dev = list(self.schedule.timesteps) + [0.0], self.model.device
        self.times = [self.model.time_embed(torch.full((self.batch,), t, device=dev), layers=True) for t in times]

    # --- state --------------------------------------------------------------------------------

    @torch.inference_mode()
    def reset(self) -> None:
        """Starts a new video: empty caches, no prompt, frame 0, noise from the seed again."""
        self.cache.zero_()
        self.text.zero_()
        self.noise = self._noise_arg or SeededNoise(self.seed, self.model.device)
        self.frame = 0  # frames generated
        self.pos = 0  # RoPE / cache position of the next frame (restarts on a `reset` switch)
        self.block = 0
        self.prompt: torch.Tensor | None = None
        self.pending: dict[int, torch.Tensor] = {}
        self.recent: list[torch.Tensor] = []
        self._owed_clean: tuple[torch.Tensor, PassPlan] | None = None

    def use_model(self, model: CausalWan, runner: Runner | None = None) -> None:
        """Continues the video with another load of the same weights (a host that reloaded them)."""
        # the caches, not the old load, say where the video lives: ComfyUI may have moved the old load to the CPU
        mine, theirs = (self.cache.k.device, self.model.dtype, self.cache.k.dtype), (model.device, model.dtype, model.kv_dtype)
        if model.cfg != self.cfg or mine != theirs:
            raise ConfigError(f"use_model needs the same network on {mine[0]} in {mine[1]} with a {mine[2]} KV cache; "
                              f"got {model.cfg} on {theirs[0]} in {theirs[1]} with {theirs[2]}: start a new session")
        self.model, self.runner = model, runner or model
        self._embed_times()  # from this load's weights

    @property
    def window(self) -> int:
        return self.cache.window

    def warm_up_passes(self) -> list[tuple[torch.Tensor, TimeEmbedding, PassPlan]]:
        """(latents, time, plan) of what a runner's warm-up compiles and captures: the passes that repeat once the
        window is full, on zero latents at a steady position (a block's steps, its clean pass and the recache). They
        write garbage K/V: the caller zeroes the cache after."""
        end = self.window + FRAMES_PER_BLOCK  # any position where the window is full
        block = self.plan(end - FRAMES_PER_BLOCK, FRAMES_PER_BLOCK)
        kept = self.window - self.sink
        recache = self.plan(end - kept, kept, cache_only=True)
        x, chunk = (torch.zeros(self.batch, frames, self.cfg.in_dim, *self.latent_hw, device=self.model.device)
                    for frames in (FRAMES_PER_BLOCK, kept))
        return [*((x, time, block) for time in self.times[:-1]),
                (x, self.times[-1], dataclasses.replace(block, cache_only=True)), (chunk, self.times[-1], recache)]

    @property
    def sink(self) -> int:
        return self.cache.sink

    # --- durable state (runtime/durable.py writes it to a file) ----------------------------------------------

    def export_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything the next block depends on, as tensors and JSON-able fields (the noise comes from the seed and
        the block index; the time embeddings from the model)."""
        tensors = {"cache.k": self.cache.k, "cache.v": self.cache.v}
        tensors.update({f"text.{name}": t for name, t in self.text.state().items()})
        if self.prompt is not None:
            tensors["prompt"] = self.prompt
        tensors.update({f"pending.{frame}": embeds for frame, embeds in self.pending.items()})
        tensors.update({f"recent.{i}": x for i, x in enumerate(self.recent)})
        if self.cache.sink_keys is not None:
            tensors["cache.sink_keys"] = self.cache.sink_keys
        fields = {"frame": self.frame, "pos": self.pos, "block": self.block, "pending": sorted(self.pending),
                  "recent": len(self.recent), "sinks_at": self.cache.sinks_at,
                  "owed_clean": self._owed_clean is not None}  # its latents are the last of `recent`
        return tensors, fields

    @torch.inference_mode()
    def import_state(self, tensors: dict[str, torch.Tensor], fields: dict) -> None:
        """The inverse of export_state, into this session's own buffers (its CUDA graphs stay valid). The caller
        checked the tensors' shapes against export_state's."""
        dev = self.model.device
        self.cache.k.copy_(tensors["cache.k"])
        self.cache.v.copy_(tensors["cache.v"])
        if self.cache.sink_keys is not None:
            self.cache.sink_keys.copy_(tensors["cache.sink_keys"])
        self.cache.sinks_at = fields["sinks_at"]
        self.text.load_state({k.removeprefix("text."): t for k, t in tensors.items() if k.startswith("text.")})
        self.prompt = tensors["prompt"].to(dev) if "prompt" in tensors else None
        self.pending = {frame: tensors[f"pending.{frame}"].to(dev) for frame in fields["pending"]}
        self.recent = [tensors[f"recent.{i}"].to(dev) for i in range(fields["recent"])]
        self.frame, self.pos, self.block = fields["frame"], fields["pos"], fields["block"]
        owed = fields.get("owed_clean") or "skipped_clean" in tensors  # files saved before it was a field
        self._owed_clean = (self.recent[-1], self.plan(self.pos - FRAMES_PER_BLOCK, FRAMES_PER_BLOCK, cache_only=True)
                            ) if owed else None

    # --- prompts --------------------------------------------------------------------------------

    @torch.inference_mode()
    def set_prompt(self, embeds: torch.Tensor, at_frame: int | None = None, blend_blocks: int = 1,
                   blend: str = "linear") -> None:
        """Schedules a prompt for the block starting at `at_frame` (default: the next block).

        blend_blocks > 1 moves from the prompt in force there to the new one over that many blocks
        (`linear` or `slerp` per token), one switch a block; the last block gets the new prompt.
        """
        at = self.frame if at_frame is None else at_frame
        if at % FRAMES_PER_BLOCK:
            raise PromptError(f"a prompt must start on a block boundary (a multiple of {FRAMES_PER_BLOCK} "
                              f"latent frames); got frame {at}")
        if at < self.frame:
            raise PromptError(f"a prompt cannot start at frame {at}: frames up to {self.frame} are generated")
        if blend not in BLENDS or not 1 <= blend_blocks <= MAX_BLEND_BLOCKS:
            raise PromptError(f"blend must be one of {', '.join(BLENDS)} over 1 to {MAX_BLEND_BLOCKS} blocks; got "
                              f"{blend!r} over {blend_blocks}")
        new = prepare_embeds(embeds, self.batch, self.cfg.text_dim).to(self.model.device)
        old = self._prompt_at(at)
        if old is None or blend_blocks == 1:
            self.pending[at] = new
            return
        for k in range(1, blend_blocks + 1):
            self.pending[at + FRAMES_PER_BLOCK * (k - 1)] = mix(old, new, k / blend_blocks, blend)

    def _prompt_at(self, frame: int) -> torch.Tensor | None:
        """The prompt that would be in force at `frame` without a new one."""
        earlier = [f for f in self.pending if f <= frame]
        return self.pending[max(earlier)] if earlier else self.prompt

    def set_schedule(self, segments: Sequence[tuple[int, torch.Tensor]]) -> None:
        """A list of (start frame, embeddings); starts must increase."""
        starts = [s for s, _ in segments]
        if any(b <= a for a, b in zip(starts, starts[1:])):
            raise PromptError(f"prompt starts must increase; got {starts}")
        for start, embeds in segments:
            self.set_prompt(embeds, at_frame=start)

    # --- generation ------------------------------------------------------------------------------

    def generate(self, num_frames: int) -> Iterator[torch.Tensor]:
        """Yields num_frames / 3 blocks of latents [B, 3, C, h, w] (float32, normalized)."""
        if num_frames % FRAMES_PER_BLOCK or num_frames < 0:
            raise ConfigError(f"num_frames={num_frames} must be a non-negative multiple of {FRAMES_PER_BLOCK}")
        for _ in range(num_frames // FRAMES_PER_BLOCK):
            yield self.step_block()

    def clear_pending(self) -> None:
        """Drops the prompts scheduled for later blocks."""
        self.pending.clear()

    @torch.inference_mode()
    def step_block(self, between_passes: Callable[[], None] | None = None) -> torch.Tensor:
        """Generates the next block, applying a prompt switch scheduled for it first. `between_passes` runs before
        each denoising pass and may raise to stop the block there (an interrupt): the session is then as if the
        block had not begun, but with its prompt switch already applied, and the next call makes the same block (its
        noise comes from the block index; a pass rewrites only the block's own cache slots).

        The block's clean pass (its K/V at t = 0) is owed until the next block begins: its latents are returned
        first, so a decode of them does not wait for that pass, and a recache at the next block (a prompt switch,
        scheduled or posted meanwhile) rewrites those frames without it."""
        switch = self.pending.get(self.frame)
        self._check_can_generate(switch)
        self._settle(recache_follows=switch is not None and self.switch_policy == "recache")
        if switch is not None:
            self._switch(self.pending.pop(self.frame))
        plan = self.plan(self.pos, FRAMES_PER_BLOCK)
        x0 = self._denoise(plan, between_passes)
        self._owed_clean = (x0, dataclasses.replace(plan, cache_only=True))  # the same positions: no second RoPE table
        self._remember(x0)
        return x0

    @property
    def end_position(self) -> int | None:
        """Where the video's time positions end: absolute ones with Wan's RoPE table, relative ones never."""
        return ROPE_POSITIONS if self.position_mode == "absolute" else None

    def _check_can_generate(self, switch: torch.Tensor | None) -> None:
        """Refuses before any work, so that a refused block leaves the session as it was."""
        if self.prompt is None and switch is None:
            raise PromptError("no prompt is set for this session; call set_prompt before generating")
        restarts = switch is not None and self.prompt is not None and self.switch_policy == "reset"
        pos = 0 if restarts else self.pos
        if self.end_position is not None and pos + FRAMES_PER_BLOCK > self.end_position:
            raise ConfigError(f"frame position {pos + FRAMES_PER_BLOCK} exceeds the {ROPE_POSITIONS}-position "
                              f"RoPE table of position mode 'absolute'; reset the session, switch with policy 'reset', "
                              f"or make the video with position mode 'relative' (no limit)")

    def _settle(self, recache_follows: bool) -> None:
        """Runs the last block's owed clean pass, under the prompt it belongs to, unless a recache that rewrites its
        frames follows (`recache_follows`)."""
        if self._owed_clean is not None and not recache_follows:
            x0, plan = self._owed_clean
            self._pass(x0, self.times[-1], plan)
        self._owed_clean = None

    def _denoise(self, plan: PassPlan, between_passes: Callable[[], None] | None) -> torch.Tensor:
        c, (h, w) = self.cfg.in_dim, self.latent_hw
        shape = (len(self.schedule), self.batch, FRAMES_PER_BLOCK, c, h, w)
        noise = self.noise.block_noise(self.block, shape, self.model.device, torch.float32)
        x = noise[0]
        sigmas = self.schedule.sigmas
        for i, sigma in enumerate(sigmas):
            if between_passes is not None:
                between_passes()
            x0 = x - sigma * self._pass(x, self.times[i], plan).float()
            if i + 1 < len(sigmas):
                x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * noise[i + 1]
        return x0

    def _remember(self, x0: torch.Tensor) -> None:
        self.recent.append(x0)
        keep = -(-self.window // FRAMES_PER_BLOCK)
        del self.recent[:-keep]
        self.frame += FRAMES_PER_BLOCK
        self.pos += FRAMES_PER_BLOCK
        self.block += 1

    def plan(self, start: int, frames: int, cache_only: bool = False) -> PassPlan:
        """Positions of a pass over frames [start, start + frames) at cache position `start`. In relative mode the
        sinks then sit just before the oldest window frame the cache holds after the pass (upstream's
        block-relativistic RoPE: every frame at its slot, which with RoPE's shift invariance is absolute positions
        with the sinks moved): `sink_shift` frames later than their own positions once the window is full."""
        cos, sin = self.rope.cos_sin(start, frames, *self.grid)
        shift = max(0, start + frames - self.window) if self.position_mode == "relative" else 0
        return PassPlan(cos, sin, self.cache.token_index(start, frames), self.cache.kv_len(start + frames), cache_only,
                        shift)

    def _pass(self, x: torch.Tensor, time: TimeEmbedding, plan: PassPlan) -> torch.Tensor:
        self._place_sinks(plan.sink_shift)
        return self.runner(x, time, plan, self.cache, self.text)

    def _place_sinks(self, shift: int) -> None:
        """Writes the sink keys moved `shift` frames into their cache slots (relative mode; outside any graph, once
        per block). Their keys at their own positions are kept aside when first moved: every move starts from
        them, so rounding never accumulates."""
        cache = self.cache
        if cache.sink_keys is None or shift == cache.sinks_at:
            return
        slots = cache.k[:, :, :cache.sink * cache.frame_tokens]  # [layers, B, sink tokens, H, D]
        steps = self.model.key_steps() if cache.k.dtype == torch.float8_e4m3fn else None
        if cache.sinks_at == 0:
            cache.sink_keys.copy_(slots if steps is None else slots.float() * steps[:, None, None, :, None])
        time_dims = 2 * self.rope.time_freqs.numel()  # a move in time turns only these; the rest stays as written
        for first in range(0, len(slots), SINK_MOVE_LAYERS):  # a few launches a block, a bounded float32 copy
            layers = slice(first, first + SINK_MOVE_LAYERS)
            moved = self.rope.move(cache.sink_keys[layers, ..., :time_dims], shift)
            if steps is not None:
                moved = torch.stack([to_fp8(m, step) for m, step in zip(moved, steps[layers])])
            slots[layers, ..., :time_dims] = moved
        cache.sinks_at = shift

    # --- prompt switches --------------------------------------------------------------------------

    def _switch(self, embeds: torch.Tensor) -> None:
        first = self.prompt is None
        self.prompt = embeds
        if not first and self.switch_policy == "reset":
            self.cache.zero_()
            self.pos = 0
            self.recent.clear()
        self.model.fill_text_cache(embeds, self.text)
        if not first and self.switch_policy == "recache":
            self._recache()

    def _recache(self) -> None:
        """Re-runs the last min(window, pos) frames at t=0 under the new prompt.

        As upstream: while the video is no longer than the window, the re-run chunk starts at
        frame 0 and rewrites every frame, sinks included. Later, the sink frames keep their
        K/V and only the last window - sink frames are rewritten (frames whose K/V would be
        dropped influence nothing that is kept, so they are not run).
        """
        c = self.pos
        start = 0 if c <= self.window else max(self.sink, c - (self.window - self.sink))
        if start >= c:
            return
        frames = torch.cat(self.recent, dim=1)[:, start - c:]
        self._pass(frames, self.times[-1], self.plan(start, c - start, cache_only=True))


def session_bytes(model: CausalWan, batch: int, height: int, width: int, window: int) -> dict[str, int]:
    """What a session allocates (its caches) and what its largest pass needs (a recache of the whole window), in
    bytes: the activations as the layers hold them at once, in the model's dtype with float32 norms (H200, full
    model, 480x832: 1.2 GiB estimated; run 66's eager peak, less the weights and caches, leaves about 0.9)."""
    cfg = model.cfg
    frame_tokens = (height // VAE_STRIDE // 2) * (width // VAE_STRIDE // 2)
    size = torch.empty((), dtype=model.dtype).element_size()
    kv_size = torch.empty((), dtype=model.kv_dtype).element_size()
    tokens = batch * window * frame_tokens
    return {"KV cache": 2 * cfg.num_layers * tokens * cfg.dim * kv_size,
            "text cache": 2 * cfg.num_layers * batch * (TEXT_LEN + 1) * cfg.dim * size,
            "activations": tokens * ((2 * cfg.ffn_dim + 6 * cfg.dim) * size + 2 * cfg.dim * 4)}


def free_bytes(device: torch.device) -> int | None:
    """Memory a session can still take on the device: on CUDA what the driver has free plus what PyTorch holds unused;
    on the CPU the host's available memory (Linux), else None (unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_fits(model: CausalWan, batch: int, height: int, width: int, window: int) -> None:
    """Refuses, before allocating, a session that cannot fit where the model runs, with the numbers and the fix."""
    needs = session_bytes(model, batch, height, width, window)
    free = free_bytes(model.device)
    if free is None or sum(needs.values()) <= free:
        return
    parts = ", ".join(f"{name} {n / 2**30:.1f}" for name, n in needs.items())
    raise ConfigError(f"a session of batch {batch} at {width}x{height} with a {window}-frame window needs about "
                      f"{sum(needs.values()) / 2**30:.1f} GiB ({parts}) but {model.device} has {free / 2**30:.1f} GiB "
                      f"free; lower batch_size, width and height or local_attn_size, or free memory (reset other "
                      f"sessions)")


def _check_size(batch: int, height: int, width: int) -> None:
    if batch < 1:
        raise ConfigError(f"batch={batch} must be >= 1")
    for name, value in (("height", height), ("width", width)):
        if value < 16 or value % 16:
            raise ConfigError(f"{name}={value} must be a positive multiple of 16 (the VAE stride 8 x patch 2)")
