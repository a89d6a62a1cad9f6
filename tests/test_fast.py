"""The fast model (make_fast: a FastWan on the eager model's weights), the FFN through linear_gelu and cache-only
passes against the plain model, on the CPU in float32. The fused blocks are checked in test_kernels, the compiled
stages against the golden runs in test_golden, CUDA graphs in test_gpu."""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time

import pytest
import torch

from longlive_core.errors import BackendUnavailableError, ConfigError
from longlive_core.fast.compile import compiled, unavailable
from longlive_core.fast.graphs import where
from longlive_core.fast.setup import make_fast
from longlive_core.model.attention import Q_TILE, merge_pad, resolve, wave_split
from longlive_core.model.fused import FastWan, linear_gelu
from longlive_core.model.wan import Block, CausalWan, Stages
from longlive_core.quant.fp8 import E4M3_MAX
from longlive_core.runtime.session import StreamSession
from longlive_core.tools.synthetic import TINY, random_model


def video(model, prompt, frames=15):
    session = StreamSession(model, height=64, width=96, local_attn_size=9, sink_size=3, seed=5)
    session.set_schedule([(0, prompt), (9, prompt.flip(1))])
    return torch.cat(list(session.generate(frames)), 1)


def test_make_fast_leaves_the_eager_model_as_it_was_and_makes_its_video(tiny_model, prompt):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    stages = tiny_model.stages
    plain = video(tiny_model, prompt)
    fast = make_fast(tiny_model, attention="sdpa", compile=False)
    assert isinstance(fast, FastWan) and type(tiny_model) is CausalWan and tiny_model.stages is stages
    assert all(type(b) is Block for b in tiny_model.blocks)
    after = tiny_model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert fast.head.head.weight.data_ptr() == tiny_model.head.head.weight.data_ptr()  # shared, not copied
    assert ((video(fast, prompt) - plain).norm() / plain.norm()).item() < 1e-5


def test_linear_gelu_is_the_tanh_gelu_of_the_linear():
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen) for s in ((2, 5, 8), (16, 8), (16,)))
    expect = torch.nn.functional.gelu(x @ w.t() + b, approximate="tanh")
    torch.testing.assert_close(linear_gelu(x, w, b), expect)
    exact = torch.nn.functional.gelu(x @ w.t() + b)
    assert (linear_gelu(x, w, b) - exact).abs().max() > 1e-6  # the tanh form, not the erf one


def test_cache_only_pass_writes_the_same_cache_and_returns_nothing(prompt):
    model = random_model(TINY, seed=1, dtype=torch.float32, std=0.3)
    caches = []
    x = torch.randn(1, 3, TINY.in_dim, 8, 12, generator=torch.Generator().manual_seed(2))
    for cache_only in (False, True):
        session = StreamSession(model, height=64, width=96, local_attn_size=9, sink_size=3, seed=5)
        session.set_prompt(prompt)
        session.step_block()  # fills the text cache and frames 0-2
        with torch.inference_mode():
            plan = dataclasses.replace(session.plan(3, 3), cache_only=cache_only)
            out = model(x, session.times[-1], plan, session.cache, session.text)
        assert (out is None) == cache_only
        caches.append((session.cache.k.clone(), session.cache.v.clone()))
    assert caches[0][0].abs().sum() > 0
    torch.testing.assert_close(caches[0], caches[1], rtol=0, atol=0)


