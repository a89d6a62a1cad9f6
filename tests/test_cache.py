"""The ring-buffer cache against straightforward masked attention over every frame."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longlive_core import StreamSession
from longlive_core.model.cache import KVCache
from longlive_core.model.config import TEXT_LEN
from longlive_core.errors import ConfigError


class FullHistorySession(StreamSession):
    """Keeps every frame's K/V (no eviction) and masks keys to sink + the last window - sink frames."""

    def __init__(self, model, *, window, sink, frames, **kw):
        self.rule = (window, sink)
        super().__init__(model, local_attn_size=frames, sink_size=0, **kw)
        self.end = 0

    def plan(self, start, frames, cache_only=False):
        self.end = start + frames
        return super().plan(start, frames, cache_only)

    def attend(self, q, k, v, scales=None):
        if k.shape[1] == TEXT_LEN:
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        window, sink = self.rule
        frame = torch.arange(k.shape[1]) // self.frame_tokens
        allowed = (frame < sink) | (frame >= self.end - (window - sink))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=allowed[None, None, None, :])
        return out.transpose(1, 2)


@pytest.mark.parametrize("window,sink", [(9, 3), (12, 3), (7, 1), (6, 0)])
def test_ring_buffer_equals_masked_attention_over_all_frames(tiny_model, prompt, window, sink):
    frames = 27
    ring = StreamSession(tiny_model, height=64, width=96, local_attn_size=window, sink_size=sink, seed=3)
    ring.set_prompt(prompt)
    ours = torch.cat(list(ring.generate(frames)), 1)

    ref_session = FullHistorySession(tiny_model, window=window, sink=sink, frames=frames, height=64, width=96, seed=3)
    tiny_model.attend = ref_session.attend
    try:
        ref_session.set_prompt(prompt)
        ref = torch.cat(list(ref_session.generate(frames)), 1)
    finally:
        tiny_model.set_attention("sdpa")
    assert ((ours - ref).norm() / ref.norm()).item() < 1e-5
    # and the window matters: a longer window gives another video
    other = StreamSession(tiny_model, height=64, width=96, local_attn_size=window + 3, sink_size=sink, seed=3)
    other.set_prompt(prompt)
    assert ((torch.cat(list(other.generate(frames)), 1) - ours).norm() / ours.norm()).item() > 1e-3


def test_slots_of_a_ring_that_does_not_align_with_blocks():
    cache = KVCache.allocate(1, 1, window=7, sink=1, frame_tokens=2, heads=1, head_dim=2, device="cpu",
                             dtype=torch.float32)
    assert [cache.slot(f) for f in range(10)] == [0, 1, 2, 3, 4, 5, 6, 1, 2, 3]
    assert cache.token_index(6, 3).tolist() == [12, 13, 2, 3, 4, 5]
    assert cache.kv_len(3) == 6 and cache.kv_len(30) == 14


@pytest.mark.parametrize("window,sink,msg", [(5, 3, "local_attn_size=5"), (12, -1, "sink_size=-1")])
def test_window_too_small_for_a_block_is_refused(window, sink, msg):
    with pytest.raises(ConfigError, match=msg):
        KVCache.allocate(1, 1, window, sink, 2, 1, 2, "cpu", torch.float32)
