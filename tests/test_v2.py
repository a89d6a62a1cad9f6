"""LongLive 2.0 (LONGLIVE_V2.md): the Wan2.2-TI2V-5B network made causal, 8-frame blocks, 4-step UniPC, shots."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from conftest import GOLDEN_V2, REPO, golden_cases
from longlive_core import (ConfigError, ShotSession, ShotSettings, StreamSession, WanConfig, is_cut, load_model,
                           unipc_table)
from longlive_core.errors import CheckpointError
from longlive_core.tools.synthetic import TINY, TINY_V2, random_model
from longlive_core.tools.verify import TOLERANCE, block_errors, run_v2_case

CASES = golden_cases(GOLDEN_V2)


def test_unipc_table_is_upstream_sampler():
    """The sampler's coefficients (LONGLIVE_V2.md section 5, from upstream's UniPC in float64)."""
    four = unipc_table(4)
    assert four.timesteps == (999, 937, 833, 624)
    assert four.sigmas == pytest.approx((0.9997998476, 0.9372654557, 0.833055377, 0.6246873736, 0.0), abs=1e-10)
    expected = [(0, 0, 0, 0), (-0.062534392, 0, 0, 0), (-0.026650919, -0.140093552, 0, 0),
                (-0.027460976, 0.004176744, -0.351828243, 0)]
    for row, want in zip(four.steps, expected):
        assert row == pytest.approx(want, abs=1e-9)
    assert four.output == pytest.approx((-0.027460976, 0.004176744, -0.351828243, -0.624687374), abs=1e-9)
    two = unipc_table(2)
    assert two.timesteps == (999, 833) and two.steps[1] == pytest.approx((-0.166744471, 0), abs=1e-9)
    assert two.output == pytest.approx((-0.166744471, -0.833055377), abs=1e-9)
    assert unipc_table(3).timesteps == (999, 908, 713)


@pytest.mark.parametrize("steps", [2, 3, 4])
def test_the_sampler_follows_the_flow_exactly_where_the_network_predicts_one_x0(steps):
    """A network whose x0 prediction x - sigma v is the same x0 at every step: the flow's ODE then runs on the straight
    line sigma e + (1 - sigma) x0 through the block's noise at sigma_0 and ends at x0, which a UniPC sampler follows
    exactly. A session's block, with 2, 3 and 4 steps: each step's input on that line, the block at x0. (Every
    velocity is then the same, so this pins the sum of each row of the table, which any consistent sampler gets
    right; test_unipc_table_is_upstream_sampler and the recorded upstream run pin its coefficients one by one.)"""
    model = random_model(TINY_V2, dtype=torch.float32)
    table = unipc_table(steps)
    gen = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(1, 8, 48, 4, 6, generator=gen) for _ in range(2))
    inputs = []

    def network(x, time, plan, cache, text):
        if plan.cache_only:  # the clean pass
            return None
        inputs.append(x.clone())
        return (x - x0) / table.sigmas[len(inputs) - 1]

    session = ShotSession(model, batch=1, latent_hw=(4, 6), noise=lambda k: eps, settings=ShotSettings(steps=steps),
                          runner=network)
    block = session.make_block(torch.randn(1, 512, TINY_V2.text_dim, generator=gen))
    e = (eps - (1 - table.sigmas[0]) * x0) / table.sigmas[0]
    assert len(inputs) == steps
    for x, sigma in zip(inputs, table.sigmas):
        torch.testing.assert_close(x, sigma * e + (1 - sigma) * x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(block, x0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_recorded_upstream_run(case):
    """Every 8-frame block within 2e-5 of upstream's recorded run (two shots: the RoPE offset from the cut, the
    shot sink from block 5), and the frames each block attended to are the recorded ones."""
    from safetensors.torch import load_file

    ours, meta = run_v2_case(str(case))
    errors = block_errors(ours, load_file(case / "io.safetensors")["output"], meta["num_frame_per_block"])
    assert max(errors) <= TOLERANCE, errors
    assert [is_cut(p) for p in meta["block_prompts"][0]] == [k in meta["shot_start_blocks"] for k in range(len(errors))]


def attended(case) -> list[list[int]]:
    meta = json.loads((case / "meta.json").read_text())
    calls = meta["forward_calls"]
    return [sorted(calls[5 * k]["attended_frames"]) for k in range(len(calls) // 5)]


def held_after_each_block(cfg: WanConfig, cuts: set[int], blocks: int, settings: ShotSettings) -> list[list[int]]:
    model = random_model(cfg, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 8 * blocks, 48, 4, 6, generator=gen)
    embeds = torch.randn(1, 512, cfg.text_dim, generator=gen)
    session = ShotSession(model, batch=1, latent_hw=(4, 6), settings=settings, noise=lambda k: noise[:, 8 * k:8 * k + 8])
    held = []
    for k in range(blocks):
        session.make_block(embeds, cut=k in cuts)
        held.append(session.held_frames())
    return held


def test_the_cache_holds_what_upstream_attended():
    """Block by block, the frames in the cache are those the recorded run's calls attended to."""
    (case,) = [c for c in CASES if c.name == "v2_t2v_2shot"]
    assert held_after_each_block(TINY_V2, {2}, 7, ShotSettings()) == attended(case)


