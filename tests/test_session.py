"""Session API: continuing, schedules, switch policies, batch, and every bad input."""

from __future__ import annotations

import logging

import pytest
import torch

from longlive_core import (BackendUnavailableError, ConfigError, PromptError, RecordedNoise, StreamSession,
                           WanConfig)
from longlive_core.model.attention import resolve
from longlive_core.tools.synthetic import TINY, random_model


def session(model, **kw):
    kw.setdefault("height", 64)
    kw.setdefault("width", 96)
    return StreamSession(model, **kw)


def fixed_noise(batch=1, blocks=12, seed=11):
    gen = torch.Generator().manual_seed(seed)
    return RecordedNoise(torch.randn(batch, 3 * blocks, 16, 8, 12, generator=gen),
                         torch.randn(3 * blocks, batch, 3, 16, 8, 12, generator=gen))


def run(s, frames):
    return torch.cat(list(s.generate(frames)), 1)


def test_continuing_equals_one_long_run(tiny_model, prompt):
    a = session(tiny_model, seed=1)
    a.set_prompt(prompt)
    first, second = run(a, 6), run(a, 9)
    b = session(tiny_model, seed=1)
    b.set_prompt(prompt)
    assert torch.equal(torch.cat([first, second], 1), run(b, 15))
    assert a.frame == 15


def test_set_prompt_between_runs_equals_a_schedule(tiny_model, prompt):
    other = prompt.flip(1)
    a = session(tiny_model, seed=2)
    a.set_prompt(prompt)
    part1 = run(a, 15)
    a.set_prompt(other)
    part2 = run(a, 9)
    b = session(tiny_model, seed=2)
    b.set_schedule([(0, prompt), (15, other)])
    whole = run(b, 24)
    # the switching block skips the owed clean pass of the block before it; the recache rewrites those frames
    torch.testing.assert_close(torch.cat([part1, part2], 1), whole, rtol=1e-5, atol=1e-5)


def test_reset_policy_restarts_the_video_at_the_switch(tiny_model, prompt):
    other = prompt.flip(1)
    a = session(tiny_model, switch_policy="reset", noise=fixed_noise())
    a.set_schedule([(0, prompt), (9, other)])
    out = run(a, 12)
    # a fresh session on `other` whose first block gets the noise of block 3
    noise = fixed_noise()
    shifted = RecordedNoise(noise.noise[:, 9:], noise.renoise[9:])
    b = session(tiny_model, noise=shifted)
    b.set_prompt(other)
    torch.testing.assert_close(out[:, 9:12], run(b, 3), rtol=1e-5, atol=1e-6)


def test_policies_give_different_videos(tiny_model, prompt):
    outs = {}
    for policy in ("recache", "keep", "reset"):
        s = session(tiny_model, switch_policy=policy, noise=fixed_noise())
        s.set_schedule([(0, prompt), (15, prompt.flip(1))])
        outs[policy] = run(s, 21)
    for a, b in (("recache", "keep"), ("recache", "reset"), ("keep", "reset")):
        assert not torch.allclose(outs[a][:, 15:], outs[b][:, 15:])
        assert torch.equal(outs[a][:, :12], outs[b][:, :12])


def test_batch_samples_are_independent(tiny_model, prompt):
    noise = fixed_noise(batch=2)
    prompts = torch.cat([prompt, prompt.flip(1)])
    pair = session(tiny_model, batch=2, noise=noise)
    pair.set_prompt(prompts)
    both = run(pair, 9)
    one = session(tiny_model, noise=RecordedNoise(noise.noise[1:], noise.renoise[:, 1:]))
    one.set_prompt(prompts[1:])
    torch.testing.assert_close(both[1:], run(one, 9), rtol=1e-4, atol=1e-4)


def test_reset_starts_over(tiny_model, prompt):
    s = session(tiny_model, seed=4)
    s.set_prompt(prompt)
    first = run(s, 6)
    s.reset()
    with pytest.raises(PromptError, match="no prompt is set"):
        run(s, 3)
    s.set_prompt(prompt)
    assert torch.equal(run(s, 6), first)


