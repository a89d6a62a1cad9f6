"""A named video (longlive_core.Video) through its runs, with hooks in place of ComfyUI's, on the CPU."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from longlive_core import BlockDone, PostedPrompt, Prompt, RunHooks, Video, VideoSettings, hashed_embeds
from longlive_core.errors import ConfigError, PromptError, RunEndingError
from longlive_core.runtime.session import prepare_embeds
from longlive_core.tools.synthetic import TINY


def embed(text: str) -> torch.Tensor:
    return hashed_embeds(text, TINY.text_dim)


def finished(decode):
    """A decode hook that decodes at once (its finisher returns the images)."""
    return lambda latents: (lambda images=decode(latents): images)


def new_video(model, policy: str = "recache", position_mode: str = "absolute") -> Video:
    return Video.open(model, VideoSettings(("tiny",), 1, 96, 64, 9, 3, policy, 0, "v", position_mode), fast=False)


def test_runs_continue_one_video_as_one_session_makes_it(tiny_model):
    """Two runs of a named video (the second with the first prompt unchanged: no switch) give the frames of one
    session generating them in one go."""
    video = new_video(tiny_model)
    prompts = [Prompt(0, "a boy"), Prompt(6, "he runs")]
    video.schedule(prompts, 9, embed)
    first, _ = video.run(9, live=False, hooks=RunHooks(embed_text=embed))
    video.schedule([Prompt(0, "he runs")], 6, embed)
    second, _ = video.run(6, live=False, hooks=RunHooks(embed_text=embed))
    one = new_video(tiny_model)
    one.schedule(prompts, 15, embed)
    whole, _ = one.run(15, live=False, hooks=RunHooks(embed_text=embed))
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=0, atol=0)
    assert video.describe()["frames"] == 15 and video.describe()["settings"]["session_id"] == "v"
    with pytest.raises(ConfigError, match="room for 1008 more"):
        video.fit(1020, live=False)


def test_a_video_says_whether_a_run_generates_it_or_the_host_holds_it(tiny_model):
    """The sessions route's state: idle, in use while the host holds it (a run from its opening, a decode), generating
    while a run that is not live makes blocks."""
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 3, embed)
    states = [video.state]
    video.claim()
    states.append(video.state)
    video.run(3, live=False, hooks=RunHooks(embed_text=embed, made=lambda _: states.append(video.describe()["state"])))
    states.append(video.state)
    video.unclaim()
    assert states + [video.state] == ["idle", "in use", "generating", "in use", "idle"]


def test_an_interrupted_run_keeps_its_blocks_and_images_for_the_next(tiny_model):
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 12, embed)

    def stop_after_two(done):
        if done.index == 1:
            raise KeyboardInterrupt  # as ComfyUI's progress bar raises on /interrupt

    decode = finished(lambda latents: latents[:, :, :3].mean(2).repeat_interleave(4, 0)[..., None])
    with pytest.raises(KeyboardInterrupt):
        video.run(15, live=False, hooks=RunHooks(embed_text=embed, decode=decode, shown=stop_after_two))
    latents, images = video.run(3, live=False, hooks=RunHooks(embed_text=embed, decode=decode))
    # the second block's hand-off comes after the third block was launched: three kept blocks and the new one
    assert latents.shape[1] == 12 and images.shape[0] == 4 * 4


def test_a_live_run_takes_the_newest_posted_prompt_at_the_next_block(tiny_model):
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 12, embed)

    def post(done):
        if done.index == 0:
            video.post(PostedPrompt("an older prompt", time.time()))
            video.post(PostedPrompt("a dog", time.time()))
        if done.index == 2:
            video.stop.set()

    latents, _ = video.run(12, live=True, hooks=RunHooks(embed_text=embed, made=post))
    assert latents.shape[1] == 9  # stopped after the third block
    assert [s["text"] for s in video.switches] == ["a dog"] and video.switches[0]["frame"] == 3
    assert video.prompt_key == Prompt(3, "a dog").key() and not video.live and video.inbox.empty()


def test_a_live_run_refuses_posts_once_it_stops_or_its_last_block_is_made(tiny_model):
    """A post the run would not take is refused (RunEndingError, the route's 409) rather than queued and dropped:
    after its last block is made, after a stop, and after the run."""
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 6, embed)
    refused = []

    def post_now(done):
        with pytest.raises(RunEndingError, match="session 'v': its live run is ending .*queue the sampler again"):
            video.post(PostedPrompt(f"after block {done.index}", time.time()))
        refused.append(done.index)

    video.run(6, live=True, hooks=RunHooks(embed_text=embed, made=lambda d: d.index == 1 and post_now(d)))
    assert refused == [1] and video.switches == []

    def stop_then_post(done):
        video.stop.set()
        post_now(done)

    video.schedule([Prompt(0, "a boy")], 9, embed)
    latents, _ = video.run(9, live=True, hooks=RunHooks(embed_text=embed, made=stop_then_post))
    assert latents.shape[1] == 3 and refused == [1, 0] and video.switches == []
    with pytest.raises(RunEndingError):
        video.post(PostedPrompt("after the run", time.time()))

    def while_playing_out():  # the stop that ended the run is cleared as its last frames play
        if video.playing_out and not video.stop.is_set():
            post_now(BlockDone(2, 3, None, None, None, 0))

    queued = iter([10.0] * 4 + [0.0] * 100)
    video.schedule([Prompt(0, "a boy")], 9, embed)
    video.run(9, live=True, hooks=RunHooks(embed_text=embed, made=lambda d: d.index == 0 and video.stop.set(),
                                           lead=lambda: next(queued), check=while_playing_out))
    assert refused[2:3] == [2] and video.switches == []


def test_a_prompt_posted_as_the_last_pass_is_launched_is_logged_not_kept(tiny_model, caplog):
    """The one moment a post is taken and not applied: after the last block's last check, before the run closes its
    posts. The run logs the text it ended without; the next run does not take it."""
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 6, embed)
    step = video._step

    def step_then_post(check, cut_short):
        latents = step(check, cut_short)
        if video.session.frame == 6:
            video.post(PostedPrompt("a dog", time.time()))
        return latents

    video._step = step_then_post
    video.run(6, live=True, hooks=RunHooks(embed_text=embed))
    assert video.switches == [] and video.inbox.empty()
    assert ("the prompt 'a dog' was posted as the live run launched its last pass; the run ended without it"
            in caplog.text)


def live_with_posts(model, events: dict, encode=embed) -> tuple[Video, torch.Tensor, list]:
    video = new_video(model)
    video.schedule([Prompt(0, "a boy")], 15, embed)
    latents, calls = run_with_viewers(video, 15, events, embed, encode)
    return video, latents, calls


def run_with_viewers(video: Video, frames: int, events: dict, embed_text, encode) -> tuple[torch.Tensor, list]:
    """A live run of 4 blocks whose viewers, after each block, have 3 checks' worth of video queued (time to spare in
    the run's wait); `events[block]` acts on the video after that block. Returns its latents and the encoder's calls
    as (text, frame, whether a post was waiting)."""
    queued, calls = [0], []

    def made(done):
        queued[0] = 3
        events.get(done.index, lambda v: None)(video)
        if done.index == 3:
            video.stop.set()

    def lead():
        queued[0] -= 1
        return 10.0 if queued[0] >= 0 else 0.0

    def encoder(text):
        calls.append((text, video.session.frame, not video.inbox.empty()))
        return encode(text)

    latents, _ = video.run(frames, live=True, hooks=RunHooks(embed_text=embed_text, encode=encoder, made=made,
                                                              lead=lead))
    return latents, calls


def test_a_text_being_typed_is_encoded_while_the_live_run_waits_and_its_post_takes_it(tiny_model):
    """The viewer's text (type_ahead) is encoded in the run's wait for its viewers, before it is posted; its post
    switches with those embeddings. A text posted without being typed first is encoded when it is taken. The video is
    the one the same posts make without typing."""
    now = time.time()
    events = {0: lambda v: v.type_ahead("a dog"), 1: lambda v: v.post(PostedPrompt("a dog", now)),
              2: lambda v: (v.type_ahead("a cat"), v.post(PostedPrompt("a bird", now)))}
    video, latents, calls = live_with_posts(tiny_model, events)
    assert calls == [("a dog", 3, False), ("a bird", 9, False)]  # "a cat" was typed, never waited for, never posted
    assert [(s["frame"], s["text"], s["encoded_ahead"]) for s in video.switches] == [(6, "a dog", True),
                                                                                     (9, "a bird", False)]
    assert video.switches[0]["encode_ms"] == 0.0 and video.prompt_key == Prompt(9, "a bird", embed("a bird")).key()
    untyped = {1: events[1], 2: lambda v: v.post(PostedPrompt("a bird", now))}
    _, want, calls = live_with_posts(tiny_model, untyped)
    assert calls == [("a dog", 6, False), ("a bird", 9, False)]
    torch.testing.assert_close(latents, want, rtol=0, atol=0)


def test_a_text_being_typed_that_fails_to_encode_leaves_the_run_going(tiny_model, caplog):
    def encode(text):
        if text == "a broken text":
            raise PromptError("the encoder refuses it")
        return embed(text)

    events = {0: lambda v: v.type_ahead("a broken text"), 1: lambda v: v.post(PostedPrompt("a dog", time.time()))}
    video, latents, calls = live_with_posts(tiny_model, events, encode)
    assert latents.shape[1] == 12 and [s["text"] for s in video.switches] == ["a dog"]
    assert calls == [("a broken text", 3, False), ("a dog", 6, False)] and video.typed is None
    assert "encoding the text being typed failed (the encoder refuses it)" in caplog.text


def test_a_live_run_ends_once_its_viewers_were_sent_its_last_frame(tiny_model):
    """ComfyUI's prompt worker collects garbage as a run ends, stalling every thread (run 98: 0.3-0.5 s without a
    frame at the viewer): a live run returns once the video it made has left for its viewers; a viewer's channel that
    never empties holds it for twice its queued video at most. The lead here: each block's 12 frames leave at 16 fps."""
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 6, embed)
    leaves, taking = [time.monotonic()], []

    def shown(done):
        leaves.append(max(leaves[-1], time.monotonic()) + 12 / 16)

    def lead():
        taking.append((len(leaves), video.live))
        return max(0.0, leaves[-1] - time.monotonic())

    video.run(6, live=True, hooks=RunHooks(embed_text=embed, shown=shown, lead=lead))
    assert lead() == 0 and len(leaves) == 3
    assert not any(live for blocks, live in taking if blocks == 3)  # after its last block, no prompt is taken
    stuck = time.monotonic()
    video.run(3, live=True, hooks=RunHooks(embed_text=embed, lead=lambda: 0.25))
    assert 0.9 <= time.monotonic() - stuck < 30