def test_shot_sinks_and_the_window_follow_the_rule():
    """LONGLIVE_V2.md section 7's example (window 32, sink 8, a cut at block 2), and the same without the
    multi-shot sink; a second cut replaces the shot sink."""
    r = lambda *spans: [f for a, b in spans for f in range(a, b + 1)]  # noqa: E731
    held = held_after_each_block(TINY_V2, {2}, 7, ShotSettings())
    assert held[3:] == [r((0, 31)), r((0, 7), (16, 39)), r((0, 7), (16, 23), (32, 47)), r((0, 7), (16, 23), (40, 55))]
    plain = held_after_each_block(TINY_V2, {2}, 6, ShotSettings(shot_sink=False))
    assert plain[5] == r((0, 7), (24, 47))
    twice = held_after_each_block(TINY_V2, {2, 5}, 8, ShotSettings())
    assert twice[6] == r((0, 7), (32, 55)) and twice[7] == r((0, 7), (40, 63))  # 16-23 no longer pinned


def attended_by_rule(block: int, cuts: set[int], settings: ShotSettings) -> set[int]:
    """LONGLIVE_V2.md section 7, as written: a block attends to its own frames, the global sink (the first `sink`
    frames), the shot sink (the first frames of the latest cut block before it, with the multi-shot sink on) and
    the most recent other earlier frames, as many as fit in `window` frames in all."""
    s = settings
    start = block * s.block
    own = set(range(start, start + s.block))
    earlier = range(start)
    sink = {f for f in earlier if f < s.sink}
    shot = {f for c in [max((c for c in cuts if 0 < c < block), default=None)] if c is not None and s.shot_sink
            for f in range(c * s.block, c * s.block + min(s.sink, s.block))}
    others = sorted((f for f in earlier if f not in sink | shot), reverse=True)
    return own | sink | shot | set(others[:s.window - len(own | sink | shot)])


class MaskedShotSession(ShotSession):
    """Keeps every frame's K/V (a window as long as the video: frame f in slot f, nothing evicted) and masks each
    pass's keys to the frames attended_by_rule gives its block."""

    def __init__(self, model, *, cuts: set[int], rule: ShotSettings, blocks: int, **kw):
        self.cuts, self.rule = cuts, rule
        super().__init__(model, settings=dataclasses.replace(rule, window=blocks * rule.block), **kw)

    def attend(self, q, k, v, scales=None):
        allowed = attended_by_rule(self.frame // self.rule.block, self.cuts, self.rule)
        frames = torch.arange(k.shape[1]) // self.frame_tokens
        mask = torch.tensor([int(f) in allowed for f in frames])
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                               attn_mask=mask[None, None, None, :])
        return out.transpose(1, 2)


def shot_video(session: ShotSession, cuts: set[int], blocks: int, prompts: torch.Tensor) -> torch.Tensor:
    return torch.cat([session.make_block(prompts[k % len(prompts)][None], cut=k in cuts) for k in range(blocks)], 1)


@pytest.mark.parametrize("settings,cuts", [(ShotSettings(), {2}), (ShotSettings(), {2, 5}),
                                           (ShotSettings(shot_sink=False), {2}),
                                           (ShotSettings(window=24, sink=8), {3}),
                                           (ShotSettings(window=24, sink=0), {2})],
                         ids=["w32 s8 cut 2", "two cuts", "no shot sink", "w24 cut 3", "no sink"])