def test_long_prompts_are_truncated_with_a_warning(tiny_model, caplog):
    long = torch.randn(1, 600, 32)
    a = session(tiny_model, seed=0)
    with caplog.at_level(logging.WARNING):
        a.set_prompt(long)
    assert "truncating to 512" in caplog.text
    b = session(tiny_model, seed=0)
    b.set_prompt(long[:, :512])
    assert torch.equal(run(a, 3), run(b, 3))


# --- bad input ----------------------------------------------------------------------------------


def test_bad_prompts(tiny_model, prompt):
    s = session(tiny_model, batch=2)
    with pytest.raises(PromptError, match=r"embeds must be \[batch, tokens, 32\], got \[1, 12, 4096\]"):
        s.set_prompt(torch.zeros(1, 12, 4096))
    with pytest.raises(PromptError, match="batch 3 but the session has batch 2"):
        s.set_prompt(torch.zeros(3, 12, 32))
    with pytest.raises(PromptError, match="block boundary.*got frame 4"):
        s.set_prompt(prompt, at_frame=4)
    with pytest.raises(PromptError, match="must increase"):
        s.set_schedule([(0, prompt), (6, prompt), (6, prompt)])
    s.set_prompt(prompt)
    run(s, 6)
    with pytest.raises(PromptError, match="frames up to 6 are generated"):
        s.set_prompt(prompt, at_frame=3)


