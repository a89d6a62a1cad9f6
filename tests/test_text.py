"""The engine's umt5 encoder (longlive_core/text/) without ComfyUI: a padded text's embeddings, and the weights it
refuses, by name. Against ComfyUI's own umt5 classes: tests/test_nodes_inprocess.py; its CUDA graphs:
tests/test_gpu.py."""

import pytest
import torch

from longlive_core import CheckpointError, Umt5Encoder


def tiny_state(layers: int = 2, width: int = 8, heads: int = 2, ff: int = 16, std: float = 0.3,
               dtype: torch.dtype = torch.float8_e4m3fn) -> dict[str, torch.Tensor]:
    """A umt5 encoder's weights by their checkpoint names (every layer with its own position bias), the linears in
    `dtype` (e4m3 with a scale)."""
    gen = torch.Generator().manual_seed(0)

    def linear(name: str, rows: int, cols: int) -> dict[str, torch.Tensor]:
        out = {name + ".weight": (torch.randn(rows, cols, generator=gen) * std / 0.25).to(dtype)}
        return out | ({name + ".scale_weight": torch.tensor(0.25)} if dtype == torch.float8_e4m3fn else {})

    state = {"shared.weight": torch.randn(32, width, generator=gen), "encoder.final_layer_norm.weight":
             torch.ones(width)}
    for i in range(layers):
        p = f"encoder.block.{i}.layer."
        state |= {p + "0.layer_norm.weight": torch.ones(width), p + "1.layer_norm.weight": torch.ones(width),
                  p + "0.SelfAttention.relative_attention_bias.weight": torch.randn(32, heads, generator=gen)}
        state |= linear(p + "1.DenseReluDense.wi_0", ff, width) | linear(p + "1.DenseReluDense.wi_1", ff, width)
        state |= linear(p + "1.DenseReluDense.wo", width, ff)
        for n in "qkvo":
            state |= linear(p + f"0.SelfAttention.{n}", width, width)
    return state


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.bfloat16])
def test_a_text_padded_with_its_padding_masked_out_encodes_as_the_text_alone(dtype):
    """What a CUDA graph of a bucket computes (the text padded to the bucket, its count in a tensor): the text's
    embeddings, to rounding; the padding's rows are left to the caller."""
    encoder = Umt5Encoder(tiny_state(dtype=dtype))
    ids = torch.tensor([[3, 5, 7, 11, 13, 1]])
    alone = encoder(ids)
    padded = encoder(torch.cat([ids, torch.zeros(1, 10, dtype=torch.long)], 1), torch.tensor(6))
    assert alone.dtype == torch.float32 and alone.shape == (1, 6, 8) and alone.isfinite().all()
    torch.testing.assert_close(padded[:, :6], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("encoder.block.0.layer.0.layer_norm.weight"), "no encoder.block.0.layer.0.layer_norm.weight"),
    (lambda s: s.pop("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"),
     "no encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight .*per-layer position biases"),
    (lambda s: s.update({"encoder.block.0.layer.0.SelfAttention.q.scale_weight": torch.ones(8)}),
     "encoder.block.0.layer.0.SelfAttention.q.scale_weight holds 8 values; a scaled weight has one"),
    (lambda s: s.update({"encoder.block.1.layer.1.DenseReluDense.wo.weight": torch.ones(8, 16, dtype=torch.float16)}),
     r"encoder.block.1.layer.1.DenseReluDense.wo.weight is torch.float16; the engine's encoder takes "
     r"torch.float8_e4m3fn or torch.bfloat16 weights \(ComfyUI's encoder runs the others\)"),
])
def test_weights_the_umt5_encoder_cannot_take_are_refused_by_name(change, message):
    state = tiny_state()
    change(state)
    with pytest.raises(CheckpointError, match=message):
        Umt5Encoder(state)


def test_nan_token_embeddings_are_zeroed_where_asked_as_comfyuis_fp8_t5_does():
    """ComfyUI's T5 whose dtype is an FP8 one zeroes the NaNs of its token embeddings (nan_to_num): the encoder does
    where asked."""
    state = tiny_state()
    ids = torch.tensor([[3, 5, 7, 1]])
    clean = Umt5Encoder(state)(ids)
    state["shared.weight"] = state["shared.weight"].clone()
    state["shared.weight"][5, 2] = float("nan")
    zeroed = dict(state, **{"shared.weight": state["shared.weight"].nan_to_num()})
    assert Umt5Encoder(state)(ids).isnan().all()
    torch.testing.assert_close(Umt5Encoder(state, nan_to_num=True)(ids), Umt5Encoder(zeroed)(ids), rtol=0, atol=0)
    assert not torch.equal(Umt5Encoder(state, nan_to_num=True)(ids), clean)


def test_a_scale_stored_in_bfloat16_multiplies_as_its_float32_value():
    state = tiny_state()
    halves = {k: torch.tensor(0.3, dtype=torch.bfloat16) if k.endswith("scale_weight") else v
              for k, v in state.items()}
    widened = {k: v.float() if k.endswith("scale_weight") else v for k, v in halves.items()}
    ids = torch.tensor([[3, 5, 7, 1]])
    got = Umt5Encoder(halves)(ids)
    assert got.dtype == torch.float32 and not torch.equal(got, Umt5Encoder(state)(ids))
    torch.testing.assert_close(got, Umt5Encoder(widened)(ids), rtol=0, atol=0)


def test_a_scratch_too_small_for_the_widest_weight_is_refused():
    with pytest.raises(ValueError, match="a scratch of 100 values, and its widest weight holds 128"):
        Umt5Encoder(tiny_state(), scratch=torch.empty(100, dtype=torch.bfloat16))