def test_the_cache_equals_masked_attention_over_all_frames(settings, cuts):
    """The ring of cache slots (frames evicted, sinks protected) makes the video that attention over every frame's
    K/V, masked to the frames section 7 names, makes: scene cuts (a prompt each, the RoPE offset) and shot sinks."""
    blocks = 8
    model = random_model(TINY_V2, dtype=torch.float32, std=0.3)  # weights that make attention pick (2e-5 at 0.02)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 8 * blocks, 48, 4, 6, generator=gen)
    prompts = torch.randn(3, 512, TINY_V2.text_dim, generator=gen)
    kw = dict(batch=1, latent_hw=(4, 6), noise=lambda k: noise[:, 8 * k:8 * k + 8])
    ours = shot_video(ShotSession(model, settings=settings, **kw), cuts, blocks, prompts)
    reference = MaskedShotSession(model, cuts=cuts, rule=settings, blocks=blocks, **kw)
    model.attend = reference.attend
    try:
        want = shot_video(reference, cuts, blocks, prompts)
    finally:
        model.set_attention("sdpa")
    assert ((ours - want).norm() / want.norm()).item() < 1e-5  # 2e-7 here
    wider = dataclasses.replace(settings, window=settings.window + 8)  # the rule matters: more frames, another video
    other = shot_video(ShotSession(model, settings=wider, **kw), cuts, blocks, prompts)
    assert ((other - ours).norm() / ours.norm()).item() > 1e-2  # 5e-2 to 1.2e-1 here