def test_a_stop_while_a_live_run_sends_its_last_frames_ends_that_wait(tiny_model):
    """After its last block a live run waits for its frames to leave (a viewer that never empties: twice its queued
    video). The stop that ended the run leaves that wait to its frames; a stop sent during it ends it at once."""
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 6, embed)
    asked = []

    def lead():
        asked.append(video.playing_out)
        if len(asked) == 5:
            video.stop.set()
        return 0.25

    video.run(6, live=True, hooks=RunHooks(embed_text=embed, lead=lead, made=lambda done: video.stop.set()))
    assert asked[:1] == [False] and asked[1:] == [True] * 4  # the stop after the first block; the wait's 4 checks
    assert not video.playing_out and not video.live and video.session.frame == 3


def test_a_prompt_posted_during_a_live_block_makes_that_block_again_under_it(tiny_model):
    """The block in flight is cut short at its next pass and made again under the posted prompt: the video a run
    with the switch scheduled at that block makes."""
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 9, embed)
    passes = []

    def check():
        passes.append(video.session.frame)
        if len(passes) == 4 + 2:  # before the second block's second pass
            video.post(PostedPrompt("a dog", time.time()))

    latents, _ = video.run(9, live=True, hooks=RunHooks(embed_text=embed, check=check))
    assert passes == [0] * 4 + [3] * (2 + 4) + [6] * 4  # two passes cut short, then the block again
    assert [s["frame"] for s in video.switches] == [3]
    scheduled = new_video(tiny_model)
    scheduled.schedule([Prompt(0, "a boy"), Prompt(3, "a dog")], 9, embed)
    want, _ = scheduled.run(9, live=False, hooks=RunHooks(embed_text=embed))
    torch.testing.assert_close(latents, want, rtol=0, atol=0)


