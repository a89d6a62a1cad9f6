"""Precision options on the CPU: int8 weight-only through torchao, the FP8 linear, and refusals."""

from __future__ import annotations

import pytest
import torch

from longlive_core import BackendUnavailableError, ConfigError, StreamSession
from longlive_core.quantize import Float8Linear, _to_fp8, apply_precision, check_precision
from longlive_core.synthetic import TINY, random_model


def video(model, prompt, frames=9):
    s = StreamSession(model, height=64, width=96, seed=2)
    s.set_prompt(prompt)
    return torch.cat(list(s.generate(frames)), 1).float()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_int8_weight_only_really_quantizes_and_stays_close(prompt):
    ref = random_model(TINY, dtype=torch.float32, std=0.1)
    quant = apply_precision(random_model(TINY, dtype=torch.float32, std=0.1), "int8 weight-only")
    weight = quant.blocks[0].self_attn.q.weight
    assert "Int8" in type(weight).__name__ and quant.head.head.weight.dtype == torch.bfloat16
    error = rel(video(quant, prompt), video(ref, prompt))
    assert 0 < error < 0.05


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
    torch.testing.assert_close(up.gelu_into(down, x), expect, rtol=0, atol=0)


def test_fp8_blocks_stay_close_to_bf16(prompt):
    ref = random_model(TINY, dtype=torch.bfloat16, std=0.1)
    quant = random_model(TINY, dtype=torch.bfloat16, std=0.1)
    with torch.no_grad():
        _to_fp8(quant.blocks)  # apply_precision refuses fp8 on the CPU: the same conversion, directly
    assert isinstance(quant.blocks[1].ffn[2], Float8Linear) and isinstance(quant.head.head, torch.nn.Linear)
    assert rel(video(quant, prompt), video(ref, prompt)) < 0.1


def test_options_this_machine_cannot_run_are_refused():
    with pytest.raises(BackendUnavailableError, match="'fp8' needs an NVIDIA GPU of compute capability 8.9"):
        check_precision("fp8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="precision 'int4' is unknown"):
        check_precision("int4", torch.device("cpu"))


def test_fp8_attention_bounds_read_quantized_weights(prompt):
    """The FP8 attention's v bound needs the v weights as numbers, also when torchao or our FP8 hold them."""
    from longlive_core.model import _dense_weight

    plain = random_model(TINY, dtype=torch.float32, std=0.1)
    weight = plain.blocks[0].self_attn.v.weight.detach().clone()
    int8 = apply_precision(random_model(TINY, dtype=torch.float32, std=0.1), "int8 weight-only")
    assert rel(_dense_weight(int8.blocks[0].self_attn.v), weight) < 0.02
    fp8 = Float8Linear(plain.blocks[0].self_attn.v.to(torch.bfloat16))
    assert rel(_dense_weight(fp8), weight) < 0.06
    int8.set_fp8_scales()
    assert torch.isfinite(int8.blocks[1].self_attn.fp8_scales).all()
