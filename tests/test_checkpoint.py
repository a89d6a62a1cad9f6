"""Every checkpoint format on tiny random files, the LoRA merge, export, and the errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from longlive_core import CheckpointError, StreamSession, export_safetensors, load_model
from longlive_core.io.checkpoint import canonical_key
from longlive_core.quant.precision import PRECISIONS
from longlive_core.tools.synthetic import TINY, random_model, write_longlive_checkpoint, write_lora


def _generate(model, prompt, frames=9):
    session = StreamSession(model, height=64, width=96, seed=5)
    session.set_prompt(prompt)
    return torch.cat(list(session.generate(frames)), 1)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


@pytest.mark.parametrize("key", ["generator", "generator_ema"])
def test_longlive_pt_loads_with_any_wrapper_prefix(tmp_path, tiny_model, key):
    path = tmp_path / "longlive_base.pt"
    sd = {f"model._fsdp_wrapped_module.model.{k}": v for k, v in tiny_model.state_dict().items()}
    torch.save({key: sd}, path)
    loaded = load_model(str(path), num_heads=TINY.num_heads, dtype=torch.float32)
    assert _same_weights(loaded, tiny_model)


def test_generator_is_preferred_over_ema(tmp_path, tiny_model):
    other = random_model(TINY, seed=9, dtype=torch.float32)
    path = tmp_path / "both.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in tiny_model.state_dict().items()},
                "generator_ema": {f"model.{k}": v for k, v in other.state_dict().items()}}, path)
    assert _same_weights(load_model(str(path), num_heads=2, dtype=torch.float32), tiny_model)
    assert _same_weights(load_model(str(path), num_heads=2, dtype=torch.float32, prefer="generator_ema"), other)


@pytest.mark.parametrize("prefix", ["", "model.", "model.diffusion_model."])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_comfy_and_wan_safetensors_load(tmp_path, tiny_model, prompt, prefix, dtype):
    path = tmp_path / "wan.safetensors"
    save_file({prefix + k: v.to(dtype).contiguous() for k, v in tiny_model.state_dict().items()}, str(path))
    loaded = load_model(str(path), num_heads=2, dtype=torch.float32)
    tol = 0 if dtype == torch.float32 else 2e-2
    ours, ref = _generate(loaded, prompt), _generate(tiny_model, prompt)
    assert ((ours - ref).norm() / ref.norm()).item() <= tol + 1e-7


def test_lora_merge_is_w_plus_scaled_b_a(tmp_path, tiny_model):
    base, lora = tmp_path / "base.pt", tmp_path / "lora.pt"
    write_longlive_checkpoint(tiny_model, str(base))
    write_lora(tiny_model, str(lora), rank=4)
    merged = load_model(str(base), lora_path=str(lora), lora_alpha=8, lora_strength=0.5, num_heads=2,
                        dtype=torch.float32)
    pairs = torch.load(lora, weights_only=True)["generator_lora"]
    a = pairs["base_model.model.blocks.1.ffn.2.lora_A.weight"]
    b = pairs["base_model.model.blocks.1.ffn.2.lora_B.weight"]
    expect = tiny_model.blocks[1].ffn[2].weight + 0.5 * (8 / 4) * b @ a
    torch.testing.assert_close(merged.blocks[1].ffn[2].weight, expect)
    # modules the LoRA does not touch keep their weights
    assert torch.equal(merged.head.head.weight, tiny_model.head.head.weight)


def test_export_merged_model_round_trips(tmp_path, tiny_model, prompt):
    base, lora, out = tmp_path / "base.pt", tmp_path / "lora.pt", tmp_path / "merged.safetensors"
    write_longlive_checkpoint(tiny_model, str(base))
    write_lora(tiny_model, str(lora))
    merged = load_model(str(base), lora_path=str(lora), num_heads=2, dtype=torch.float32)
    export_safetensors(merged, str(out))
    again = load_model(str(out), dtype=torch.float32)  # heads come from the file's metadata
    assert again.cfg == merged.cfg and _same_weights(again, merged)
    torch.testing.assert_close(_generate(again, prompt), _generate(merged, prompt), rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("precision", ["fp8", "int8 dynamic", "int8 weight-only"])
def test_export_refuses_a_quantized_model(tmp_path, precision):
    model = random_model(TINY, dtype=torch.bfloat16)
    PRECISIONS[precision].apply(model)  # (resolve() would refuse fp8 on the CPU: apply is the same conversion)
    out = tmp_path / "quantized.safetensors"
    with pytest.raises(CheckpointError, match="quantized .*export it unquantized"):
        export_safetensors(model, str(out))
    assert not out.exists()

def test_heads_default_to_dim_over_128():
    model = random_model(TINY.__class__(dim=256, ffn_dim=64, num_heads=2, num_layers=1, text_dim=16))
    from longlive_core.model.config import WanConfig
    assert WanConfig.from_state_dict(model.state_dict()).num_heads == 2


def test_canonical_keys():
    assert canonical_key("model.model.blocks.0.ffn.0.weight") == "blocks.0.ffn.0.weight"
    assert canonical_key("model.diffusion_model.head.modulation") == "head.modulation"
    assert canonical_key("_fsdp_wrapped_module.model._fsdp_wrapped_module.blocks.1.norm3.bias") == "blocks.1.norm3.bias"


# --- errors -------------------------------------------------------------------------------------


def _save(tmp_path, sd, name="bad.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


def test_missing_and_unexpected_keys_are_listed(tmp_path, tiny_model):
    sd = dict(tiny_model.state_dict())
    del sd["blocks.1.ffn.2.bias"]
    sd["blocks.0.extra.weight"] = torch.zeros(1)
    path = _save(tmp_path, sd)
    with pytest.raises(CheckpointError, match=r"bad.safetensors: keys do not match the LongLive 1.x \(Wan2.1 T2V "
                                              r"1.3B\) network: missing \['blocks.1.ffn.2.bias'\].*unexpected "
                                              r"\['blocks.0.extra.weight'\]"):
        load_model(path, num_heads=2)


RUNS_ON = r"LongLive runs on Wan2.1 T2V 1.3B \(LongLive-1.3B\) and Wan2.2 TI2V 5B \(LongLive-2.0-5B\)"


@pytest.mark.parametrize("change,family", [
    (lambda sd: sd.__setitem__("patch_embedding.weight", torch.zeros(5120, 16, 1, 2, 2)),
     "a Wan 14B model; " + RUNS_ON),
    (lambda sd: sd.__setitem__("patch_embedding.weight", torch.zeros(64, 36, 1, 2, 2)),
     r"a Wan image-to-video \(I2V\) model; " + RUNS_ON),
    (lambda sd: sd.__setitem__("img_emb.proj.0.weight", torch.zeros(2)), r"image-to-video \(I2V\) model; " + RUNS_ON),
    (lambda sd: sd.__setitem__("patch_embedding.weight", torch.zeros(64, 48, 1, 2, 2)),
     r"takes 48 latent channels and its head makes 16; LongLive 1.x \(Wan2.1 T2V 1.3B\) has 16 and 16, "
     r"LongLive 2.0 \(Wan2.2 TI2V 5B\) 48 and 48"),
    (lambda sd: sd.pop("head.modulation"), "not a Wan diffusion model .*" + RUNS_ON),
])
def test_other_model_families_are_named(tmp_path, tiny_model, change, family):
    """A file of another model is refused naming what it is and both families LongLive runs on."""
    sd = dict(tiny_model.state_dict())
    change(sd)
    with pytest.raises(CheckpointError, match=family):
        load_model(_save(tmp_path, sd), num_heads=2)


def test_truncated_files_are_reported(tmp_path, tiny_model):
    pt, st = tmp_path / "base.pt", tmp_path / "wan.safetensors"
    write_longlive_checkpoint(tiny_model, str(pt))
    export_safetensors(tiny_model, str(st))
    for path in (pt, st):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=f"{path.name}.*(truncated|corrupt)"):
            load_model(str(path), num_heads=2)


class Payload:
    """Anything that is not a tensor makes a pickle unsafe to load."""


def test_pickles_that_need_unsafe_loading_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"generator": {"x": Payload()}}, path)
    with pytest.raises(CheckpointError, match="evil.pt.*unsafe loading"):
        load_model(str(path))


def test_missing_file_and_lora_for_another_model(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="nope.pt: no such file"):
        load_model(str(tmp_path / "nope.pt"))
    base, lora = tmp_path / "base.pt", tmp_path / "lora.pt"
    write_longlive_checkpoint(tiny_model, str(base))
    big = random_model(TINY.__class__(dim=128, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32))
    write_lora(big, str(lora))
    with pytest.raises(CheckpointError, match="lora.pt: LoRA for blocks.0.self_attn.q is 128x128"):
        load_model(str(base), lora_path=str(lora), num_heads=2)


def test_legacy_non_zip_pt_files_load(tmp_path, tiny_model):
    path = tmp_path / "old.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in tiny_model.state_dict().items()}}, path,
               _use_new_zipfile_serialization=False)
    assert _same_weights(load_model(str(path), num_heads=2, dtype=torch.float32), tiny_model)


def test_files_are_told_apart_by_content_not_name(tmp_path, tiny_model):
    """ComfyUI lists .sft (and .ckpt) files too; random bytes are named as such, not as an unsafe pickle."""
    path = tmp_path / "wan.sft"
    export_safetensors(tiny_model, str(path))
    assert _same_weights(load_model(str(path), dtype=torch.float32), tiny_model)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes().replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    with pytest.raises(CheckpointError, match="junk.pt: neither a safetensors file nor a PyTorch checkpoint"):
        load_model(str(junk))


@pytest.mark.parametrize("heads,fix", [("abc", "not a positive whole number"), ("-1", "not a positive whole number")])
def test_bad_head_count_metadata(tmp_path, tiny_model, heads, fix):
    path = tmp_path / "heads.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(path),
              metadata={"longlive_num_heads": heads})
    with pytest.raises(CheckpointError, match=f"heads.safetensors: its metadata says longlive_num_heads='{heads}'.*{fix}"):
        load_model(str(path))
    with pytest.raises(CheckpointError, match="num_heads=-1 must be at least 1"):
        load_model(str(path), num_heads=-1)


def test_non_finite_weights_name_their_file(tmp_path, tiny_model):
    base, lora = tmp_path / "base.pt", tmp_path / "lora.pt"
    write_longlive_checkpoint(tiny_model, str(base))
    write_lora(tiny_model, str(lora), rank=4)
    pairs = torch.load(lora, weights_only=True)
    pairs["generator_lora"]["base_model.model.blocks.1.ffn.2.lora_B.weight"][0, 0] = float("nan")
    torch.save(pairs, lora)
    with pytest.raises(CheckpointError, match=r"lora.pt: blocks.1.ffn.2 holds NaN or infinite values \(1 weight"):
        load_model(str(base), lora_path=str(lora), num_heads=2)
    sd = dict(tiny_model.state_dict())
    sd["blocks.0.self_attn.o.weight"] = sd["blocks.0.self_attn.o.weight"].clone()
    sd["blocks.0.self_attn.o.weight"][1, 2] = float("inf")
    with pytest.raises(CheckpointError, match="bad.safetensors: blocks.0.self_attn.o.weight holds NaN or infinite"):
        load_model(_save(tmp_path, sd), num_heads=2)
    with pytest.raises(CheckpointError, match="lora_strength=nan is not a finite number"):
        load_model(str(base), lora_path=str(lora), lora_strength=float("nan"), num_heads=2)


def test_lora_factors_of_different_ranks_are_refused(tmp_path, tiny_model):
    base, lora = tmp_path / "base.pt", tmp_path / "lora.pt"
    write_longlive_checkpoint(tiny_model, str(base))
    write_lora(tiny_model, str(lora), rank=4)
    pairs = torch.load(lora, weights_only=True)
    key = "base_model.model.blocks.0.self_attn.q.lora_B.weight"
    pairs["generator_lora"][key] = pairs["generator_lora"][key][:, :3].contiguous()
    torch.save(pairs, lora)
    with pytest.raises(CheckpointError, match=r"lora.pt: the LoRA of blocks.0.self_attn.q has lora_A \[4, 64\] and "
                                              r"lora_B \[64, 3\]"):
        load_model(str(base), lora_path=str(lora), num_heads=2)