def test_a_restarted_video_makes_what_a_new_one_makes(tiny_model):
    """restart keeps the caches (and graphs) but nothing of the video before it."""
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy"), Prompt(3, "a dog")], 6, embed)
    video.run(6, live=False, hooks=RunHooks(embed_text=embed))
    video.restart(seed=5)
    video.schedule([Prompt(0, "a boy")], 6, embed)
    again, _ = video.run(6, live=False, hooks=RunHooks(embed_text=embed))
    fresh = Video.open(tiny_model, VideoSettings(("tiny",), 1, 96, 64, 9, 3, "recache", 5, "v"), fast=False)
    fresh.schedule([Prompt(0, "a boy")], 6, embed)
    want, _ = fresh.run(6, live=False, hooks=RunHooks(embed_text=embed))
    torch.testing.assert_close(again, want, rtol=0, atol=0)
    assert video.settings.seed == 5 and video.switches == [] and video.stats.warm_up_s == 0


def test_close_waits_for_the_run_in_progress(tiny_model):
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 6, embed)

    class Stream:
        closed = 0

        def close(self):
            self.closed += 1

    stream = video.decoder("test decoder", Stream)
    seen = []

    def close_now(done):
        video.close()  # as DELETE /longlive/sessions/{id} does while a run generates
        seen.append(stream.closed)

    video.run(6, live=False, hooks=RunHooks(embed_text=embed, made=close_now))
    assert seen == [0, 0] and stream.closed == 1