def test_the_merged_checkpoint_is_the_base_with_its_lora():
    (case,) = [c for c in CASES if c.name == "v2_t2v_2shot"]
    meta = json.loads((case / "meta.json").read_text())
    heads = meta["model"]["num_heads"]
    merged = load_model(str(case / "model_merged.pt"), num_heads=heads, dtype=torch.float32)
    base = load_model(str(case / "generator_base.pt"), lora_path=str(case / "lora.pt"), lora_alpha=meta["lora_alpha"],
                      num_heads=heads, dtype=torch.float32)
    for (name, a), b in zip(merged.state_dict().items(), base.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


def test_each_family_runs_in_its_own_session(tiny_model):
    v2 = random_model(TINY_V2, dtype=torch.float32)
    with pytest.raises(ConfigError, match="this model has 48 latent channels: it is LongLive 2.0"):
        StreamSession(v2, height=32, width=48)
    with pytest.raises(ConfigError, match="this model has 16 latent channels: a LongLive 2.0 video needs"):
        ShotSession(tiny_model, batch=1, latent_hw=(4, 6), noise=lambda k: None)
    with pytest.raises(ConfigError, match="window 30 and sink 8 must be multiples of the block"):
        ShotSession(v2, batch=1, latent_hw=(4, 6), noise=lambda k: None, settings=ShotSettings(window=30))
    with pytest.raises(ConfigError, match=r"window 16 cannot hold the global sink \(8\), the shot sink \(8\) and a "
                                          r"block \(8\); raise the window to at least 24 or turn the shot sink off"):
        ShotSettings(window=16).check()
    with pytest.raises(ConfigError, match="latent size 4x5 must be even"):
        ShotSession(v2, batch=1, latent_hw=(4, 5), noise=lambda k: None)


def test_a_v1_lora_on_a_v2_model_is_refused(tmp_path):
    (case,) = [c for c in CASES if c.name == "v2_t2v_2shot"]
    v1_lora = {"generator_lora": {"base_model.model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 128),
                                  "base_model.model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(128, 4)}}
    torch.save(v1_lora, tmp_path / "v1_lora.pt")
    with pytest.raises(CheckpointError, match=r"LoRA for blocks.0.self_attn.q is 128x128 but the weight is \[64, 64\]; "
                                              r"the LoRA belongs to another model than the LongLive 2.0 \(Wan2.2 TI2V "
                                              r"5B\) one loaded: pick the LoRA made for it"):
        load_model(str(case / "generator_base.pt"), lora_path=str(tmp_path / "v1_lora.pt"), num_heads=2)


def test_verify_runs_the_v2_cases():
    done = subprocess.run([sys.executable, "-m", "longlive_core.verify", str(GOLDEN_V2)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(json.loads(line)["passed"] for line in done.stdout.splitlines())


def test_a_timestep_a_frame_equals_one_a_sample_when_they_agree():
    """The per-frame time embedding (image-to-video's first block) is the per-sample one where every frame of a
    sample has the same timestep."""
    model = random_model(TINY_V2, dtype=torch.float32)
    t = torch.tensor([999.0, 624.0])
    one, each = model.time_embed(t, layers=True), model.time_embed(t[:, None].expand(2, 8), layers=True)
    torch.testing.assert_close(each.e, one.e[:, None].expand(2, 8, -1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(each.mods, one.mods[:, :, None].expand(-1, -1, 8, -1, -1), rtol=1e-6, atol=1e-6)


def image_to_video(image, blocks=3, seed=0):
    model = random_model(TINY_V2, dtype=torch.float32, std=0.3)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 8 * blocks, 48, 4, 6, generator=gen)
    embeds = torch.randn(1, 512, TINY_V2.text_dim, generator=gen)
    session = ShotSession(model, batch=1, latent_hw=(4, 6), image=image, noise=lambda k: noise[:, 8 * k:8 * k + 8])
    return torch.cat([session.make_block(embeds) for _ in range(blocks)], dim=1), session


def test_image_to_video_holds_the_first_frame_at_the_image():
    image = torch.randn(1, 1, 48, 4, 6, generator=torch.Generator().manual_seed(5))
    ours, session = image_to_video(image)
    plain, _ = image_to_video(None)
    assert torch.equal(ours[:, :1], image) and torch.isfinite(ours).all()
    assert (ours[:, 1:8] - plain[:, 1:8]).abs().max() > 1e-3  # the image conditions the first block
    assert (ours[:, 8:] - plain[:, 8:]).abs().max() > 1e-3 and 0 in session.held_frames()  # and what follows it
    other, _ = image_to_video(image * 2)
    assert (other[:, 1:8] - ours[:, 1:8]).abs().max() > 1e-3  # through frame 0's keys, at timestep 0
    with pytest.raises(ConfigError, match=r"image: the first frame's latent must be \[1 or 1, 1, 48, 4, 6\]"):
        image_to_video(torch.zeros(1, 1, 16, 4, 6))


def shots_with_an_image(model, blocks=6, runner=None):
    """Image-to-video with a cut at block 2, past the window (32 frames: 4 blocks); returns (latents, session)."""
    gen = torch.Generator().manual_seed(9)
    image = torch.randn(1, 1, 48, 4, 6, generator=gen)
    noise = torch.randn(1, 8 * blocks, 48, 4, 6, generator=gen)
    texts = [torch.randn(1, 512, TINY_V2.text_dim, generator=gen) for _ in range(2)]
    session = ShotSession(model, batch=1, latent_hw=(4, 6), image=image, noise=lambda k: noise[:, 8 * k:8 * k + 8],
                          runner=runner)
    return torch.cat([session.make_block(texts[k >= 2], cut=k == 2) for k in range(blocks)], dim=1), session


def test_the_fast_model_makes_the_eager_v2_video():
    """make_fast on a LongLive 2.0 model: its fused blocks (Triton's interpreter here) make the eager video, the
    image's first block (a modulation row a frame) and a cut included."""
    from longlive_core.fast.setup import make_fast
    from longlive_core.model.fused import FastWan

    model = random_model(TINY_V2, dtype=torch.float32, std=0.3)
    eager, _ = shots_with_an_image(model)
    fast = make_fast(model, attention="sdpa", compile=False)
    assert isinstance(fast, FastWan) and fast.fused
    ours, _ = shots_with_an_image(fast)
    assert ((ours - eager).norm() / eager.norm()).item() < 1e-5


def test_the_warm_up_passes_are_the_passes_that_come_again():
    """What a runner's warm-up captures (warm_up_passes) are the passes every block makes once the window is full (from
    block 3 on: 4 steps and the clean pass) and the image's first block's steps: the same buffers and shapes
    (fast.runner.pass_key), so their graphs replay."""
    from longlive_core.fast.runner import pass_key

    model = random_model(TINY_V2, dtype=torch.float32, std=0.3)
    keys = []

    def spy(*args):
        keys.append(pass_key(*args))
        return model(*args)

    _, session = shots_with_an_image(model, runner=spy)
    blocks = [keys[5 * k:5 * k + 5] for k in range(6)]  # 4 steps and the clean pass a block
    assert len(keys) == 30 and blocks[3] == blocks[4] == blocks[5] != blocks[2]
    warm = [pass_key(*p, session.cache, session.text) for p in session.warm_up_passes()]
    assert warm == blocks[5] + blocks[0][:4] and len(set(warm)) == 9


def test_a_batch_gives_each_sample_its_own_video():
    """Batch 2 with a cut: each sample equals its batch-1 run (same noise, same prompts)."""
    model = random_model(TINY_V2, dtype=torch.float32, std=0.3)
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 24, 48, 4, 6, generator=gen)
    embeds = [torch.randn(1, 512, TINY_V2.text_dim, generator=gen) for _ in range(3)]

    def run(samples: torch.Tensor) -> torch.Tensor:
        session = ShotSession(model, batch=samples.shape[0], latent_hw=(4, 6), noise=lambda k: samples[:, 8 * k:8 * k + 8])
        return torch.cat([session.make_block(e, cut=k == 2) for k, e in enumerate(embeds)], dim=1)

    both = run(noise)
    for b in range(2):  # batched GEMMs round differently: compared as the recorded runs are, a block at a time
        assert max(block_errors(both[b:b + 1], run(noise[b:b + 1]), 8)) < 1e-5
    assert (both[0] - both[1]).abs().max() > 1e-2


SENSITIVITY = {"no_multi_shot_sink": {"shot_sink": False}, "no_rope_offset": {"shot_offset": 0},
               "rope_offset_4": {"shot_offset": 4}, "window_24": {"window": 24}, "window_40": {"window": 40},
               "no_sink": {"sink": 0}, "shot_clean_recache_flipped": {"shot_clean_recache": True}}


@pytest.mark.parametrize("mistake", sorted(SENSITIVITY))
def test_each_setting_moves_the_video_as_upstreams_does(mistake):
    """The recorded case run with one setting changed (the recording's `sensitivity`: upstream's own run so
    changed, against its output) moves every block as upstream's moved: the settings mean what upstream's mean,
    shot_clean_recache included (on in no config, so no run records it)."""
    from safetensors.torch import load_file

    (case,) = [c for c in CASES if c.name == "v2_t2v_2shot"]
    want = json.loads((case / "meta.json").read_text())["sensitivity"][mistake]["per_block"]
    ours, _ = run_v2_case(str(case), **SENSITIVITY[mistake])
    got = block_errors(ours, load_file(case / "io.safetensors")["output"], 8)
    assert got == pytest.approx(want, rel=2e-3, abs=2e-6)


def test_a_merged_export_loads_back_as_the_same_v2_model(tmp_path):
    from longlive_core import export_safetensors

    (case,) = [c for c in CASES if c.name == "v2_t2v_2shot"]
    meta = json.loads((case / "meta.json").read_text())
    model = load_model(str(case / "generator_base.pt"), lora_path=str(case / "lora.pt"), lora_alpha=meta["lora_alpha"],
                       num_heads=meta["model"]["num_heads"], dtype=torch.float32)
    export_safetensors(model, str(tmp_path / "v2.safetensors"))
    again = load_model(str(tmp_path / "v2.safetensors"), dtype=torch.float32)  # the head count is in the file
    assert again.cfg == model.cfg and again.cfg.in_dim == 48
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def policy_run(policy: str, prompts: list[int], cuts: set[int] = frozenset(), noise_from: int = 0):
    """Blocks under prompts[k] (indices into three fixed prompts) with a switch policy; returns (latents, session)."""
    model = random_model(TINY_V2, dtype=torch.float32, std=0.3)
    gen = torch.Generator().manual_seed(11)
    noise = torch.randn(1, 8 * 8, 48, 4, 6, generator=gen)
    texts = [torch.randn(1, 512, TINY_V2.text_dim, generator=gen) for _ in range(3)]
    session = ShotSession(model, batch=1, latent_hw=(4, 6), settings=ShotSettings(switch_policy=policy),
                          noise=lambda k: noise[:, 8 * (k + noise_from):8 * (k + noise_from) + 8])
    blocks = [session.make_block(texts[p], cut=k in cuts) for k, p in enumerate(prompts)]
    return torch.cat(blocks, dim=1), session


def test_reset_starts_a_new_video_at_the_prompt_change():
    ours, session = policy_run("reset", [0, 0, 0, 1, 1])
    fresh, _ = policy_run("keep", [1, 1], noise_from=3)
    torch.testing.assert_close(ours[:, 24:], fresh, rtol=0, atol=0)  # as if the video began there
    assert session.held_frames() == list(range(24, 40))
    keep, _ = policy_run("keep", [0, 0, 0, 1, 1])
    torch.testing.assert_close(ours[:, :24], keep[:, :24], rtol=0, atol=0)


def test_recache_rebuilds_the_current_shot_under_the_new_prompt():
    """A change inside a shot: the shot's cached K/V are run again under the new prompt; frames of earlier shots
    keep theirs; at a cut (a new shot) nothing is run again."""
    keep, kept = policy_run("keep", [0, 1, 2], cuts={1})
    ours, session = policy_run("recache", [0, 1, 2], cuts={1})
    torch.testing.assert_close(ours[:, :16], keep[:, :16], rtol=0, atol=0)  # the cut at block 1 ran nothing again
    assert (ours[:, 16:] - keep[:, 16:]).abs().max() > 1e-3  # block 2 attends to block 1 recached under prompt 2
    earlier, shot = slice(0, 8 * session.frame_tokens), slice(8 * session.frame_tokens, 16 * session.frame_tokens)
    assert torch.equal(session.cache.k[:, :, earlier], kept.cache.k[:, :, earlier])
    assert not torch.equal(session.cache.k[:, :, shot], kept.cache.k[:, :, shot])
    same, _ = policy_run("recache", [0, 0, 0])
    unchanged, _ = policy_run("keep", [0, 0, 0])
    torch.testing.assert_close(same, unchanged, rtol=0, atol=0)  # no change, no recache
    with pytest.raises(ConfigError, match="switch_policy 'sometimes' is unknown; choose one of keep, recache, reset"):
        ShotSettings(switch_policy="sometimes").check()


# --- a LongLive 2.0 video as the nodes run it (runtime/video.py) --------------------------------------------------


def v2_video(model, seed=0, image=None, policy="keep", session_id="v2"):
    from longlive_core import Video, VideoSettings

    settings = VideoSettings(("tiny v2",), 1, 96, 64, 32, 8, policy, seed, session_id)
    return Video.open(model, settings, fast=False, image=image)


def v2_embed(text: str) -> torch.Tensor:
    from longlive_core import hashed_embeds

    return hashed_embeds(text, TINY_V2.text_dim)


def test_a_video_runs_shots_from_a_schedule_as_the_session_makes_them_block_by_block():
    """A schedule with a scene cut and image-to-video, over two runs (the second continues the video): the blocks a
    ShotSession makes from the same seed, prompts (the cut's text with upstream's prefix) and image."""
    from longlive_core import Prompt, RunHooks, parse_schedule_text
    from longlive_core.runtime.family import V2

    model = random_model(TINY_V2, dtype=torch.float32, std=0.3)
    image = torch.randn(1, 1, 48, 4, 6, generator=torch.Generator().manual_seed(5))
    segments = parse_schedule_text("0: a red fox\nframe 16 cut: a city at night", V2)
    assert segments[1].cut and segments[1].text == "The scene transitions. a city at night"
    video = v2_video(model, seed=3, image=image)
    video.schedule([Prompt(s.start, s.text, cut=s.cut) for s in segments], 24, v2_embed)
    first, _ = video.run(24, live=False, hooks=RunHooks(embed_text=v2_embed))
    video.schedule([Prompt(0, segments[1].text)], 8, v2_embed)  # the prompt in force: no switch
    second, _ = video.run(8, live=False, hooks=RunHooks(embed_text=v2_embed))
    assert video.describe()["frames"] == 32 and video.describe()["blocks"] == 4

    session = ShotSession(model, batch=1, latent_hw=(4, 6), image=image, seed=3)
    texts = ["a red fox", "a red fox", segments[1].text, segments[1].text]
    want = torch.cat([session.make_block(v2_embed(t), cut=k == 2) for k, t in enumerate(texts)], dim=1)
    torch.testing.assert_close(torch.cat([first, second], dim=1), want, rtol=0, atol=0)
    assert torch.equal(first[:, :1], image)


def test_a_v2_video_runs_on_past_position_1024_and_there_makes_the_frames_of_lower_positions():
    """LongLive 2.0 has no end (upstream computes its time angles for any position once a shot has an offset): a
    named video takes a run past latent frame 1024 in one go. RoPE makes attention depend on position differences
    only, so a session whose positions all start 1000 later (across 1024) makes the same blocks to rounding."""
    from longlive_core import Prompt, RunHooks

    model = random_model(TINY_V2, dtype=torch.float32, std=0.3)
    video = v2_video(model)
    frames = 1040
    assert video.fit(frames, live=False) == frames
    video.schedule([Prompt(0, "a red fox"), Prompt(1016, "a fox in the snow")], frames, v2_embed)
    latents, _ = video.run(frames, live=False, hooks=RunHooks(embed_text=v2_embed))
    assert latents.shape[1] == frames and video.session.pos == frames and torch.isfinite(latents).all()

    def blocks(shot: int) -> torch.Tensor:
        session = ShotSession(model, batch=1, latent_hw=(4, 6), seed=3)
        session.shot = shot  # as if after that many cuts: every position moved on by shot * 8
        return torch.cat([session.make_block(v2_embed("a red fox")) for _ in range(6)], dim=1)

    low, high = blocks(0), blocks(125)  # positions 0-47 and 1000-1047 (the window evicts from block 4 on)
    assert ((high - low).norm() / low.norm()).item() < 1e-5  # 3e-7 here


def test_a_stop_between_passes_of_a_v2_block_leaves_it_to_be_made_again_exactly():
    from longlive_core import Prompt, RunHooks

    model = random_model(TINY_V2, dtype=torch.float32, std=0.3)
    prompts = [Prompt(0, "a red fox"), Prompt(16, "a fox in the snow")]
    passes = []

    def stop_in_the_third_block():
        passes.append(1)
        if len(passes) == 4 + 4 + 2:
            raise KeyboardInterrupt

    video = v2_video(model, policy="recache")
    video.schedule(prompts, 32, v2_embed)
    with pytest.raises(KeyboardInterrupt):
        video.run(32, live=False, hooks=RunHooks(embed_text=v2_embed, check=stop_in_the_third_block))
    assert video.session.frame == 16
    video.schedule([Prompt(0, "a fox in the snow")], 16, v2_embed)
    rest, _ = video.run(16, live=False, hooks=RunHooks(embed_text=v2_embed))
    straight = v2_video(model, policy="recache")
    straight.schedule(prompts, 32, v2_embed)
    whole, _ = straight.run(32, live=False, hooks=RunHooks(embed_text=v2_embed))
    torch.testing.assert_close(rest, whole, rtol=0, atol=0)


def test_cuts_and_images_are_refused_where_they_cannot_apply():
    from longlive_core import Prompt, PromptError, RunHooks, Video, VideoSettings, parse_schedule_text

    v1 = Video.open(random_model(TINY), VideoSettings(("tiny",), 1, 96, 64, 9, 3, "recache", 0), fast=False)
    with pytest.raises(PromptError, match="scene cuts are LongLive 2.0's"):
        v1.schedule([Prompt(0, "a"), Prompt(3, "The scene transitions. b", cut=True)], 6, v2_embed)
    with pytest.raises(ConfigError, match="image-to-video is LongLive 2.0's"):
        Video.open(random_model(TINY), VideoSettings(("tiny",), 1, 96, 64, 9, 3, "recache", 0), fast=False,
                   image=torch.zeros(1, 1, 48, 4, 6))
    with pytest.raises(PromptError, match="schedule line 1 is a scene cut"):
        parse_schedule_text("0 cut: a beach")
    v2 = v2_video(random_model(TINY_V2, dtype=torch.float32))
    with pytest.raises(PromptError, match="multiple of 8"):
        v2.schedule([Prompt(0, "a"), Prompt(3, "b")], 16, v2_embed)
    with pytest.raises(PromptError, match="blend_blocks=3: LongLive 2.0 switches prompts at a block"):
        v2.session.set_prompt(v2_embed("a"), blend_blocks=3)
    with pytest.raises(ConfigError, match="window 16 cannot hold the global sink"):
        Video.open(random_model(TINY_V2, dtype=torch.float32),
                   VideoSettings(("tiny v2",), 1, 96, 64, 16, 8, "keep", 0), fast=False)
    v2.schedule([Prompt(0, "a")], 8, v2_embed)
    assert v2.run(8, live=False, hooks=RunHooks(embed_text=v2_embed))[0].shape == (1, 8, 48, 4, 6)


def test_a_prompt_posted_to_a_live_v2_video_switches_at_the_block_it_cuts_short():
    import time

    from longlive_core import PostedPrompt, Prompt, RunHooks

    model = random_model(TINY_V2, dtype=torch.float32, std=0.3)
    video = v2_video(model, policy="recache")
    video.schedule([Prompt(0, "a red fox")], 24, v2_embed)
    passes = []

    def check():
        passes.append(video.session.frame)
        if len(passes) == 4 + 1:  # as the second block begins: it is cut short before its first pass
            video.post(PostedPrompt("a fox in the snow", time.time()))

    latents, _ = video.run(24, live=True, hooks=RunHooks(embed_text=v2_embed, check=check))
    assert passes == [0] * 4 + [8] * (1 + 4) + [16] * 4 and [s["frame"] for s in video.switches] == [8]
    scheduled = v2_video(model, policy="recache")
    scheduled.schedule([Prompt(0, "a red fox"), Prompt(8, "a fox in the snow")], 24, v2_embed)
    want, _ = scheduled.run(24, live=False, hooks=RunHooks(embed_text=v2_embed))
    torch.testing.assert_close(latents, want, rtol=0, atol=0)


def test_a_cut_posted_to_a_live_v2_video_starts_a_shot_as_a_scheduled_cut_does():
    """'cut: ...' posted to a live run starts a new shot at the block it cuts short, as a schedule's cut there does;
    posts the family cannot take are refused when posted (a blend in LongLive 2.0, a cut in LongLive 1.x), and the
    run goes on."""
    import time

    from longlive_core import (PostedPrompt, Prompt, PromptError, RunHooks, Video, VideoSettings,
                               parse_posted_text)

    assert parse_posted_text(" Cut : a city at night ") == ("The scene transitions. a city at night", True)
    assert parse_posted_text("a cut: of the film") == ("a cut: of the film", False)
    with pytest.raises(PromptError, match="'cut:' starts a new shot with the prompt after it"):
        parse_posted_text("cut:  ")
    model = random_model(TINY_V2, dtype=torch.float32, std=0.3)
    video = v2_video(model)
    video.schedule([Prompt(0, "a red fox")], 24, v2_embed)
    text, cut = parse_posted_text("cut: a city at night")
    posted = []

    def check():  # before each pass: as the second block begins, its first pass is cut short
        if video.session.frame == 8 and not posted:
            with pytest.raises(PromptError, match="blend_blocks=2: LongLive 2.0 switches prompts at a block"):
                video.post(PostedPrompt("a fox in the snow", time.time(), blend_blocks=2))
            posted.append(video.post(PostedPrompt(text, time.time(), cut=cut)))

    latents, _ = video.run(24, live=True, hooks=RunHooks(embed_text=v2_embed, check=check))
    assert [s["frame"] for s in video.switches] == [8] and video.session.shot == 1
    scheduled = v2_video(model)
    scheduled.schedule([Prompt(0, "a red fox"), Prompt(8, text, cut=True)], 24, v2_embed)
    want, _ = scheduled.run(24, live=False, hooks=RunHooks(embed_text=v2_embed))
    torch.testing.assert_close(latents, want, rtol=0, atol=0)
    v1 = Video.open(random_model(TINY), VideoSettings(("tiny",), 1, 96, 64, 9, 3, "recache", 0), fast=False)
    with pytest.raises(PromptError, match="scene cuts are LongLive 2.0's; post the text without 'cut:'"):
        v1.post(PostedPrompt(text, time.time(), cut=True))
    with pytest.raises(PromptError, match="the video has no block yet"):
        v2_video(model).post(PostedPrompt(text, time.time(), cut=True))


def test_a_cut_typed_ahead_in_a_live_v2_video_is_encoded_before_its_post():
    """A cut typed as the panel sends it (the route parses it as the post will: the prefixed text) is encoded while
    the run waits for its viewers, and its post switches with those embeddings."""
    import time

    from longlive_core import PostedPrompt, Prompt, parse_posted_text
    from test_video import run_with_viewers

    model = random_model(TINY_V2, dtype=torch.float32)
    video = v2_video(model)
    video.schedule([Prompt(0, "a red fox")], 32, v2_embed)
    text, cut = parse_posted_text("cut: a city at night")
    events = {0: lambda v: v.type_ahead(text), 1: lambda v: v.post(PostedPrompt(text, time.time(), cut=cut))}
    _, encoded = run_with_viewers(video, 32, events, v2_embed, v2_embed)
    assert encoded[0] == (text, 8, False)  # in the wait after block 0, before the post
    assert [(s["frame"], s["cut"], s["encoded_ahead"]) for s in video.switches] == [(16, True, True)]
    assert video.session.shot == 1


def test_a_saved_v2_video_resumes_as_if_it_had_been_kept(tmp_path):
    """Saved after a cut and an image-to-video start, restored into a new Video: the next blocks are those of the
    video kept in memory (the shot, its sink and the scheduled prompts come back)."""
    from longlive_core import Prompt, RunHooks, restore_video, save_video

    model = random_model(TINY_V2, dtype=torch.float32, std=0.3)
    image = torch.randn(1, 1, 48, 4, 6, generator=torch.Generator().manual_seed(5))
    prompts = [Prompt(0, "a red fox"), Prompt(16, "The scene transitions. a city", cut=True), Prompt(32, "rain")]

    def first_part(video):
        video.schedule(prompts, 40, v2_embed)
        video.run(24, live=False, hooks=RunHooks(embed_text=v2_embed))  # stops before the prompt at frame 32
        return video

    kept = first_part(v2_video(model, seed=4, image=image, policy="recache"))
    path = tmp_path / "v2.safetensors"
    save_video(kept, str(path))
    resumed = v2_video(model, seed=4, policy="recache")
    restore_video(resumed, str(path))
    assert resumed.session.frame == 24 and resumed.session.shot == 1 and sorted(resumed.session.pending) == [32]
    want, _ = kept.run(16, live=False, hooks=RunHooks(embed_text=v2_embed))
    got, _ = resumed.run(16, live=False, hooks=RunHooks(embed_text=v2_embed))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_5b_shapes_are_those_the_loader_reads_from_a_5b_state_dict():
    """The harness writes full-size random LongLive-2.0-5B files with LONGLIVE_2_5B (scripts/full_models.py --v2)."""
    from longlive_core.model.config import LONGLIVE_2_5B
    from longlive_core.model.wan import CausalWan

    with torch.device("meta"):
        state = CausalWan(LONGLIVE_2_5B).state_dict()
    assert WanConfig.from_state_dict(state) == LONGLIVE_2_5B
    assert round(sum(t.numel() for t in state.values()) / 1e9, 2) == 5.0  # Wan2.2-TI2V-5B
