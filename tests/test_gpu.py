"""Fast path against the eager path on a CUDA GPU; skipped without one."""

from __future__ import annotations

import dataclasses
import gc
import time
import weakref

import pytest
import torch

from longlive_core import BackendUnavailableError, ShotSession, SideStream, StreamSession, WanConfig
from longlive_core.fast.runner import GraphRunner, warm_up
from longlive_core.fast.setup import make_fast
from longlive_core.model.attention import _flash_module, _lacks_fp16, cross_attention
from longlive_core.model.wan import Block, Stages
from longlive_core.quant.precision import resolve as resolve_precision
from longlive_core.tools.synthetic import random_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CFG = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=4, text_dim=64)


def stream(model, runner, blocks=20, switches=(8, 14), prepare=False, position_mode="absolute"):
    gen = torch.Generator(device="cuda").manual_seed(0)
    prompts = [torch.randn(1, 30, CFG.text_dim, device="cuda", generator=gen) for _ in range(len(switches) + 1)]
    session = StreamSession(model, height=128, width=192, seed=3, runner=runner(model) if runner else None,
                            position_mode=position_mode)
    if prepare:
        warm_up(session)
    session.set_schedule([(0, prompts[0])] + [(3 * b, p) for b, p in zip(switches, prompts[1:])])
    return torch.cat(list(session.generate(3 * blocks)), 1).float(), session


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_graphs_replay_the_eager_path_through_two_switches():
    model = random_model(CFG, device="cuda", dtype=torch.bfloat16, std=0.05)
    eager, _ = stream(model, None)
    fast, session = stream(make_fast(model, attention="sdpa", compile=False), GraphRunner)
    runner = session.runner
    assert len(runner.graphs) >= 5  # the 4 steps and the clean pass of steady blocks
    assert rel(fast, eager) < 1e-2


def test_compiled_fast_path_with_the_best_attention_as_the_nodes_run_it():
    model = random_model(CFG, device="cuda", dtype=torch.bfloat16, std=0.05)
    eager, _ = stream(model, None)
    fast, session = stream(make_fast(model, attention="auto"), GraphRunner, prepare=True)
    assert len(session.runner.graphs) == 6  # captured before the first block: 4 steps, clean pass, recache
    assert rel(fast, eager) < 2e-2


def test_the_warm_up_returns_the_time_of_its_compiling_round():
    """warm_up returns the seconds of its first round (each pass run once: where torch.compile compiles), a part of
    the whole warm-up (the rest captures); the sampler's block events carry it as warm_up_compile_s."""
    model = make_fast(random_model(CFG, device="cuda", dtype=torch.bfloat16, std=0.05), attention="sdpa")
    session = StreamSession(model, height=128, width=192, seed=3, runner=GraphRunner(model))
    start = time.perf_counter()
    first = warm_up(session)
    assert 0 < first < time.perf_counter() - start and len(session.runner.graphs) == 6


def test_an_fp16_model_takes_an_attention_with_float16_kernels():
    """Precision fp16 with attention `auto` (run 96: the fa3-fwd wheel has no float16 kernels, and the fp16 model
    failed in it inside ComfyUI)."""
    model = random_model(CFG, device="cuda", dtype=torch.float16, std=0.05)
    eager, _ = stream(model, None)
    fast, session = stream(make_fast(model, attention="auto"), GraphRunner, prepare=True)
    assert model.attention_backend != "flash-attn 3" or not _lacks_fp16(_flash_module("flash-attn 3"))
    assert len(session.runner.graphs) == 6
    assert rel(fast, eager) < 2e-2


CFG_V2 = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=4, text_dim=64, in_dim=48, out_dim=48)


def shots(model, runner=None, blocks=6):
    """LongLive 2.0 image-to-video with a cut at block 2, past the window (32 frames)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    image = torch.randn(1, 1, 48, 8, 12, device="cuda", generator=gen)
    noise = torch.randn(1, 8 * blocks, 48, 8, 12, device="cuda", generator=gen)
    texts = [torch.randn(1, 512, CFG_V2.text_dim, device="cuda", generator=gen) for _ in range(2)]
    session = ShotSession(model, batch=1, latent_hw=(8, 12), image=image, noise=lambda k: noise[:, 8 * k:8 * k + 8],
                          runner=runner)
    warm_up(session)
    return torch.cat([session.make_block(texts[k >= 2], cut=k == 2) for k in range(blocks)], 1).float()


def test_graphs_replay_the_eager_v2_video():
    """LongLive 2.0 on the compiled fast path with the best attention, its warm-up passes (4 steps and the clean pass
    of a steady block, the image's first block's 4 steps) captured before the first block: the eager video, the
    image's first block (a modulation a frame) and a cut included."""
    model = random_model(CFG_V2, device="cuda", dtype=torch.bfloat16, std=0.05)
    eager = shots(model)
    fast = make_fast(model, attention="auto")
    runner = GraphRunner(fast)
    ours = shots(fast, runner)
    assert len(runner.graphs) == 9 and not runner.failed
    assert rel(ours, eager) < 2e-2