class Stop(Exception):
    """Stands in for ComfyUI's InterruptProcessingException."""


def test_a_stop_between_passes_leaves_the_block_to_be_made_again_exactly(tiny_model):
    """An interrupt inside a block (before its third pass): the block is not counted, nothing is reset, and the next
    run makes the video an uninterrupted run makes."""
    prompts = [Prompt(0, "a boy"), Prompt(3, "he runs")]
    video = new_video(tiny_model)
    video.schedule(prompts, 9, embed)
    passes = []

    def stop_in_the_second_block():
        passes.append(1)
        if len(passes) == 4 + 2 + 1:  # the first block's 4 passes, then the second block's third
            raise Stop

    with pytest.raises(Stop):
        video.run(9, live=False, hooks=RunHooks(embed_text=embed, check=stop_in_the_second_block))
    assert video.session.frame == 3 and video.prompt_key is not None
    rest, _ = video.run(6, live=False, hooks=RunHooks(embed_text=embed))
    straight = new_video(tiny_model)
    straight.schedule(prompts, 9, embed)
    whole, _ = straight.run(9, live=False, hooks=RunHooks(embed_text=embed))
    torch.testing.assert_close(rest, whole, rtol=0, atol=0)  # the kept block, then the two made after the stop


def test_a_block_stopped_after_its_prompt_switch_keeps_that_prompt_in_force(tiny_model):
    """An interrupt inside a block that switched prompts: the session holds the new prompt (the block is made again
    under it), so the video says so, and a next run that asks for the old prompt switches back to it."""
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 3, embed)
    video.run(3, live=False, hooks=RunHooks(embed_text=embed))
    video.schedule([Prompt(0, "a cat")], 3, embed)
    passes = []

    def stop_at_the_second_pass():
        passes.append(1)
        if len(passes) == 2:
            raise Stop

    with pytest.raises(Stop):
        video.run(3, live=False, hooks=RunHooks(embed_text=embed, check=stop_at_the_second_pass))
    assert video.prompt_key == "text:a cat" and video.session.frame == 3
    video.schedule([Prompt(0, "a boy")], 3, embed)
    video.run(3, live=False, hooks=RunHooks(embed_text=embed))
    torch.testing.assert_close(video.session.prompt, prepare_embeds(embed("a boy"), 1, TINY.text_dim), rtol=0, atol=0)
    assert video.prompt_key == "text:a boy"