def test_prompt_keys_plus_the_merged_padding_key_equal_attention_over_all_keys():
    """What the flash backends compute for the text cross-attention, here with exact math for the
    prefix part: attention over the first `used` keys, then the repeated padding key merged in."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 7, 2, 16, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 64, 2, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    used = torch.tensor([5, 64])
    for b, n in enumerate(used.tolist()):  # keys after the prompt are one repeated key
        k[b, n:], v[b, n:] = k[b, -1], v[b, -1]
    full = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    logits = torch.einsum("bshd,bkhd->bhsk", q, k) * 16 ** -0.5
    logits = logits.masked_fill(torch.arange(64)[None, None, None] >= used[:, None, None, None], -torch.inf)
    prefix, lse = torch.einsum("bhsk,bkhd->bshd", logits.softmax(-1), v), logits.logsumexp(-1)
    pad_row = used.clamp(max=63)
    samples = torch.arange(2)
    merged = merge_pad(prefix, lse, q, k[samples, pad_row, None], v[samples, pad_row, None], torch.log(64.0 - used))
    torch.testing.assert_close(merged, full.transpose(1, 2), rtol=1e-5, atol=1e-6)  # merged in float32
    assert (prefix - full.transpose(1, 2))[0].abs().max() > 1e-3  # the padding key matters


def test_text_cache_finds_the_prompt_and_its_padding_key(tiny_model, prompt):
    session = StreamSession(tiny_model, height=64, width=96, batch=2)
    embeds = torch.cat([prompt, torch.zeros_like(prompt)])  # 12 tokens; an empty prompt
    session.set_prompt(embeds)
    session.step_block()
    text = session.text
    assert text.used.tolist() == [12, 1]
    assert torch.allclose(text.log_pad, torch.log(torch.tensor([500.0, 511.0])))
    torch.testing.assert_close(text.pad_k[:, 0, 0], text.k[:, 0, 12])
    torch.testing.assert_close(text.pad_v[:, 1, 0], text.v[:, 1, 300])
    assert torch.equal(text.k[:, 0, 12], text.k[:, 0, 511])


def test_fp8_attention_steps_bound_every_q_k_v_the_model_makes(prompt):
    """The FP8 self-attention's per-head steps come from bounds; no q, k or v may pass them (it would clip),
    and they must not be so loose that typical values lose e4m3's precision."""
    model = random_model(TINY, seed=2, dtype=torch.float32, std=0.3)
    model.set_fp8_scales()
    seen = []

    def attend(q, k, v, scales):
        seen.append((q, k, v, scales))
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    model.attend = attend
    session = StreamSession(model, height=64, width=96, local_attn_size=9, sink_size=3, seed=1)
    session.set_schedule([(0, prompt), (6, -3 * prompt)])
    list(session.generate(12))
    # 4 blocks of 4 steps; 2 clean passes (each runs as the next block begins, the recache at the switch replaces
    # one, the last block's is still owed) and the recache stop before the last layer's attention
    assert len(seen) == 4 * 4 * TINY.num_layers + 3 * (TINY.num_layers - 1)
    for q, k, v, scales in seen:
        assert scales.shape == (3, TINY.num_heads)
        for x, step in zip((q, k, v), scales):
            peak = x.abs().amax(dim=(0, 1, 3))  # per head
            assert (peak <= step * E4M3_MAX).all()
            assert (peak >= step * E4M3_MAX / 2**8).all()


def test_fp8_attention_needs_a_hopper_gpu():
    with pytest.raises(BackendUnavailableError, match="'flash-attn 3 fp8' needs a CUDA GPU"):
        resolve("flash-attn 3 fp8", "cpu")


def test_fp8_attention_keeps_an_fp8_cache_written_once_per_token(prompt):
    """With the FP8 attention the cache holds e4m3 K/V, quantized as they are written; here FA3's FP8 kernel is
    stood in for by attention over the dequantized cache (FA3 needs a Hopper GPU; test_gpu runs it)."""
    plain = video(random_model(TINY, seed=3, dtype=torch.float32, std=0.3), prompt)
    model = random_model(TINY, seed=3, dtype=torch.float32, std=0.3)
    model.set_fp8_scales()
    model.attention_backend = "flash-attn 3 fp8"
    caches = []

    def attend(q, k, v, scales):
        caches.append(k.dtype)
        k, v = (x.float() * step[:, None] for x, step in ((k, scales[1]), (v, scales[2])))
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    model.attend = attend
    fp8 = video(model, prompt)
    assert set(caches) == {torch.float8_e4m3fn}
    assert 1e-4 < ((fp8 - plain).norm() / plain.norm()).item() < 0.1
    fast = make_fast(model, attention="sdpa", fused=False)  # compiled stages write FP8 directly, not through bytes
    fast.attention_backend, fast.attend = model.attention_backend, attend
    compiled = video(fast, prompt)
    assert ((compiled - fp8).norm() / fp8.norm()).item() < 1e-3  # a few values may round to the other FP8 neighbour
    session = StreamSession(model, height=64, width=96, local_attn_size=9, sink_size=3)
    assert session.cache.k.dtype == torch.float8_e4m3fn and session.cache.nbytes == session.cache.k.numel() * 2
    with pytest.raises(ConfigError, match="with a torch.float8_e4m3fn KV cache; got .* with torch.float32"):
        session.use_model(random_model(TINY, seed=3, dtype=torch.float32))


@pytest.mark.parametrize("batch", [1, 2, 4])
def test_longlive_2_queries_fill_whole_waves_so_nothing_is_cut(batch):
    """LongLive 2.0 at 1280x704: 7040 queries (55 units of 128) x 24 heads = 1320 units a sample, 10 whole waves on an
    H200's 132 SMs at any batch: one plain FA3 call; at 1280x736 (7360 queries, 58 units) the cut pays."""
    assert wave_split(batch, 7040, 24, 132) is None
    assert wave_split(1, 7360, 24, 132) is not None


