"""Precision options on the CPU: int8 weight-only through torchao, our int8 dynamic and FP8 linears, refusals."""

from __future__ import annotations

import copy

import pytest
import torch

from longlive_core import BackendUnavailableError, ConfigError, StreamSession
from longlive_core.fast.setup import make_fast
from longlive_core.model.fused import FusedBlock
from longlive_core.quant.fp8 import rowwise_fp8
from longlive_core.quant.linears import Float8Linear, Int8DynamicLinear
from longlive_core.quant.precision import PRECISIONS, resolve
from longlive_core.tools.synthetic import TINY, random_model


def video(model, prompt, frames=9):
    s = StreamSession(model, height=64, width=96, seed=2)
    s.set_prompt(prompt)
    return torch.cat(list(s.generate(frames)), 1).float()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def quantized(name: str, dtype=torch.bfloat16, seed: int = 0):
    """A random model loaded in dtype with a precision applied (resolve() would refuse fp8 on the CPU: apply alone
    is the same conversion)."""
    model = random_model(TINY, seed=seed, dtype=dtype, std=0.1)
    PRECISIONS[name].apply(model)
    return model


def test_int8_weight_only_really_quantizes_and_stays_close(prompt):
    ref = random_model(TINY, dtype=torch.float32, std=0.1)
    quant = quantized("int8 weight-only")
    weight = quant.blocks[0].self_attn.q.weight
    assert "Int8" in type(weight).__name__ and quant.head.head.weight.dtype == torch.bfloat16
    eager = video(quant, prompt)
    assert 0 < rel(eager, video(ref, prompt)) < 0.05
    fast = make_fast(quant, attention="sdpa", compile=False)  # torchao's tensors stay apart: no fused q|k|v
    assert not fast.fused and quant.precision.name == fast.precision.name == "int8 weight-only"
    assert torch.equal(video(fast, prompt), eager)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_dynamic_linear_quantizes_as_torchao_does(dtype):
    import torchao.quantization as tq

    torch.manual_seed(3)
    linear = torch.nn.Linear(64, 48).to(dtype)
    linear.bias.data.normal_()
    ours = Int8DynamicLinear(linear)
    theirs = torch.nn.Sequential(copy.deepcopy(linear))
    tq.quantize_(theirs, tq.Int8DynamicActivationInt8WeightConfig())
    assert torch.equal(ours.weight, theirs[0].weight.qdata)
    assert torch.equal(ours.weight_scale, theirs[0].weight.scale.t().float())
    x = torch.randn(2, 20, 64, dtype=dtype)
    x[1, 3] = 0  # a padded text token: its row gives the bias
    out, want = ours(x), theirs(x)
    assert torch.equal(out[1, 3], linear.bias.data)
    # float32: the same numbers; bf16: torchao rounds its product to bf16 once more before the weight steps,
    # so they differ by a bf16 rounding step of the output (2^-7 of the largest, at most)
    tolerance = 0 if dtype == torch.float32 else 2 ** -7
    assert (out.float() - want.float()).abs().max() <= tolerance * want.float().abs().max()
    assert 0 < rel(out.float(), linear(x).float()) < 0.02


def test_int8_dynamic_model_stays_close_to_float32(prompt):
    ref = random_model(TINY, dtype=torch.float32, std=0.1)
    quant = quantized("int8 dynamic")
    assert isinstance(quant.blocks[1].ffn[2], Int8DynamicLinear) and isinstance(quant.head.head, torch.nn.Linear)
    assert quant.dtype == torch.bfloat16
    assert 0 < rel(video(quant, prompt), video(ref, prompt)) < 0.05


def test_int8_dynamic_linears_fuse_on_the_fast_path(prompt):
    model = quantized("int8 dynamic", torch.float32)  # in float32: Triton's interpreter rounds bf16 its own way
    eager = video(model, prompt)
    fast = make_fast(model, attention="sdpa", compile=False)  # q|k|v as one int8 linear, the norms in Triton kernels
    assert isinstance(fast.blocks[0], FusedBlock) and isinstance(fast.blocks[0].self_attn.qkv, Int8DynamicLinear)
    # the norm kernels' float32 rounding differs from eager torch by ~1e-7, which can move an activation across
    # an int8 rounding boundary: close, not equal
    assert rel(video(fast, prompt), eager) < 4e-3