@pytest.mark.parametrize("cut", [0, 1])
def test_a_decode_cut_off_by_an_interrupt_is_made_at_the_next_run(tiny_model, cut):
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 9, embed)
    decoded = []

    def decode(latents):
        if len(decoded) == cut:
            decoded.append(None)
            raise Stop  # inside the first or the second block's decode
        decoded.append(latents)
        images = latents[:, :, :1].repeat_interleave(4, 1).flatten(0, 1)[..., None]
        return lambda: images

    with pytest.raises(Stop):
        video.run(9, live=False, hooks=RunHooks(embed_text=embed, decode=decode))
    latents, images = video.run(3, live=False, hooks=RunHooks(embed_text=embed, decode=decode))
    kept = 3 * (cut + 1)
    assert latents.shape[1] == kept + 3 and images.shape[0] == 4 * (kept + 3)  # the cut block's images are not lost
    torch.testing.assert_close(images[4 * cut * 3:4 * kept, ..., 0], latents[0, kept - 3:kept, :1].repeat_interleave(4, 0))


def full_disk_at(call: int, decoded: list):
    """A decode hook that records the latents it decodes; the finisher of its `call`-th decode raises as a full disk
    under a video file does (after the decode went through)."""
    def decode(latents):
        decoded.append(latents)
        images = latents[:, :, :1].repeat_interleave(4, 1).flatten(0, 1)[..., None]
        calls = len(decoded)

        def finish():
            if calls == call:
                raise OSError(28, "No space left on device")
            return images
        return finish
    return decode


def assert_decoded_once_in_order(decoded: list, latents: torch.Tensor) -> None:
    """The decode hook saw each block of `latents` [B, T, ...] once, in order."""
    assert len(decoded) == latents.shape[1] // 3
    for k, block in enumerate(decoded):
        torch.testing.assert_close(block, latents[:, 3 * k:3 * k + 3], rtol=0, atol=0)


def test_a_block_whose_frames_failed_to_reach_the_host_is_not_decoded_again(tiny_model):
    """A failure while a decoded block is handed on (a full disk under its video file) fails the run after the decoder
    moved past that block: the next run decodes only the blocks never decoded, each once, in order; its images skip
    the lost block's frames (as its file does)."""
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 9, embed)
    decoded = []
    decode = full_disk_at(2, decoded)
    with pytest.raises(OSError, match="No space left"):
        video.run(9, live=False, hooks=RunHooks(embed_text=embed, decode=decode))
    latents, images = video.run(3, live=False, hooks=RunHooks(embed_text=embed, decode=decode))
    assert latents.shape[1] == 12
    assert_decoded_once_in_order(decoded, latents)
    kept = torch.cat([latents[:, :3], latents[:, 6:]], dim=1)  # all but the second block
    torch.testing.assert_close(images[..., 0], kept[0, :, :1].repeat_interleave(4, 0), rtol=0, atol=0)


def test_an_owed_block_whose_frames_failed_to_reach_the_host_is_not_decoded_again(tiny_model):
    """A block a run left undecoded is decoded by the next; where handing its frames on fails there (a full disk),
    the decoder has moved past it: the run after decodes each block once, in order."""
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 6, embed)

    def stop(done):
        raise Stop

    with pytest.raises(Stop):
        video.run(6, live=False, hooks=RunHooks(embed_text=embed, shown=stop))  # interrupted, its block undecoded
    decoded = []
    decode = full_disk_at(1, decoded)
    with pytest.raises(OSError, match="No space left"):
        video.run(3, live=False, hooks=RunHooks(embed_text=embed, decode=decode))
    latents, images = video.run(3, live=False, hooks=RunHooks(embed_text=embed, decode=decode))
    assert latents.shape[1] == 6
    assert_decoded_once_in_order(decoded, latents)
    assert images.shape[0] == 4 * 3  # the lost block's frames are skipped


def test_blocks_of_a_run_without_a_decoder_are_decoded_by_the_next_that_has_one(tiny_model):
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 6, embed)

    def stop(done):
        raise Stop

    with pytest.raises(Stop):
        video.run(6, live=False, hooks=RunHooks(embed_text=embed, shown=stop))  # interrupted, nothing decoded
    decode = finished(lambda latents: latents[:, :, :1].repeat_interleave(4, 1).flatten(0, 1)[..., None])
    latents, images = video.run(3, live=False, hooks=RunHooks(embed_text=embed, decode=decode))
    assert latents.shape[1] == 6 and images.shape[0] == 24


