"""The Triton kernels (kernels/ops.py, vae/head.py) and the fused block (model/fused.py) against the eager Block
expressions they replace: on a CUDA GPU, or
on the CPU in Triton's interpreter (conftest sets TRITON_INTERPRET=1 where there is no GPU). The
interpreter rounds to bfloat16 by truncation, so on the CPU 16-bit rounding is checked in float16."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from longlive_core.errors import BackendUnavailableError
from longlive_core.fast.setup import make_fast
from longlive_core.kernels import ops as kernels
from longlive_core.model.attention import cross_attention
from longlive_core.model.cache import TextCache
from longlive_core.model.config import WanConfig
from longlive_core.model.fused import FusedBlock
from longlive_core.model.wan import Block, RopeTable, gated_add
from longlive_core.quant.fp8 import rowwise_fp8, to_fp8
from longlive_core.quant.precision import PRECISIONS, plain
from longlive_core.tools.synthetic import TINY, random_model
from longlive_core.vae.head import causal_conv3d_narrow

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HALF = torch.bfloat16 if DEVICE == "cuda" else torch.float16
CFG = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=1, text_dim=64)
WIDE = WanConfig(dim=3072, ffn_dim=512, num_heads=24, num_layers=1, text_dim=64)  # LongLive 2.0's rows and heads
B, S, SLOTS = 2, 24, 40


def blocks(dtype, seed=0, cfg=CFG):
    torch.manual_seed(seed)
    eager = Block(cfg)
    for p in eager.parameters():
        p.data.normal_(0, 0.5)
    eager = eager.to(DEVICE, dtype)
    return eager, kernels_only(FusedBlock(eager, plain(dtype)))


def kernels_only(fused: FusedBlock) -> FusedBlock:
    """The FFN as the eager block runs it (its GELU as a GEMM epilogue rounds differently: test_fast checks it)."""
    fused.gelu_epilogue = False
    return fused


def inputs(dtype, frames=0, cfg=CFG):
    """frames: a modulation row a frame (image-to-video's first block), in that many frames; 0: a row a sample."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, S, cfg.dim, generator=gen).to(DEVICE, dtype)
    mod = torch.randn(B, *([frames] if frames else []), 6, cfg.dim, generator=gen).to(DEVICE)
    y = torch.randn(B, S, cfg.num_heads, cfg.head_dim, generator=gen).to(DEVICE, dtype)
    cos, sin = RopeTable(cfg.head_dim, DEVICE).cos_sin(3, 2, 3, 4)  # 2 frames of 3 x 4 tokens
    index = torch.randperm(SLOTS, generator=gen)[:S].to(DEVICE)
    return x, mod, y, cos, sin, index


def flatten(x_carry):
    x, (y, gate) = x_carry
    return x, y, gate


def steps_apart(a, b, dtype, noise=1e-6):
    """max |a - b| in rounding steps of dtype at b's magnitude, after forgiving float32 noise (by default 1e-6 of
    the largest value: sums in another order, where a result cancels out)."""
    a, b = a.float(), b.float()
    noise = noise * b.abs().max()
    step = b.abs().clamp(min=torch.finfo(dtype).tiny) * torch.finfo(dtype).eps
    return ((a - b).abs() - noise).clamp(min=0).div(step).max().item()


@pytest.mark.parametrize("cfg", [CFG, pytest.param(WIDE, marks=pytest.mark.skipif(
    DEVICE == "cpu", reason="Triton's interpreter at dim 3072: GPU only"))], ids=["dim 256", "dim 3072"])
@pytest.mark.parametrize("frames", [0, 2], ids=["a modulation a sample", "a modulation a frame"])
@pytest.mark.parametrize("dtype", [torch.float32, HALF])
def test_fused_stages_compute_what_the_eager_block_computes(dtype, frames, cfg):
    """Also at LongLive 2.0's width (3072: rows of 3072 in the norms, 24 heads in the RoPE and q/k norms)."""
    eager, fused = blocks(dtype, cfg=cfg)
    x, mod, y, cos, sin, index = inputs(dtype, frames, cfg)
    caches = [torch.zeros(B, SLOTS, cfg.num_heads, cfg.head_dim, device=DEVICE, dtype=dtype) for _ in range(4)]
    carry = (y.flatten(2), mod[..., 5:6, :] * 0.3)  # a previous layer's FFN output and gate
    with torch.no_grad():
        outs = [*eager.self_qkv(x, carry, mod, cos, sin, index, *caches[:2]), caches[0], caches[1],
                eager.self_out_cross_q(x, y, mod)[0], eager.cross_out_ffn(x, y, mod)[0]]
        got = [*fused.self_qkv(x, carry, mod, cos, sin, index, *caches[2:]), caches[2], caches[3],
               fused.self_out_cross_q(x, y, mod)[0], gated_add(*flatten(fused.cross_out_ffn(x, y, mod)))]
    # (the cross-attention's q: test_text_attention_kernel_is_the_normed_q_attending_to_every_key)
    names = ("x with the carry", "q", "cache k", "cache v", "x after self-attention", "x after ffn")
    for name, a, b in zip(names, got, outs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if dtype == torch.float32:  # sums in another order only (rows of 3072: 1e-6 of the largest value, 8 steps)
            assert steps_apart(a, b, dtype, noise=1e-6 * cfg.dim / CFG.dim) == 0, name
        else:  # a value next to a rounding boundary may round the other way (about 0.1% of them)
            assert (a != b).float().mean() < 0.01, name
            assert (a.float() - b.float()).abs().max() <= torch.finfo(dtype).eps * b.float().abs().max(), name
    assert caches[2].abs().amax((0, 2, 3)).gt(0).sum() == S  # exactly the indexed slots were written


def text_cache(dtype, used=(5, 70, 80), length=80):
    """A layer's TextCache whose keys after each sample's prompt are its padding pair (80 keys: two tiles
    of the kernel, the second partly read; the last sample has no padding)."""
    gen = torch.Generator().manual_seed(2)
    text = TextCache.allocate(1, len(used), length, CFG.num_heads, CFG.head_dim, DEVICE, dtype).layer(0)
    embeds = torch.ones(len(used), length, 1, device=DEVICE)
    for b, n in enumerate(used):
        embeds[b, n:] = 0
        text.k[b], text.v[b] = (torch.randn(length, CFG.num_heads, CFG.head_dim, generator=gen).to(DEVICE, dtype)
                                for _ in range(2))
    pad_row = text.set_used(embeds)
    for b, n in enumerate(used):
        text.k[b, n:], text.v[b, n:] = text.k[b, pad_row[b]], text.v[b, pad_row[b]]
        text.pad_k[b], text.pad_v[b] = text.k[b, pad_row[b]], text.v[b, pad_row[b]]
    return text


@pytest.mark.parametrize("dtype", [torch.float32, HALF])
def test_text_attention_kernel_is_the_normed_q_attending_to_every_key(dtype):
    """The prompt's keys read in tiles, the padding key counted in closed form, q's RMSNorm inside."""
    eager, fused = blocks(dtype)
    x, mod, y, *_ = inputs(dtype)
    text = text_cache(dtype)
    x, mod, y = x[:1].expand(3, -1, -1), mod[:1].expand(3, -1, -1), y[:1].expand(3, -1, -1, -1)
    sdpa = cross_attention("sdpa", torch.device(DEVICE))
    with torch.no_grad():
        want = eager.cross(eager.self_out_cross_q(x, y, mod)[1], text, sdpa)
        got = fused.cross(fused.self_out_cross_q(x, y, mod)[1], text)
        unpadded = fused.cross(fused.self_out_cross_q(x, y, mod)[1], dataclasses.replace(
            text, log_pad=torch.full_like(text.log_pad, -torch.inf)))
    assert got.shape == want.shape and got.dtype == want.dtype
    if dtype == torch.float32:
        assert steps_apart(got, want, dtype) == 0
    else:  # the weights round to 16 bits before they meet v (as in flash attention): errors of v's magnitude
        assert (got.float() - want.float()).abs().max() <= 2 * torch.finfo(dtype).eps * want.float().abs().max()
    assert (unpadded - got)[:2].abs().max() > 0.05 and torch.equal(unpadded[2], got[2])  # the padding counts


def test_fp8_cache_holds_what_the_eager_write_holds():
    """k and v in the FP8 cache, and q handed to the FP8 attention already quantized, as the eager path quantizes."""
    eager, fused = blocks(HALF)
    steps = torch.tensor([[0.02, 0.03], [0.01, 0.04], [0.05, 0.02]], device=DEVICE)
    for b in (eager, fused):
        b.self_attn.fp8_scales = steps
    x, mod, _, cos, sin, index = inputs(HALF)
    caches = [torch.zeros(B, SLOTS, CFG.num_heads, CFG.head_dim, device=DEVICE, dtype=torch.float8_e4m3fn)
              for _ in range(4)]
    with torch.no_grad():
        q = to_fp8(eager.self_qkv(x, None, mod, cos, sin, index, *caches[:2])[1], steps[0])  # as the attention does
        fused_q = fused.self_qkv(x, None, mod, cos, sin, index, *caches[2:])[1]
    assert fused_q.dtype == torch.float8_e4m3fn
    assert caches[0].float().abs().max() == 448 and caches[1].float().abs().max() == 448  # some values clamp
    for a, b in ((caches[2], caches[0]), (caches[3], caches[1]), (fused_q, q)):
        assert (a.float() != b.float()).float().mean() < 0.05
        if DEVICE == "cuda":  # the interpreter's FP8 conversion rounds its own way (up to a binade off)
            assert steps_apart(a, b, torch.float8_e4m3fn) <= 1.01


def test_norm_kernel_adds_any_residual_and_broadcasts_one_sample_vectors():
    """add_norm_affine(x, x): the residual is still added; a [1, 1, N] scale/shift serves every sample."""
    from longlive_core.model.wan import layer_norm

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 64, generator=gen).to(DEVICE)
    a, b = (torch.randn(1, 1, 64, generator=gen).to(DEVICE) for _ in range(2))
    new_x, h = kernels.add_norm_affine(x, x, None, a, b, 1e-6, True)
    torch.testing.assert_close(new_x, 2 * x)
    torch.testing.assert_close(h, layer_norm(2 * x, 1e-6) * (1 + a) + b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="a per-channel vector of batch 2 for activations of batch 3"):
        kernels.norm_affine(x, a.expand(2, 1, 64).contiguous(), b, 1e-6, True)
    per_row = torch.randn(1, 5, 1, 64, generator=gen).to(DEVICE)  # one frame a row, beside a one-frame vector
    torch.testing.assert_close(kernels.norm_affine(x, a.view(1, 1, 1, 64), per_row, 1e-6, True),
                               layer_norm(x, 1e-6) * (1 + a) + per_row.squeeze(2), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(\[2, 3\] frames\) for 5 rows a sample; they must share one frame count"):
        kernels.norm_affine(x, a.expand(1, 2, 1, 64), b.expand(1, 3, 1, 64), 1e-6, True)


@pytest.mark.parametrize("residual", [False, True])
def test_norm_kernel_quantizes_its_rows_as_the_fp8_linear_would(residual):
    """For an FP8 linear the norm kernel hands over e4m3 rows and their scales: those of rowwise_fp8 of its 16-bit
    output."""
    x, mod, y, *_ = inputs(HALF)
    extra = (y.flatten(2), mod[:, 2:3]) if residual else None
    new_x, h = kernels.norm(x, extra, mod[:, 1:2], mod[:, 0:1], 1e-6, True)
    same_x, (values, scales) = kernels.norm(x, extra, mod[:, 1:2], mod[:, 0:1], 1e-6, True, fp8=True)
    want_values, want_scales = rowwise_fp8(h.reshape(-1, CFG.dim))
    assert torch.equal(same_x, new_x) and values.dtype == torch.float8_e4m3fn
    assert torch.equal(scales, want_scales)  # the same 16-bit rows, the same max
    if DEVICE == "cuda":
        assert torch.equal(values.float(), want_values.float())
    else:  # the interpreter's FP8 conversion rounds its own way (up to a binade off)
        assert (values.float() != want_values.float()).float().mean() < 0.05
        assert rel_err(values.float() * scales, h.reshape(-1, CFG.dim).float()) < 0.1


@pytest.mark.skipif(DEVICE != "cuda", reason="the interpreter's FP8 rounding differs from torch's (the norm kernel's "
                                              "quantization is checked on the CPU above)")
def test_fp8_block_on_the_fused_path_computes_what_the_eager_fp8_block_computes():
    fp8 = PRECISIONS["fp8"]
    torch.manual_seed(0)
    eager = Block(CFG)
    for p in eager.parameters():
        p.data.normal_(0, 0.5)
    eager = eager.to(DEVICE, torch.bfloat16)
    for attn in (eager.self_attn, eager.cross_attn):
        attn.q, attn.k, attn.v, attn.o = (fp8.linear(m) for m in (attn.q, attn.k, attn.v, attn.o))
    eager.ffn[0], eager.ffn[2] = fp8.linear(eager.ffn[0]), fp8.linear(eager.ffn[2])
    fused = FusedBlock(eager, fp8)
    x, mod, y, cos, sin, index = inputs(torch.bfloat16)
    caches = [torch.zeros(B, SLOTS, CFG.num_heads, CFG.head_dim, device=DEVICE, dtype=torch.bfloat16) for _ in range(4)]
    with torch.no_grad():
        want = [eager.self_qkv(x, None, mod, cos, sin, index, *caches[:2])[1], eager.self_out_cross_q(x, y, mod)[1],
                eager.cross_out_ffn(x, y, mod)[0]]
        got = [fused.self_qkv(x, None, mod, cos, sin, index, *caches[2:])[1], fused.self_out_cross_q(x, y, mod)[1],
               gated_add(*flatten(fused.cross_out_ffn(x, y, mod)))]
    got[1] = fused.cross_attn.split(fused.cross_attn.norm_q(got[1]))  # the fused path leaves q's norm to attention
    for name, a, b in zip(("q", "cross q", "x after ffn"), got, want, strict=True):
        assert rel_err(a, b) < 1e-2, name


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_make_fast_fuses_the_blocks_where_triton_runs_and_keeps_the_video(prompt):
    from test_fast import video

    model = random_model(TINY, seed=2, device=DEVICE, dtype=torch.float32, std=0.3)
    prompt = prompt.to(DEVICE)
    eager = video(model, prompt)
    fast = make_fast(model, attention="sdpa", compile=False)
    assert fast.fused and all(type(b) is FusedBlock for b in fast.blocks)
    assert ((video(fast, prompt) - eager).norm() / eager.norm()).item() < 1e-5
    assert not make_fast(model, attention="sdpa", compile=False, fused=False).fused
    fast.unfuse()  # the eager blocks on the fused weights (q, k, v as views of q|k|v): the same video
    assert not fast.fused and ((video(fast, prompt) - eager).norm() / eager.norm()).item() < 1e-5


@pytest.mark.parametrize("channels, outs", [(96, 3), (20, 4)])  # the Wan VAE's head; channels not a step multiple
def test_narrow_causal_conv_equals_conv3d_after_the_cached_frames(channels, outs):
    """The VAE head's kernel: the cached frames as time padding, zero spatial padding, any contiguity."""
    gen = torch.Generator().manual_seed(3)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    cache, x = (torch.randn(2, channels, t, 6, 10, generator=gen).to(DEVICE, dtype) for t in (2, 5))
    weight = (torch.randn(outs, channels, 3, 3, 3, generator=gen) / (27 * channels) ** 0.5).to(DEVICE, dtype)
    bias = torch.randn(outs, generator=gen).to(DEVICE, dtype)
    # in float64: torch 2.14's float32 conv3d on the CPU is itself 1.1e-6 off (the kernel: 7e-8)
    want = torch.nn.functional.conv3d(torch.cat([cache, x], 2).double(), weight.double(), bias.double(),
                                      padding=(0, 1, 1))
    got = causal_conv3d_narrow(cache, x.contiguous(memory_format=torch.channels_last_3d), weight, bias)
    assert got.shape == want.shape and got.dtype == dtype and got.is_contiguous()
    assert rel_err(got, want) < (4e-3 if dtype == torch.bfloat16 else 1e-6)
    with pytest.raises(ValueError, match="not a 3x3x3 convolution to at most 4 channels"):
        causal_conv3d_narrow(cache[:, :, :1], x, weight, bias)


@pytest.mark.skipif(DEVICE == "cuda", reason="a CPU without Triton's interpreter")
def test_kernels_refuse_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    x = torch.zeros(1, 4, 8)
    with pytest.raises(BackendUnavailableError, match="need a CUDA tensor .* use the eager path"):
        kernels.norm_affine(x, x[:, :1], x[:, :1], 1e-6, True)
    assert not kernels.available(torch.device("cpu"))