def test_fp8_linear_matches_its_definition_and_survives_zero_rows():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    fp8 = Float8Linear(linear)
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (1, 48)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    x[0, 0] = 0  # a padded text token: a zero row must give the bias, not NaN
    out = fp8(x)
    assert torch.isfinite(out).all() and torch.allclose(out[0, 0].float(), linear.bias.float(), atol=1e-2)
    assert rel(out.float(), linear(x).float()) < 0.06


def test_fp8_ffn_hands_over_quantized_activations_as_its_definition():
    torch.manual_seed(1)
    up, down = (Float8Linear(torch.nn.Linear(i, o).to(torch.bfloat16)) for i, o in ((64, 160), (160, 64)))
    x = torch.randn(3, 7, 64, dtype=torch.bfloat16)
    x[1, 2] = 0
    expect = down(torch.nn.functional.gelu(up(x), approximate="tanh"))  # each linear quantizes its own input
    got = up.gelu_rows_into(down, *rowwise_fp8(x.reshape(-1, 64)), x.dtype)
    torch.testing.assert_close(got.view(3, 7, 64), expect, rtol=0, atol=0)


def test_fp8_blocks_stay_close_to_bf16(prompt):
    ref = random_model(TINY, dtype=torch.bfloat16, std=0.1)
    quant = quantized("fp8")
    assert isinstance(quant.blocks[1].ffn[2], Float8Linear) and isinstance(quant.head.head, torch.nn.Linear)
    assert rel(video(quant, prompt), video(ref, prompt)) < 0.1


def test_fp8_on_a_longlive_2_model_quantizes_its_blocks_and_keeps_upstreams_bf16_layers():
    """Upstream's FP8 keeps text_embedding, time_embedding, time_projection and head in bf16: every linear inside the
    blocks is FP8, those stay bf16 linears, and what the network adds to the noise stays within 3% of bf16's (1% here;
    16% with every block linear zeroed)."""
    from longlive_core import ShotSession
    from longlive_core.tools.synthetic import TINY_V2

    ref = random_model(TINY_V2, dtype=torch.bfloat16, std=0.1)
    quant = copy.deepcopy(ref)
    PRECISIONS["fp8"].apply(quant)
    kept = [m for name in ("text_embedding", "time_embedding", "time_projection", "head")
            for m in getattr(quant, name).modules() if isinstance(m, torch.nn.Linear)]
    assert len(kept) == 6 and all(m.weight.dtype == torch.bfloat16 for m in kept)
    linears = [m for m in quant.blocks.modules() if isinstance(m, (torch.nn.Linear, Float8Linear))]
    assert len(linears) == 10 * TINY_V2.num_layers and all(isinstance(m, Float8Linear) for m in linears)
    embeds = torch.randn(1, 512, TINY_V2.text_dim, generator=torch.Generator().manual_seed(0))

    def made(model):  # two blocks less their noise
        session = ShotSession(model, batch=1, latent_hw=(4, 6), seed=1)
        return torch.cat([session.make_block(embeds) - session.noise(k) for k in range(2)], 1)

    assert rel(made(quant), made(ref)) < 0.03


def test_options_this_machine_cannot_run_are_refused():
    with pytest.raises(BackendUnavailableError, match="'fp8' needs an NVIDIA GPU of compute capability 8.9"):
        resolve("fp8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="precision 'int4' is unknown"):
        resolve("int4", torch.device("cpu"))
    with pytest.raises(ConfigError, match="already in precision 'int8 dynamic'; load it again"):
        PRECISIONS["fp8"].apply(quantized("int8 dynamic"))


def test_fp8_attention_bounds_read_quantized_weights(prompt):
    """The FP8 attention's v bound needs the v weights as numbers, also when torchao or our FP8 hold them."""
    plain = random_model(TINY, dtype=torch.float32, std=0.1)
    weight = plain.blocks[0].self_attn.v.weight.detach().clone()
    int8 = quantized("int8 weight-only")
    assert rel(int8.precision.dense_weight(int8.blocks[0].self_attn.v), weight) < 0.02
    fp8 = Float8Linear(plain.blocks[0].self_attn.v.to(torch.bfloat16))
    assert rel(PRECISIONS["fp8"].dense_weight(fp8), weight) < 0.06
    int8.set_fp8_scales()
    assert torch.isfinite(int8.blocks[1].self_attn.fp8_scales).all()