def test_delivered_latents_wait_for_a_decode_that_takes_them(tiny_model):
    video = new_video(tiny_model)
    runs = [torch.zeros(1, 16, n, 2, 2) for n in (21, 24, 24)]
    for samples in runs[:2]:
        video.deliver(samples)  # the first run's decode was interrupted
    assert video.undecoded_before(runs[1]) == [runs[0]] and video.undecoded_before(torch.zeros(1)) == []
    video.decoded(runs[1])
    video.deliver(runs[2])
    assert video.undecoded_before(runs[2]) == []
    for _ in range(12):  # a session nothing decodes keeps at most MAX_UNDECODED_FRAMES of them
        video.deliver(torch.zeros(1, 16, 24, 2, 2))
    assert sum(s.shape[2] for s in video.delivered) <= 256


@pytest.mark.parametrize("position_mode", ["absolute", "relative"])
def test_a_saved_video_restored_in_a_new_one_continues_exactly(tiny_model, tmp_path, position_mode):
    from longlive_core import DecodeStream, restore_video, save_video

    prompts = [Prompt(0, "a boy"), Prompt(6, "he runs")]
    straight = new_video(tiny_model, position_mode=position_mode)
    straight.schedule(prompts, 15, embed)
    whole, _ = straight.run(15, live=False, hooks=RunHooks(embed_text=embed))

    video = new_video(tiny_model, position_mode=position_mode)
    video.schedule(prompts, 9, embed)  # the last block's clean pass is owed to the next block: saved with it
    first, _ = video.run(9, live=False, hooks=RunHooks(embed_text=embed))
    stream = video.decoder("wan 1234", lambda: DecodeStream(3))
    stream.cache, stream.shape = [torch.ones(1, 2, 2, 3, 3), None, "Rep"], (1, 8, 12)
    video.deliver(torch.full((1, 16, 3, 8, 12), 2.0))
    path = tmp_path / "saved.safetensors"
    assert save_video(video, str(path)) == path.stat().st_size

    resumed = new_video(tiny_model, position_mode=position_mode)
    restore_video(resumed, str(path))
    assert resumed.session.frame == 9 and resumed.prompt_key == video.prompt_key
    restored = resumed.decoders["wan 1234"]
    assert torch.equal(restored.cache[0], stream.cache[0]) and restored.cache[1:] == [None, "Rep"]
    assert restored.shape == (1, 8, 12) and torch.equal(resumed.delivered[0], video.delivered[0])
    resumed.schedule([Prompt(0, "he runs")], 6, embed)
    rest, _ = resumed.run(6, live=False, hooks=RunHooks(embed_text=embed))
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, rtol=0, atol=0)