@pytest.mark.parametrize("attention", ["sdpa", "flash-attn 3 fp8"])
def test_relative_positions_under_graphs_follow_the_eager_path(attention):
    """The sinks are moved outside the captured passes, once a block: graphs replay the eager relative-mode video
    (FP8 attention: its FP8 cache holds the moved sinks quantized)."""
    model = random_model(CFG, device="cuda", dtype=torch.bfloat16, std=0.05)
    try:
        fast_model = make_fast(model, attention=attention)
    except BackendUnavailableError as err:
        pytest.skip(str(err))
    eager, _ = stream(model, None, blocks=24, switches=(8, 18), position_mode="relative")
    fast, session = stream(fast_model, GraphRunner, blocks=24, switches=(8, 18), prepare=True, position_mode="relative")
    assert len(session.runner.graphs) == 6 and session.cache.sinks_at == 3 * 24 - 12
    assert rel(fast, eager) < (0.2 if attention.endswith("fp8") else 2e-2)


@pytest.mark.parametrize("precision", ["int8 dynamic", "int8 weight-only"])
def test_int8_models_run_the_fast_path_under_graphs_as_the_loader_sets_them_up(precision):
    model = random_model(CFG, device="cuda", dtype=torch.bfloat16, std=0.05)
    resolve_precision(precision, model.device).apply(model)
    eager, _ = stream(model, None)
    fast, session = stream(make_fast(model, attention="sdpa"), GraphRunner, prepare=True)
    assert len(session.runner.graphs) == 6
    assert rel(fast, eager) < 3e-2


def test_flash_text_attention_reads_the_prompt_and_merges_the_padding_key():
    model = random_model(CFG, device="cuda", dtype=torch.bfloat16, std=0.05)
    model.set_attention("auto")
    if model.attention_backend == "sdpa":
        pytest.skip("no flash backend installed")
    _, session = stream(model, None, blocks=1, switches=())
    assert session.text.used.tolist() == [30]
    q = torch.randn(1, 700, CFG.num_heads, CFG.head_dim, device="cuda", dtype=torch.bfloat16)
    text = session.text.layer(2)
    full = cross_attention("sdpa", torch.device("cuda"))(q, text)
    prefix = cross_attention("auto", torch.device("cuda"), fast=True)
    assert rel(prefix(q, text).float(), full.float()) < 1e-2


def test_fp8_self_attention_follows_the_bf16_fast_path():
    model = make_fast(random_model(CFG, device="cuda", dtype=torch.bfloat16, std=0.05), attention="auto")
    if model.attention_backend != "flash-attn 3":
        pytest.skip("FP8 attention needs FlashAttention-3 on a Hopper GPU")
    bf16, _ = stream(model, GraphRunner, prepare=True)
    assert model.set_attention("flash-attn 3 fp8", fast=True) == "flash-attn 3 fp8"
    fp8, session = stream(model, GraphRunner, prepare=True)
    assert torch.isfinite(fp8).all() and len(session.runner.graphs) == 6
    assert 0 < rel(fp8, bf16) < 0.2


def test_gelu_rowwise_fp8_kernel_equals_the_torch_ops():
    from longlive_core.quant.linears import gelu_rowwise_fp8

    gen = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(300, 8960, device="cuda", generator=gen).to(torch.bfloat16) * 3
    x[7] = 0  # a zero row (a padded token): scale at its floor, values 0
    x[8] = -x[8].abs()  # rows whose largest |gelu| lies at a negative h: the kernel's second look
    x[9] = x[9].clamp(max=0.2)
    values, scales = gelu_rowwise_fp8(x)
    ref_values, ref_scales = gelu_rowwise_fp8(x.cpu())
    torch.testing.assert_close(scales.cpu(), ref_scales, rtol=1e-2, atol=1e-12)
    same = (values.cpu().float() == ref_values.float()).float().mean().item()
    assert same > 0.99 and torch.isfinite(values.float()).all()
    assert rel((values.float() * scales).cpu(), ref_values.float() * ref_scales) < 1e-2