def test_fp8_attention_refuses_an_fp16_model():
    model = random_model(TINY, dtype=torch.float16)
    with pytest.raises(ConfigError, match="'flash-attn 3 fp8' returns bf16 and needs precision bf16 or fp8"):
        model.set_attention("flash-attn 3 fp8")


@pytest.mark.parametrize("batch,queries,split", [(1, 4680, (4224, 5)), (2, 4680, (4224, 4)), (4, 4680, (4224, 2)),
                                                 (1, 4224, None), (1, 14040, None), (1, 1000, None)])
def test_wave_split_fills_whole_waves_and_splits_the_rest(batch, queries, split):
    """12 heads on 132 SMs: a cut leaves whole waves of 128-query units before it; the split count makes the
    rounds of the rest's smaller units as short as the splits allow (4680 queries: 48 units of the last wave
    as 240 fifths, 2 rounds = 0.4 of a wave instead of 1). 14040 queries fill 10 waves exactly; 1000 queries
    (96 units) do not fill one."""
    assert wave_split(batch, queries, 12, 132) == split
    if split is not None:
        cut, _ = split
        assert cut % Q_TILE == 0 and (cut // Q_TILE) * batch * 12 % 132 == 0


def unimportable(monkeypatch, *modules: str) -> None:
    """Makes modules fail to import, as on a machine without them."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
    resolve.cache_clear()


STAND_IN = "def flash_attn_func(q, k, v):\n    raise NotImplementedError\n"


def stand_ins(monkeypatch, folder, **sources: str) -> None:
    """Importable stand-in modules (name=source) in `folder`, forgotten again after the test."""
    for name, source in sources.items():
        (folder / f"{name}.py").write_text(source)
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name))  # restored (or removed) after the test
        del sys.modules[name]
    monkeypatch.syspath_prepend(str(folder))
    resolve.cache_clear()


def test_without_triton_or_torch_compile_the_fast_path_runs_eager_with_one_line(tiny_model, prompt, monkeypatch,
                                                                                caplog):
    unimportable(monkeypatch, "triton")
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with caplog.at_level(logging.INFO, logger="longlive_core"):
        fast = make_fast(tiny_model, attention="auto")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("LongLive fast path")]
    assert lines == [f"LongLive fast path: eager blocks (the fused ones need the triton package and a CUDA model); "
                     f"stages not compiled (torch.compile does not support this Python "
                     f"({sys.version.split()[0]})); CUDA graphs still capture where they run"]
    assert not fast.fused and fast.stages == Stages.of(Block)
    torch.testing.assert_close(video(fast, prompt), video(tiny_model, prompt), rtol=0, atol=0)


def test_compiled_calls_run_one_at_a_time_in_a_process():
    """A compiled function called on one thread while another thread's compiled call runs waits for it (dynamo's
    check for a compile being traced is one flag for the process: a call beside a compile would fail, run 136)."""
    inside, release, order = threading.Event(), threading.Event(), []

    def held(x):
        y = x + 1
        inside.set()  # a graph break: runs in Python, inside the compiled call
        assert release.wait(30)
        order.append("held")
        return y * 2

    first = compiled(held, backend="eager")
    second = compiled(lambda x: x - 1, backend="eager")
    thread = threading.Thread(target=first, args=(torch.ones(3),))
    thread.start()
    assert inside.wait(30)
    waiting = threading.Thread(target=lambda: order.append(("second", second(torch.ones(3)).tolist())))
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive() and order == []  # it waits while the first call runs
    release.set()
    thread.join(30)
    waiting.join(30)
    assert order == ["held", ("second", [0.0, 0.0, 0.0])]


def test_without_triton_torch_compile_is_unavailable_on_cuda_only(monkeypatch):
    unimportable(monkeypatch, "triton")
    assert unavailable(torch.device("cuda")) == "the triton package is not installed (torch.compile needs it for CUDA)"
    assert unavailable(torch.device("cpu")) is None  # inductor's CPU code is C++


def test_without_flashattention_auto_falls_back_and_fp8_attention_says_why(monkeypatch):
    unimportable(monkeypatch, "flash_attn_interface", "fa3_fwd_interface", "flash_attn")
    try:
        assert resolve("auto", "cuda", True)[0] == "sdpa"  # a Hopper GPU without FA3 or FA2
        assert resolve("auto", "cuda", False)[0] == "sdpa"
        with pytest.raises(BackendUnavailableError, match="'flash-attn 3 fp8' is not installed; pip install fa3-fwd "
                                                          r"\(PyPI\) or flash-attn 3, or use 'auto'"):
            resolve("flash-attn 3 fp8", "cuda", True)
        with pytest.raises(BackendUnavailableError, match="'flash-attn 2' is not installed; pip install flash-attn"):
            resolve("flash-attn 2", "cuda", False)
        with pytest.raises(BackendUnavailableError, match="'flash-attn 3 fp8' needs a Hopper GPU"):
            resolve("flash-attn 3 fp8", "cuda", False)
    finally:
        resolve.cache_clear()


def test_without_flashattention_3_auto_takes_flashattention_2(monkeypatch, tmp_path):
    """An RTX 4090 / 3090 user with flash-attn 2 and no FA3 (here a stand-in `flash_attn` package: FA2 builds only
    for CUDA). `auto` takes FA2 on Hopper and elsewhere; asking for FA3 says what to install."""
    stand_ins(monkeypatch, tmp_path, flash_attn=STAND_IN)
    unimportable(monkeypatch, "flash_attn_interface", "fa3_fwd_interface")
    try:
        assert resolve("auto", "cuda", True)[0] == "flash-attn 2"
        assert resolve("auto", "cuda", False)[0] == "flash-attn 2"
        assert resolve("auto", "cpu", False)[0] == "sdpa"
        with pytest.raises(BackendUnavailableError, match="'flash-attn 3' is not installed; pip install fa3-fwd"):
            resolve("flash-attn 3", "cuda", True)
    finally:
        resolve.cache_clear()


def test_an_fa3_build_without_float16_is_passed_over_for_fp16(monkeypatch, tmp_path):
    """The fa3-fwd wheel is built without float16 kernels (its config module says so; run 96's fp16 model failed in
    it inside ComfyUI). Stand-ins of its interface and config: `auto` takes it for bf16 and passes it over for fp16
    (to FA2 where installed, else SDPA); asking for it with fp16 says why and what to choose."""
    stand_ins(monkeypatch, tmp_path, fa3_fwd_interface=STAND_IN, fa3_fwd_config=(
        "CONFIG = {'build_flags': {'FLASHATTENTION_DISABLE_FP16': True, 'FLASHATTENTION_DISABLE_FP8': False}}\n"))
    unimportable(monkeypatch, "flash_attn_interface", "flash_attn")
    try:
        assert resolve("auto", "cuda", True)[0] == "flash-attn 3"
        assert resolve("auto", "cuda", True, fp16=True)[0] == "sdpa"
        with pytest.raises(BackendUnavailableError, match=r"'flash-attn 3': the installed build \(fa3_fwd_interface\) "
                                                          r"has no float16 kernels; use precision bf16, or attention "
                                                          r"'auto' or 'sdpa' for fp16"):
            resolve("flash-attn 3", "cuda", True, fp16=True)
        stand_ins(monkeypatch, tmp_path, flash_attn=STAND_IN)
        assert resolve("auto", "cuda", True, fp16=True)[0] == "flash-attn 2"
        stand_ins(monkeypatch, tmp_path,
                  fa3_fwd_config="CONFIG = {'build_flags': {'FLASHATTENTION_DISABLE_FP16': False}}\n")
        assert resolve("auto", "cuda", True, fp16=True)[0] == "flash-attn 3"  # a build with float16 kernels
    finally:
        resolve.cache_clear()


def test_a_capture_failure_says_where_it_was_raised():
    """The cause a failed capture reports ends with the innermost frames (run 83's FP8 capture inside ComfyUI failed
    with only `CUDA driver error: invalid argument` to go on)."""
    def launcher():
        raise RuntimeError("invalid argument")

    def stage():
        launcher()

    with pytest.raises(RuntimeError) as raised:
        stage()
    here = launcher.__code__.co_firstlineno
    assert where(raised.value) == (f"test_fast.py:{here + 1} launcher < test_fast.py:{here + 4} stage < "
                                   f"test_fast.py:{here + 7} test_a_capture_failure_says_where_it_was_raised")


def test_spans_read_only_finished_work_and_each_span_once():
    from longlive_core.timing import MAX_UNREAD, GpuTimer, Spans

    spans = Spans()
    assert spans.take_ms() is None
    for _ in range(MAX_UNREAD + 3):
        timer = GpuTimer("cpu")
        time.sleep(0.001)
        spans.add(timer)
    assert len(spans.unread) == MAX_UNREAD  # the oldest unread spans go
    assert spans.take_ms() >= MAX_UNREAD * 1.0 and spans.take_ms() is None