@pytest.mark.parametrize("kw,msg", [
    ({"height": 72}, "height=72 must be a positive multiple of 16"),
    ({"width": 0}, "width=0"),
    ({"batch": 0}, "batch=0"),
    ({"local_attn_size": 4}, "local_attn_size=4 must exceed sink_size=3"),
    ({"switch_policy": "blend"}, "switch_policy 'blend' is unknown"),
])
def test_bad_session_settings(tiny_model, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        session(tiny_model, **kw)


def test_frames_must_come_in_blocks(tiny_model, prompt):
    s = session(tiny_model)
    s.set_prompt(prompt)
    with pytest.raises(ConfigError, match="num_frames=4 must be a non-negative multiple of 3"):
        run(s, 4)


def test_frames_beyond_the_rope_table_are_refused():
    model = random_model(WanConfig(dim=8, ffn_dim=8, num_heads=1, num_layers=1, text_dim=8), dtype=torch.float32)
    s = StreamSession(model, height=16, width=16, local_attn_size=6, sink_size=0)
    s.set_prompt(torch.zeros(1, 4, 8))
    run(s, 1023)
    with pytest.raises(ConfigError, match="frame position 1026 exceeds the 1024-position RoPE table"):
        run(s, 3)
    s.set_prompt(torch.ones(1, 4, 8))  # still usable after the error: it can switch on
    with pytest.raises(ConfigError):
        run(s, 3)
    s.reset()
    s.set_prompt(torch.zeros(1, 4, 8))
    assert run(s, 3).shape == (1, 3, 16, 2, 2)


def test_attention_backends():
    assert resolve("auto", "cpu")[0] == "sdpa"
    with pytest.raises(BackendUnavailableError, match="'flash-attn 3' needs a CUDA GPU"):
        resolve("flash-attn 3", "cpu")
    with pytest.raises(BackendUnavailableError, match="'xformers' is unknown"):
        resolve("xformers", "cpu")


def test_a_switch_that_no_longer_comes_gets_its_clean_pass_back(tiny_model, prompt):
    """A switch with a recache skips the clean pass owed by the block before it; dropping the switch must not
    leave that block's noisy K/V in the cache."""
    a = session(tiny_model, seed=6)
    a.set_schedule([(0, prompt), (6, prompt.flip(1))])
    first = run(a, 6)
    a.clear_pending()
    rest = run(a, 9)
    b = session(tiny_model, seed=6)
    b.set_prompt(prompt)
    torch.testing.assert_close(torch.cat([first, rest], 1), run(b, 15), rtol=1e-5, atol=1e-5)


def test_a_refused_block_changes_nothing(tiny_model, prompt):
    s = session(tiny_model)
    s.set_prompt(prompt)
    run(s, 3)
    s.pos = 1023  # as if the video had reached the end of the RoPE table
    s.set_prompt(prompt.flip(1))
    with pytest.raises(ConfigError, match="RoPE table"):
        run(s, 3)
    assert 3 in s.pending and s.frame == 3  # the switch is still waiting, nothing ran


def test_noise_depends_on_seed_and_block_only(tiny_model, prompt):
    a = session(tiny_model, seed=9)
    a.set_prompt(prompt)
    first = run(a, 9)
    b = session(tiny_model, seed=9)
    b.set_prompt(prompt)
    run(b, 3)
    b.noise.block_noise(0, (4, 1, 3, 16, 8, 12), "cpu", torch.float32)  # a stray draw changes nothing
    assert torch.equal(torch.cat([first[:, :3], run(b, 6)], 1), first)
    c = session(tiny_model, seed=10)
    c.set_prompt(prompt)
    assert not torch.allclose(run(c, 3), first[:, :3])


@pytest.mark.parametrize("how", ["linear", "slerp"])
def test_blended_switch_moves_to_the_new_prompt_over_n_blocks(tiny_model, prompt, how):
    from longlive_core.runtime.session import prepare_embeds

    new = prompt.flip(1) * 2
    s = session(tiny_model, seed=1)
    s.set_prompt(prompt)
    run(s, 6)
    s.set_prompt(new, blend_blocks=3, blend=how)
    old_full, new_full = prepare_embeds(prompt, 1, 32), prepare_embeds(new, 1, 32)
    assert sorted(s.pending) == [6, 9, 12]
    assert torch.allclose(s.pending[12], new_full)  # the last block has the new prompt itself
    middle = s.pending[9]
    if how == "linear":
        torch.testing.assert_close(middle, (old_full + new_full * 2) / 3)
    else:  # slerp keeps each token's norm between the two norms
        norms = middle[0, :12].norm(dim=-1)
        lo = torch.minimum(old_full[0, :12].norm(dim=-1), new_full[0, :12].norm(dim=-1))
        hi = torch.maximum(old_full[0, :12].norm(dim=-1), new_full[0, :12].norm(dim=-1))
        assert ((norms >= lo - 1e-4) & (norms <= hi + 1e-4)).all() and torch.equal(middle[0, 12:], old_full[0, 12:])
    out = run(s, 9)
    assert out.shape[1] == 9 and torch.isfinite(out).all()


def test_bad_blends_are_refused(tiny_model, prompt):
    s = session(tiny_model)
    with pytest.raises(PromptError, match="blend must be one of linear, slerp over 1 to 64 blocks; got 'cubic' over 2"):
        s.set_prompt(prompt, blend_blocks=2, blend="cubic")
    with pytest.raises(PromptError, match="over 0"):
        s.set_prompt(prompt, blend_blocks=0)


def test_another_load_of_the_weights_continues_the_video(tiny_model, prompt):
    """use_model (a host that loaded the file again): the video goes on as if nothing happened, with the time
    embeddings and every layer's modulation taken from the new load, also after the host moved the old load away."""
    one = StreamSession(tiny_model, height=64, width=96, seed=4)
    one.set_prompt(prompt)
    whole = torch.cat(list(one.generate(12)), 1)
    two = StreamSession(tiny_model, height=64, width=96, seed=4)
    two.set_prompt(prompt)
    first = torch.cat(list(two.generate(6)), 1)
    again = random_model(tiny_model.cfg, dtype=torch.float32)
    again.load_state_dict(tiny_model.state_dict())
    tiny_model.to("meta")  # ComfyUI offloads the old load (to the CPU on a GPU machine)
    two.use_model(again)
    torch.testing.assert_close(torch.cat([first, *two.generate(6)], 1), whole)
    with torch.no_grad():
        again.blocks[1].modulation.add_(1.0)
    two.use_model(again)
    assert torch.equal(two.times[0].mods, again.layer_mods(two.times[0].e0))


def test_a_session_that_cannot_fit_is_refused_before_it_allocates(tiny_model, monkeypatch):
    """The estimate is checked against what the device has free (here a host said to have 64 MiB available)."""
    from longlive_core.runtime import session as session_module

    needs = session_module.session_bytes(tiny_model, 4, 512, 512, 12)
    assert needs["KV cache"] == 2 * TINY.num_layers * 4 * 12 * 32 * 32 * TINY.dim * 4  # float32, 1024 tokens a frame
    monkeypatch.setattr(session_module, "free_bytes", lambda device: 64 * 2**20)
    with pytest.raises(ConfigError, match=r"batch 4 at 512x512 with a 12-frame window needs about 0\.\d GiB \(KV cache "
                                          r"0\.\d, text cache 0\.0, activations 0\.\d\) but cpu has 0\.1 GiB free; "
                                          r"lower batch_size"):
        StreamSession(tiny_model, batch=4, height=512, width=512)
    StreamSession(tiny_model, height=64, width=96)  # a small one fits


def test_relative_positions_run_past_frame_1024_as_exactly_as_near_frame_0(tiny_model, prompt):
    """2004 latent frames with a switch past 1024 and one past 1800: no end, flat memory, and the same video as a
    session whose every position is 98,000 frames later (RoPE sees only differences): frame 100,000 rotates as
    exactly as frame 2000 (float32 angles there are 0.008 rad off: 1.5e-5 apart)."""
    from longlive_core.model.wan import RopeTable

    class Later(RopeTable):
        def time(self, start_frame, num_frames):
            return super().time(start_frame + 98_000, num_frames)

    videos, sizes = [], []
    for table in (RopeTable, Later):
        session = StreamSession(tiny_model, height=32, width=48, local_attn_size=9, sink_size=3,
                                position_mode="relative")
        session.rope = table(TINY.head_dim)
        session.set_schedule([(0, prompt), (1503, prompt.flip(1)), (1899, -prompt)])
        sizes.append(session.cache.nbytes)
        blocks = list(session.generate(2004))
        videos.append(torch.cat(blocks[-40:], 1))
        assert session.frame == 2004 and session.cache.sinks_at == 2004 - 9 and session.cache.nbytes == sizes[-1]
    assert torch.isfinite(videos[0]).all()
    assert ((videos[0] - videos[1]).norm() / videos[0].norm()).item() < 2e-6  # float32 rounding (2e-7 measured)


def test_position_modes_are_checked_and_absolute_ends_at_frame_1024(tiny_model, prompt):
    with pytest.raises(ConfigError, match="position_mode 'infinite' is unknown; choose one of absolute, relative"):
        StreamSession(tiny_model, height=32, width=48, position_mode="infinite")
    session = StreamSession(tiny_model, height=32, width=48, local_attn_size=9, sink_size=3)
    session.set_prompt(prompt)
    session.step_block()
    session.pos = session.frame = 1023  # as if it had made 1023 frames
    with pytest.raises(ConfigError, match="exceeds the 1024-position RoPE table of position mode 'absolute'.*"
                                          "position mode 'relative' \\(no limit\\)"):
        session.step_block()


@pytest.mark.parametrize("sink", [0, 1, 3])
def test_relative_positions_at_batch_2_give_each_sample_its_own_batch_1_video(tiny_model, prompt, sink):
    """Upstream's infinite mode fails at batch > 1; its semantics are per sample: a batch-2 session past the window
    and through a switch equals two batch-1 sessions on the same draws."""
    gen = torch.Generator().manual_seed(11)
    blocks = 10
    noise = torch.randn(2, 3 * blocks, TINY.in_dim, 4, 6, generator=gen)
    renoise = torch.randn(3 * blocks, 2, 3, TINY.in_dim, 4, 6, generator=gen)
    prompts = [torch.cat([prompt, -prompt]), torch.cat([prompt.flip(1), prompt * 2])]

    def video(batch_slice):
        session = StreamSession(tiny_model, batch=batch_slice.stop - batch_slice.start, height=32, width=48,
                                local_attn_size=9, sink_size=sink, position_mode="relative",
                                noise=RecordedNoise(noise[batch_slice], renoise[:, batch_slice]))
        session.set_schedule([(0, prompts[0][batch_slice]), (15, prompts[1][batch_slice])])
        return torch.cat(list(session.generate(3 * blocks)), 1)

    both, alone = video(slice(0, 2)), torch.cat([video(slice(0, 1)), video(slice(1, 2))])
    for sample in range(2):  # equal up to float32 sums of another batch shape
        assert ((both[sample] - alone[sample]).norm() / alone[sample].norm()).item() < 2e-6