@pytest.mark.parametrize("backend", ["flash-attn 3", "flash-attn 3 fp8"])
@pytest.mark.parametrize("batch", [1, 2])
def test_attention_cut_into_whole_waves_equals_one_call(backend, batch):
    """4680 queries x 12 heads: 4224 queries in whole waves of the H100's 132 SMs, the rest with split keys,
    both written into one output (for batch 2, views strided over the samples); against FA3 over all
    queries at once."""
    from longlive_core.model.attention import resolve

    try:
        fa3 = pytest.importorskip("fa3_fwd_interface")
        _, attend = resolve(backend, "cuda", torch.cuda.get_device_capability()[0] == 9)
    except Exception as err:  # no FA3 or not Hopper
        pytest.skip(str(err))
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(batch, n, 12, 128, device="cuda", generator=gen).to(torch.bfloat16)
               for n in (4680, 9000, 9000))
    steps = torch.full((3, 12), 0.02, device="cuda")
    if backend.endswith("fp8"):
        k, v = ((t.float() / 0.02).to(torch.float8_e4m3fn) for t in (k, v))
        descale = [steps[i, None].expand(batch, -1).contiguous() for i in range(3)]
        ref = fa3.flash_attn_func((q.float() / 0.02).to(torch.float8_e4m3fn), k, v, q_descale=descale[0],
                                  k_descale=descale[1], v_descale=descale[2])
    else:
        ref = fa3.flash_attn_func(q, k, v)
    ref = ref[0] if isinstance(ref, tuple) else ref
    out = attend(q, k, v, steps)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    # FP8: the split parts quantize their probabilities against their own running maxima
    err = rel(out.float(), ref.float())
    assert err < (2e-2 if backend.endswith("fp8") else 2e-3), err


def random_vae(vae_class, **shape):
    """ComfyUI's Wan VAE module with random weights, in bf16 on the GPU."""
    torch.manual_seed(0)
    vae = vae_class(**shape).to("cuda", torch.bfloat16).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.copy_(torch.ones_like(p) if name.endswith("gamma") else torch.randn_like(p) / p[0].numel() ** 0.5)
    return vae