def test_a_save_of_format_1_with_its_skipped_clean_pass_continues_exactly(tiny_model, tmp_path):
    """Format 1 kept the latents of a block whose clean pass had not run (it skipped it for a recache scheduled next)
    as a tensor; format 2 marks the owed pass in the session's fields. A format-1 file restores and continues as one
    straight run."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from longlive_core import restore_video, save_video

    prompts = [Prompt(0, "a boy"), Prompt(6, "he runs")]
    straight = new_video(tiny_model)
    straight.schedule(prompts, 15, embed)
    whole, _ = straight.run(15, live=False, hooks=RunHooks(embed_text=embed))
    video = new_video(tiny_model)
    video.schedule(prompts, 9, embed)
    first, _ = video.run(9, live=False, hooks=RunHooks(embed_text=embed))
    path = tmp_path / "saved.safetensors"
    save_video(video, str(path))
    with safe_open(str(path), "pt") as f:  # written as format 1 wrote it
        meta, tensors = json.loads(f.metadata()["longlive_video"]), {k: f.get_tensor(k) for k in f.keys()}
    assert meta["session"].pop("owed_clean") is True
    meta["version"] = 1
    tensors["session.skipped_clean"] = tensors[f"session.recent.{meta['session']['recent'] - 1}"].clone()
    save_file(tensors, str(path), metadata={"longlive_video": json.dumps(meta)})

    resumed = new_video(tiny_model)
    restore_video(resumed, str(path))
    resumed.schedule([Prompt(0, "he runs")], 6, embed)
    rest, _ = resumed.run(6, live=False, hooks=RunHooks(embed_text=embed))
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, rtol=0, atol=0)


def test_a_save_that_does_not_fit_is_refused_naming_the_file(tiny_model, tmp_path):
    from longlive_core import restore_video, save_video

    video = new_video(tiny_model)
    path = tmp_path / "saved.safetensors"
    save_video(video, str(path))
    other = Video.open(tiny_model, VideoSettings(("tiny",), 1, 96, 64, 12, 3, "recache", 0, "v"), fast=False)
    with pytest.raises(ConfigError, match=r"saved.safetensors: saved with other settings \(local_attn_size: 9 -> 12\)"):
        restore_video(other, str(path))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x80\x04 not a save")
    with pytest.raises(ConfigError, match=r"broken.safetensors: not a saved LongLive session \(not a safetensors"):
        restore_video(video, str(broken))
    with video.busy:  # a run generating it
        with pytest.raises(ConfigError, match="is generating; save it when its run has ended"):
            save_video(video, str(path))
    video.claim()  # a host's run from its opening: it schedules before it generates
    try:
        with pytest.raises(ConfigError, match="is in use by a run or a decode; save it when that has ended"):
            save_video(video, str(path))
    finally:
        video.unclaim()
    path.unlink()
    with pytest.raises(ConfigError, match="session 'v' was deleted or reset as the save began; nothing was written"):
        save_video(video, str(path), held=lambda: False)  # the host freed it before the save took it
    assert not path.exists() and save_video(video, str(path), held=lambda: True) > 0 and not video.busy.locked()


def test_a_decoder_cache_keeps_its_strides_through_a_save_and_bad_ones_are_refused_naming_the_file(tiny_model,
                                                                                                  tmp_path):
    """A decode stream's cache entries come back from a save laid out as they were (a channels-last entry stays
    channels-last: the decoder's compiled code fits it); strides that do not lay the entry out are refused."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from longlive_core import DecodeStream, restore_video, save_video
    from longlive_core.runtime.durable import META_KEY

    video = new_video(tiny_model)
    entry = torch.randn(1, 4, 2, 3, 5).contiguous(memory_format=torch.channels_last_3d)
    video.decoder("vae", lambda: DecodeStream(3)).cache[:] = [entry, None, "Rep"]
    path = tmp_path / "saved.safetensors"
    save_video(video, str(path))
    restored = new_video(tiny_model)
    restore_video(restored, str(path))
    got = restored.decoders["vae"].cache
    assert got[0].stride() == entry.stride() and torch.equal(got[0], entry) and got[1:] == [None, "Rep"]

    with safe_open(str(path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()[META_KEY])
    meta["decoders"][0]["strides"]["0"] = [1, 1, 1, 1, 1]
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata={META_KEY: json.dumps(meta)})
    with pytest.raises(ConfigError, match=r"broken.safetensors: its decoder's cache does not fit \(strides \[1, 1, 1, "
                                          r"1, 1\] do not lay out a tensor of shape \[1, 4, 2, 3, 5\] densely\)"):
        restore_video(new_video(tiny_model), str(broken))


def test_a_run_makes_its_first_blocks_while_its_decoder_is_readied_and_decodes_them_after_in_order(tiny_model):
    """A run that is not live readies its decoder on a thread beside its first blocks (RunHooks.ready_decode): no
    block is decoded before the readying is done, then each is, in order, once; the stats time the readying and
    the run's wait for it. What it raises on its thread stops the run on the run's."""
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 12, embed)
    made, events, released = [], [], threading.Event()

    def prepare():  # before each block: the third one lets the readying finish
        made.append(len(made))
        if len(made) == 3:
            released.set()

    def work():
        assert released.wait(30)
        time.sleep(0.05)
        events.append("ready")

    def decode(latents):
        events.append(len(made))
        return lambda: latents[:, :, :1].repeat_interleave(4, 1).flatten(0, 1)[..., None]

    latents, images = video.run(12, live=False, hooks=RunHooks(embed_text=embed, prepare=prepare, decode=decode,
                                                              ready_decode=lambda: work))
    assert events[0] == "ready" and len(events) == 5 and all(n >= 3 for n in events[1:])
    torch.testing.assert_close(images[..., 0], latents[0, :, :1].repeat_interleave(4, 0))
    assert video.stats.decoder_beside_s >= 0.05 and video.stats.decoder_warm_up_s >= 0

    def fail():
        raise RuntimeError("no decoder here")

    video.schedule([Prompt(0, "a boy")], 3, embed)
    with pytest.raises(RuntimeError, match="no decoder here"):
        video.run(3, live=False, hooks=RunHooks(embed_text=embed, decode=decode, ready_decode=lambda: fail))