def plain_and_fast(vae, streams, z: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z decoded in chunks by streams[0] eagerly and by streams[1] with `fast` (compiled steady chunks, a graph)."""
    with torch.inference_mode():
        plain = torch.cat([streams[0].decode(vae, part) for part in z.split(chunk, dim=2)], 2)
        fast = torch.cat([streams[1].decode(vae, part, fast=True) for part in z.split(chunk, dim=2)], 2)
    return plain, fast


def test_compiled_vae_decode_replays_steady_chunks_from_a_cuda_graph():
    """The decode node's `compile`: the first chunk eager, the next compiled, then captured and replayed; the
    frames follow the eager chunked decode (bf16 rounding, cuDNN's algorithms). Needs ComfyUI's comfy package."""
    from longlive_core.vae.stream import DecodeStream

    wan_vae = pytest.importorskip("comfy.ldm.wan.vae")
    vae = random_vae(wan_vae.WanVAE, dim=32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                     temperal_downsample=[False, True, True])
    z = torch.randn(1, 16, 15, 16, 24, device="cuda", dtype=torch.bfloat16)
    streams = [DecodeStream(wan_vae.count_conv3d(vae.decoder)) for _ in range(2)]
    plain, fast = plain_and_fast(vae, streams, z, 3)
    assert streams[1].has_graph and not streams[0].has_graph
    streams[1].close()
    assert not streams[1].has_graph
    assert fast.shape == plain.shape == (1, 3, 57, 128, 192)
    assert rel(fast.float(), plain.float()) < 2e-2


def test_a_decode_warmed_up_before_its_first_block_compiles_nothing_and_replays_a_graph():
    """The sampler's warm-up on the GPU (bf16, channels-last, cuDNN's finds): afterwards the video's stream compiles
    nothing at its steady chunks (dynamo's count), captures and replays its graph, and follows the eager decode."""
    from torch._dynamo.utils import counters

    from longlive_core.vae.stream import DecodeStream

    wan_vae = pytest.importorskip("comfy.ldm.wan.vae")
    vae = random_vae(wan_vae.WanVAE, dim=32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                     temperal_downsample=[False, True, True])
    z = torch.randn(1, 16, 12, 16, 20, device="cuda", dtype=torch.bfloat16)  # 16 x 20: no other test's
    streams = [DecodeStream(wan_vae.count_conv3d(vae.decoder)) for _ in range(2)]
    before = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        streams[1].warm_up(vae, torch.zeros_like(z[:, :, :3]))
    warmed = counters["stats"]["unique_graphs"]
    plain, fast = plain_and_fast(vae, streams, z, 3)
    assert warmed > before and counters["stats"]["unique_graphs"] == warmed and streams[1].has_graph
    assert rel(fast.float(), plain.float()) < 2e-2


def test_an_eager_decode_readied_before_its_first_block_gives_the_frames_of_one_not_readied():
    """compile_vae off on a GPU: the warm-up decodes a scratch video eagerly (cuDNN's finds for the video's chunks,
    so no block waits for them: 2.4 s in run 120), marks the decoder ready for that shape and mode only, and leaves
    the video's own stream as it was: its frames are those of a stream that was not readied."""
    from longlive_core.vae.stream import DecodeStream

    wan_vae = pytest.importorskip("comfy.ldm.wan.vae")
    vae = random_vae(wan_vae.WanVAE, dim=32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                     temperal_downsample=[False, True, True])
    z = torch.randn(1, 16, 9, 16, 28, device="cuda", dtype=torch.bfloat16)  # 16 x 28: no other test's
    readied, plain = (DecodeStream(wan_vae.count_conv3d(vae.decoder)) for _ in range(2))
    with torch.inference_mode():
        readied.warm_up(vae, torch.zeros_like(z[:, :, :3]), fast=False)
        assert readied.cache == [None] * len(readied.cache)
        assert readied.is_warm(vae, (1, 16, 3, 16, 28), fast=False)
        assert not readied.is_warm(vae, (1, 16, 3, 16, 28), fast=True)
        got = torch.cat([readied.decode(vae, part) for part in z.split(3, dim=2)], 2)
        want = torch.cat([plain.decode(vae, part) for part in z.split(3, dim=2)], 2)
    assert rel(got.float(), want.float()) < 1e-3  # the same plans; cuDNN's may differ in their last bits


def test_compiled_wan22_decode_follows_the_eager_decode():
    """LongLive 2.0's decoder with `fast`: its steady chunks compiled (steady_decode22) and replayed from a CUDA graph;
    the frames follow the eager decode (bf16 rounding, cuDNN's algorithms)."""
    from longlive_core.vae.stream22 import Wan22DecodeStream

    wan22 = pytest.importorskip("comfy.ldm.wan.vae2_2")
    vae = random_vae(wan22.WanVAE, dim=32, dec_dim=32, z_dim=48)
    z = torch.randn(1, 48, 12, 8, 12, device="cuda", dtype=torch.bfloat16)
    streams = [Wan22DecodeStream(wan22.count_conv3d(vae.decoder)) for _ in range(2)]
    plain, fast = plain_and_fast(vae, streams, z, 4)
    assert streams[1].has_graph and fast.shape == plain.shape == (1, 3, 45, 128, 192)
    assert rel(fast.float(), plain.float()) < 2e-2


def test_a_decode_beside_the_generating_stream_gives_the_frames_of_a_plain_one():
    """The sampler's decode lane (SideStream): each chunk decoded on a stream of its own from a copy of the latents
    taken as it began, while the current stream writes the next chunk into the same buffer (as the next block's
    generation rewrites its graph's output) and finally zeroes it; the frames are those of a plain decode."""
    from longlive_core.vae.stream import DecodeStream

    wan_vae = pytest.importorskip("comfy.ldm.wan.vae")
    vae = random_vae(wan_vae.WanVAE, dim=32, z_dim=16)
    z = torch.randn(1, 16, 9, 16, 24, device="cuda", dtype=torch.bfloat16)
    plain, beside = (DecodeStream(wan_vae.count_conv3d(vae.decoder)) for _ in range(2))
    lane, buffer, out, done = SideStream(), torch.empty_like(z[:, :, :3]), [], []
    with torch.inference_mode():
        want = torch.cat([plain.decode(vae, part) for part in z.split(3, dim=2)], 2)
        for part in z.split(3, dim=2):
            buffer.copy_(part)
            with lane.beside(buffer) as (latents,):
                out.append(beside.decode(vae, latents))
                done.append(torch.cuda.Event())
                done[-1].record()
        buffer.zero_()
    for event in done:
        event.synchronize()
    assert rel(torch.cat(out, 2).float(), want.float()) < 1e-3


def test_weights_freed_while_a_side_stream_reads_them_keep_their_memory_until_it_is_done():
    """SideStream.beside's `reads`: a weight the side stream still has to read is freed by the host (as ComfyUI
    unloading the VAE between blocks) and a tensor of the same size is made at once on the current stream; the side
    stream's result is still the one computed from the weight."""
    lane, gen = SideStream(), torch.Generator(device="cuda").manual_seed(0)
    x, w = (torch.randn(4096, 4096, device="cuda", generator=gen) for _ in range(2))

    def work(a):  # long enough that the host frees `w` before the last product reads it
        y = a
        for _ in range(20):
            y = y @ a / 64
        return y @ w

    want = work(x)
    with lane.beside(x, reads=[w]) as (copy,):
        out = work(copy)
        done = torch.cuda.Event()
        done.record()
    del w
    torch.zeros(4096, 4096, device="cuda")  # would take the freed weight's memory at once
    done.synchronize()
    assert rel(out, want) < 1e-4


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_a_decode_continued_on_the_second_gpu_gives_the_frames_of_the_first():
    """A video's decode stream moved to cuda:1 half way (its cache with it), on a copy of the VAE there."""
    import copy

    from longlive_core.vae.stream import DecodeStream

    wan_vae = pytest.importorskip("comfy.ldm.wan.vae")
    vae = random_vae(wan_vae.WanVAE, dim=32, z_dim=16)
    other = copy.deepcopy(vae).to("cuda:1")
    z = torch.randn(1, 16, 9, 16, 24, device="cuda:0", dtype=torch.bfloat16)
    one, two = (DecodeStream(wan_vae.count_conv3d(vae.decoder)) for _ in range(2))
    with torch.inference_mode():
        want = torch.cat([one.decode(vae, part) for part in z.split(3, dim=2)], 2)
        first = two.decode(vae, z[:, :, :3])
        two.move_to(torch.device("cuda:1"))
        with torch.cuda.device(1):
            rest = [two.decode(other, part.to("cuda:1")) for part in z[:, :, 3:].split(3, dim=2)]
    got = torch.cat([first, *(r.to("cuda:0") for r in rest)], 2)
    assert rel(got.float(), want.float()) < 1e-2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_a_video_on_the_second_gpu_is_the_video_of_the_first(monkeypatch):
    """The loader's `device`: a model on cuda:1 runs its video there (its Triton kernels launched from that device, its
    CUDA graphs on its streams) and makes what the same model makes on cuda:0."""
    import copy

    from longlive_core import Prompt, RunHooks, Video, VideoSettings, hashed_embeds
    from longlive_core.kernels import launch

    launches, real = [], launch.launch

    def spy(kernel, grid, *args, **meta):  # Triton launches on the current device, whatever its tensors' device
        launches.append((torch.cuda.current_device(), args[0].device.index))
        return real(kernel, grid, *args, **meta)

    monkeypatch.setattr(launch, "launch", spy)
    model = random_model(CFG, device="cuda:0", dtype=torch.bfloat16, std=0.05)
    hooks = RunHooks(embed_text=lambda text: hashed_embeds(text, CFG.text_dim))
    videos = []
    for net in (model, copy.deepcopy(model).to("cuda:1")):
        video = Video.open(make_fast(net, attention="auto"), VideoSettings(("gpu",), 1, 192, 128, 12, 3, "recache", 3),
                           fast=True)
        video.schedule([Prompt(0, "a red fox"), Prompt(24, "a fox in the snow")], 45, hooks.embed_text)
        latents, _ = video.run(45, live=False, hooks=hooks)
        assert latents.device == net.device and video.describe()["device"] == str(net.device)
        videos.append(latents.to("cuda:0").float())
    assert rel(videos[1], videos[0]) < 1e-2
    assert {dev for _, dev in launches} == {0, 1} and all(current == dev for current, dev in launches)


def test_a_runs_decoder_readied_beside_its_blocks_starts_once_they_replay_graphs():
    """A run that is not live readies its decoder (compiled, cuDNN's finds) on a thread of its own beside its first
    blocks, started only once a block ran every pass from its CUDA graphs (a compiled call on the run's thread would
    wait for the readying's: they run one at a time, fast/compile.py), and decodes the blocks after it, in order:
    the frames of the eager decode of the video's latents. A prompt change meanwhile replays the steady recache's
    graph: it runs nothing eagerly either."""
    from longlive_core import Prompt, RunHooks, Video, VideoSettings, hashed_embeds
    from longlive_core.vae.stream import DecodeStream

    wan_vae = pytest.importorskip("comfy.ldm.wan.vae")
    vae = random_vae(wan_vae.WanVAE, dim=32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                     temperal_downsample=[False, True, True])
    model = make_fast(random_model(CFG, device="cuda", dtype=torch.bfloat16, std=0.05), attention="auto")
    video = Video.open(model, VideoSettings(("gpu",), 1, 160, 128, 12, 3, "recache", 3), fast=True)  # latents 16 x 20
    stream, started_at = DecodeStream(wan_vae.count_conv3d(vae.decoder)), []

    def raw(latents):
        return latents.transpose(1, 2).to(torch.bfloat16)

    def work():
        started_at.append(video.session.runner.eager_runs)
        with torch.inference_mode():
            stream.warm_up(vae, torch.zeros(1, 16, 3, 16, 20, device="cuda", dtype=torch.bfloat16))

    def decode(latents):
        with torch.inference_mode():
            images = stream.decode(vae, raw(latents), fast=True)
        return lambda: images.transpose(1, 2).flatten(0, 1)

    hooks = RunHooks(embed_text=lambda text: hashed_embeds(text, CFG.text_dim), decode=decode,
                     ready_decode=lambda: work)
    video.schedule([Prompt(0, "a red fox"), Prompt(18, "it runs into the woods")], 24, hooks.embed_text)
    latents, images = video.run(24, live=False, hooks=hooks)
    assert started_at == [video.session.runner.eager_runs] and started_at[0] > 0  # nothing ran eagerly after it
    assert video.stats.decoder_beside_s > 0
    with torch.inference_mode():
        plain = DecodeStream(wan_vae.count_conv3d(vae.decoder)).decode(vae, raw(latents), channels_last_3d=True)
    assert rel(images.float(), plain.transpose(1, 2).flatten(0, 1).float()) < 2e-2


def test_a_prompt_posted_while_a_live_block_runs_on_the_gpu_makes_that_block_again():
    """A live run launches a block's passes one at a time: a prompt posted while the GPU runs one (here after a
    0.3 s spin, posted 50 ms into it) cuts the block short before its next pass, and the block is made again under the
    new prompt: in a block that fills the window (frame 3) and in a steady one (12). The video is the one a schedule
    with those switches makes, and the blocks made again captured no graph that it did not."""
    import threading
    import time

    from longlive_core import PostedPrompt, Prompt, RunHooks, Video, VideoSettings, hashed_embeds

    model = make_fast(random_model(CFG, device="cuda", dtype=torch.bfloat16, std=0.05), attention="auto")
    texts = {3: "a fox in the snow", 12: "a fox asleep by a fire"}
    hooks = RunHooks(embed_text=lambda text: hashed_embeds(text, CFG.text_dim))
    scheduled = Video.open(model, VideoSettings(("gpu",), 1, 192, 128, 12, 3, "recache", 3), fast=True)
    scheduled.schedule([Prompt(0, "a red fox"), *(Prompt(f, t) for f, t in texts.items())], 18, hooks.embed_text)
    want, _ = scheduled.run(18, live=False, hooks=hooks)

    live = Video.open(model, VideoSettings(("gpu",), 1, 192, 128, 12, 3, "recache", 3, "paced"), fast=True)
    checks = []

    def check() -> None:  # before each pass
        frame = live.session.frame
        checks.append(frame)
        if frame in texts and checks.count(frame) == 2:  # the block's second pass is next: the GPU spins first
            torch.cuda._sleep(600_000_000)
            threading.Timer(0.05, live.post, [PostedPrompt(texts[frame], time.time())]).start()

    live.schedule([Prompt(0, "a red fox")], 18, hooks.embed_text)
    got, _ = live.run(18, live=True, hooks=dataclasses.replace(hooks, check=check))
    assert [s["frame"] for s in live.switches] == [3, 12]
    assert checks.count(3) == checks.count(12) == 2 + 4  # cut before its second pass, then made again
    assert live.graph_state() == scheduled.graph_state()
    assert rel(got.float(), want.float()) < 1e-2


def capture_child(allocator: str, *args: str, script: str = "capture_child.py") -> dict:
    """tests/capture_child.py (or another script here) in a process with the given CUDA allocator; it must end
    normally."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": f"backend:{allocator}"}
    child = pathlib.Path(__file__).with_name(script)
    done = subprocess.run([sys.executable, str(child), *args], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("allocator", ["native", "cudaMallocAsync"])
def test_graphs_with_the_triton_kernels_capture_under_either_allocator(allocator):
    """ComfyUI runs PyTorch with cudaMallocAsync by default: memory allocated during a capture is then a graph
    allocation that Triton's launcher refuses; the kernels launch on raw addresses while capturing."""
    result = capture_child(allocator)
    assert result["allocator"] == allocator
    assert result["graphs"] == 6 and result["failed"] is None
    assert result["rel"] < 2e-2 and result["finite"]
    assert result["head"] < 1e-2


@pytest.mark.parametrize("allocator", ["native", "cudaMallocAsync"])
def test_fp8_graphs_capture_under_either_allocator(allocator):
    """FP8 linears and the FP8 self-attention (the loader's fp8 and 'flash-attn 3 fp8') captured as under ComfyUI.
    Inside ComfyUI (cudaMallocAsync) the one-minute workflow in FP8 ran without graphs in run 83: `CUDA driver
    error: invalid argument`."""
    if not torch.cuda.get_device_capability() >= (9, 0):
        pytest.skip("FP8 attention needs a Hopper GPU")
    result = capture_child(allocator, "--fp8")
    assert result["failed"] is None and result["graphs"] == 6
    assert result["rel"] < 0.2 and result["finite"]


@pytest.mark.parametrize("allocator", ["native", "cudaMallocAsync"])
def test_cudnn_finds_of_a_first_decode_run_under_a_memory_bound(allocator):
    """cuDNN's benchmark finds try every plan whose workspace fits what the allocator offers (under cudaMallocAsync
    all free memory, mapped into its pool for each find: 139 GiB and 25 s for a fresh server's first decode, run
    104). There the stream bounds the process's memory fraction while its chunks may meet new convolutions and puts
    it back after each call, and the first video's peak stays within the bound; the native allocator (4.6 s,
    8.4 GiB) is left alone. The compiled stream's first two (eager) calls find nothing (cuDNN's heuristic plans, kept
    apart by the deterministic flag); its steady chunks find theirs.
    Needs ComfyUI's comfy package."""
    pytest.importorskip("comfy.ldm.wan.vae")
    result = capture_child(allocator, script="finds_child.py")
    assert result["allocator"] == allocator and result["graph"]
    bounded = allocator == "cudaMallocAsync"
    assert result["seen"] == [pytest.approx(result["bound"], rel=1e-3) if bounded else 1.0] * 2  # the first call
    assert result["after"] == [1.0] * 5
    assert result["benchmark"] == [False, False] and result["steady_flags"] == [[True, False]]
    assert result["rise_gib"] <= result["floor_gib"] + 1 / 16  # the pool and PyTorch count apart (36 MiB, run 110)


def test_a_live_sessions_decode_a_latent_frame_a_call_fits_in_the_finds_bound_of_its_blocks():
    """A live session decodes a latent frame a call: bounded on one frame's pixels, the compiled steady chunk ran out
    of memory in the sampler's warm-up (run 128, the shipped live workflow). Full size under cudaMallocAsync: the
    warm-up and three blocks go through, bounded on a block's pixels."""
    result = capture_child("cudaMallocAsync", "live", script="finds_child.py")
    assert result["allocator"] == "cudaMallocAsync"
    assert result["first_seen"] == pytest.approx(result["bound"], rel=1e-2)
    assert result["frames"] == [1] + [4] * 8 and result["rise_gib"] < 16  # a video's first latent frame: 1 frame


def test_the_wan22_decode_uses_cudnn_heuristic_plans_and_bounds_nothing():
    """The Wan 2.2 stream finds no plans (at 1280x704 timed plans made no chunk faster and took 117 GiB under
    cudaMallocAsync, run 122): benchmark mode off in every call, eager and compiled, and no memory bound set."""
    pytest.importorskip("comfy.ldm.wan.vae2_2")
    result = capture_child("cudaMallocAsync", "wan2.2", script="finds_child.py")
    assert result["allocator"] == "cudaMallocAsync"
    assert result["seen"] == [1.0, 1.0] and result["after"] == [1.0] * 5
    assert result["benchmark"] == [False, False] and result["steady_flags"] == [[False, False]]


def test_a_capture_runs_with_the_cycle_collector_off_and_puts_it_back():
    """No collection inside a capture (it could free tensors there), and none forced before each one either (a full
    collection of ComfyUI's heap takes 0.3-0.5 s, six a session)."""
    import gc

    from longlive_core.fast.graphs import capture

    x, seen = torch.ones(4, device="cuda"), []

    def twice():
        seen.append(gc.isenabled())
        return x * 2

    graph, out = capture(twice, x.device, rehearse=True)
    x.fill_(3)
    graph.replay()
    assert seen == [False, False] and gc.isenabled() and out.tolist() == [6.0] * 4


@pytest.mark.parametrize("allocator", ["native", "cudaMallocAsync"])
def test_a_cycle_made_inside_a_capture_is_collected_before_it_ends(allocator):
    """A tensor the capture allocated that only a reference cycle holds: collected inside the capture, so that a
    collection between the capture and the graph's first run frees nothing of the graph's (under cudaMallocAsync
    that would abort the process)."""
    result = capture_child(allocator, script="cycle_child.py")
    assert result == {"allocator": allocator, "out": [6.0] * 4, "collector_on": True}


@pytest.mark.parametrize("allocator", ["native", "cudaMallocAsync"])
def test_a_capture_that_fails_leaves_the_process_and_the_session_usable(allocator):
    """A kernel raising inside the capture (as a bug would): the session runs its passes without graphs and
    makes the eager path's video; the process ends normally (under cudaMallocAsync, freeing what the failed capture
    allocated before its graph ran would abort it) and later captures still work."""
    result = capture_child(allocator, "--fail-capture")
    assert result["graphs"] == 0 and "injected capture failure" in result["failed"]
    assert "(raised at capture_child.py:" in result["failed"]  # the failing function's frame, innermost first
    assert result["rel"] < 2e-2 and result["finite"]
    assert result["head"] < 1e-2


@pytest.mark.parametrize("allocator", ["native", "cudaMallocAsync"])
def test_a_capture_that_cuda_invalidates_leaves_the_process_and_the_session_usable(allocator):
    """A forbidden call inside the capture (a synchronize) invalidates it: no graph can run, so under cudaMallocAsync
    what it allocated is kept for the life of the process and no further capture is tried there."""
    result = capture_child(allocator, "--break-capture")
    assert result["graphs"] == 0 and result["failed"]
    assert result["rel"] < 2e-2 and result["finite"]
    if allocator == "cudaMallocAsync":
        assert "no further capture" in result["head"]
    else:
        assert result["head"] < 1e-2


def test_a_compile_that_fails_falls_back_to_the_eager_stages():
    """inductor's own test switch makes every compile raise: warm_up logs it, drops the compiled stages and the
    Triton kernels, and captures the eager stages."""
    model = random_model(CFG, device="cuda", dtype=torch.bfloat16, std=0.05)
    eager, _ = stream(model, None)
    fast_model = make_fast(model, attention="sdpa", compile_options={"_raise_error_for_testing": True})
    fast, session = stream(fast_model, GraphRunner, prepare=True)
    assert not fast_model.fused and fast_model.stages == Stages.of(Block)
    assert len(session.runner.graphs) == 6
    assert rel(fast, eager) < 1e-2


# --- The engine's umt5 encoder from CUDA graphs (text/umt5.py) ---------------------------------------------------


def test_umt5_from_cuda_graphs_encodes_as_the_eager_encoder_in_every_bucket():
    """GraphedUmt5: each text padded to its bucket, replayed from the bucket's graph (the first call captures the
    warm buckets, a longer text its own; past the largest bucket it runs eagerly), gives the eager encoder's
    embeddings of the text alone, with an encoder made for each call on its scratch (as the schedule calls it); e4m3
    weights are widened to bfloat16 exactly."""
    from longlive_core import GraphedUmt5, Umt5Encoder
    from longlive_core.kernels.ops import widen_e4m3
    from test_text import tiny_state

    state = {k: v.cuda() for k, v in tiny_state(layers=3, width=64, heads=4, ff=160, std=0.05).items()}
    weight = state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"]
    assert torch.equal(widen_e4m3(weight, torch.empty(weight.numel() + 7, dtype=torch.bfloat16, device="cuda")),
                       weight.to(torch.bfloat16))
    eager = Umt5Encoder(state)
    encoder = Umt5Encoder(state)
    graphed = GraphedUmt5(encoder.scratch)
    gen = torch.Generator(device="cuda").manual_seed(1)
    for tokens, buckets in [(6, [32, 64, 128]), (40, [32, 64, 128]), (50, [32, 64, 128]), (200, [32, 64, 128, 256]),
                            (600, [32, 64, 128, 256])]:
        ids = torch.randint(2, 32, (1, tokens), device="cuda", generator=gen)
        want = eager(ids)
        got = graphed(ids, encoder if tokens == 6 else Umt5Encoder(state, graphed.scratch))  # as the schedule calls
        assert sorted(graphed.graphs) == buckets and graphed.failed is None
        assert got.shape == want.shape and (got - want).norm() <= 1e-5 * want.norm()
    state["encoder.final_layer_norm.weight"].mul_(2)  # changed in place: the graphs read the weights as they are
    ids = torch.randint(2, 32, (1, 20), device="cuda", generator=gen)
    got, want = graphed(ids, encoder), eager(ids)
    assert (got - want).norm() <= 1e-5 * want.norm()
    with pytest.raises(ValueError, match="widens its weights elsewhere"):
        graphed(ids, Umt5Encoder(state))
    held = weakref.ref(weight)
    del state, eager, encoder, weight
    gc.collect()  # the refused call's traceback
    assert held() is None and graphed.graphs  # the graphs hold no weights (ComfyUI frees those it unloads)


@pytest.mark.parametrize("allocator", ["native", "cudaMallocAsync"])
def test_the_schedule_encodes_with_the_engines_umt5_on_comfyuis_weights_and_falls_back_to_comfyuis(allocator):
    """tests/umt5_child.py: ComfyUI on the GPU, the schedule's encode of plain texts by the engine's umt5 (ComfyUI's
    T5 module never runs; graphs captured once and kept) and of a weighted text by ComfyUI's, each to 2e-5 of
    ComfyUI's embeddings of the padded text; the text encoder unloaded and loaded elsewhere gets new graphs; an
    out-of-memory leaves that one text to ComfyUI, any other failure every text after it."""
    result = capture_child(allocator, script="umt5_child.py")
    steps = result["steps"]
    assert result["allocator"] == allocator and result["device"].startswith("cuda")
    for name, s in steps.items():
        assert s["shape_equal"] and s["rel"] < 2e-5, (name, s)
        assert s["weights_on"].startswith("cuda"), (name, s)
    engine = ["plain", "plain_again", "long", "reloaded", "after_out_of_memory"]
    comfyui = ["weighted", "out_of_memory", "failed", "after_failure"]
    assert [name for name, s in steps.items() if s["comfyui_runs"] == 0] == engine
    assert all(steps[name]["comfyui_runs"] == 1 for name in comfyui)
    assert steps["plain"]["buckets"] == [32, 64, 128] and steps["long"]["buckets"] == [32, 64, 128, 256]
    assert len({steps[name]["graphed"] for name in ["plain", "plain_again", "long", "weighted"]}) == 1
    assert steps["reloaded"]["addresses"] != steps["plain"]["addresses"]
    assert steps["reloaded"]["graphed"] not in (None, steps["plain"]["graphed"])
    assert steps["reloaded"]["buckets"] == [32, 64, 128] and steps["reloaded"]["kept_addresses_current"]
    assert steps["out_of_memory"]["failed"] is None and steps["after_out_of_memory"]["failed"] is None
    assert steps["failed"]["failed"] == steps["after_failure"]["failed"] == "RuntimeError: a bug (a test's)"