def test_an_interrupt_in_the_readying_beside_the_blocks_stops_the_run_and_the_next_decodes_its_blocks(tiny_model):
    """The host's interrupt raised inside the decoder's readying on its thread (ComfyUI's decoder layers check for
    it, and clear it as they raise) stops the run on its thread; the blocks it held back are decoded by the next
    run, each once, in order."""
    video = new_video(tiny_model)
    video.schedule([Prompt(0, "a boy")], 9, embed)

    def interrupted():
        time.sleep(0.05)
        raise Stop

    decode = finished(lambda latents: latents[:, :, :1].repeat_interleave(4, 1).flatten(0, 1)[..., None])
    with pytest.raises(Stop):
        video.run(9, live=False, hooks=RunHooks(embed_text=embed, decode=decode, ready_decode=lambda: interrupted))
    video.schedule([Prompt(0, "a boy")], 3, embed)
    latents, images = video.run(3, live=False, hooks=RunHooks(embed_text=embed, decode=decode))
    assert latents.shape[1] > 3 and images.shape[0] == 4 * latents.shape[1]
    torch.testing.assert_close(images[..., 0], latents[0, :, :1].repeat_interleave(4, 0))


def test_a_run_whose_host_keeps_no_weights_in_place_readies_its_decoder_before_its_first_block(tiny_model):
    """RunHooks.beside false (ComfyUI holds the model only partly beside the VAE), or a live run: the readying runs
    on the run's thread before the first block, timed as the run's wait."""
    made, seen = [], []
    decode = finished(lambda latents: latents[:, :, :1].repeat_interleave(4, 1).flatten(0, 1)[..., None])
    for live, beside in ((False, False), (True, True)):
        video = new_video(tiny_model)
        video.schedule([Prompt(0, "a boy")], 6, embed)
        hooks = RunHooks(embed_text=embed, prepare=lambda: made.append(1), beside=lambda: beside, decode=decode,
                         ready_decode=lambda: lambda: (time.sleep(0.05), seen.append(len(made))))
        video.run(6, live=live, hooks=hooks)
        assert seen[-1] == len(made) - 2 and video.stats.decoder_warm_up_s >= 0.05
        assert video.stats.decoder_beside_s is None


def test_a_run_whose_model_calls_compiled_code_at_every_pass_readies_its_decoder_on_its_own_thread(tiny_model):
    """A session whose every pass calls torch.compile'd code (a FastWan without CUDA graphs) never lets the readying
    run beside its blocks (a compile traced on another thread makes dynamo refuse such calls, run 136): it runs on
    the run's thread after the first block, before any decode."""
    from longlive_core.fast.setup import make_fast

    model = make_fast(tiny_model, compile=False)
    assert model.calls_compiled and not tiny_model.calls_compiled
    video = Video.open(model, VideoSettings(("tiny",), 1, 96, 64, 9, 3, "recache", 0, "v"), fast=False)
    video.schedule([Prompt(0, "a boy")], 6, embed)
    made, seen, decoded = [], [], []

    def decode(latents):
        decoded.append(len(made))
        return lambda: latents[:, :, :1].repeat_interleave(4, 1).flatten(0, 1)[..., None]

    hooks = RunHooks(embed_text=embed, prepare=lambda: made.append(1), decode=decode,
                     ready_decode=lambda: lambda: seen.append((threading.current_thread(), len(made))))
    video.run(6, live=False, hooks=hooks)
    assert seen == [(threading.current_thread(), 1)] and decoded == [1, 2] and video.stats.decoder_beside_s is None


def test_the_session_list_shows_video_time_past_four_minutes():
    from longlive_core.runtime.video import video_time

    assert [video_time(f) for f in (0, 3, 240, 1023, 2004, 12_000)] == ["0:00.0", "0:00.8", "1:00.0", "4:15.8",
                                                                        "8:21.0", "50:00.0"]
