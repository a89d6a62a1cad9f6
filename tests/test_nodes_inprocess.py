"""Node code inside this process, against ComfyUI's real modules (VAE, latent formats, V3 API)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import threading
import time
import types

import pytest
import torch

from conftest import REPO
from longlive_core import ConfigError, PromptError, ShotSession
from longlive_core.runtime.prompt_text import parse_schedule_text, seconds_to_latent

sys.path.insert(0, str(REPO / "scripts"))
from host import comfy_dir, write_tiny_wan_vae  # noqa: E402


@pytest.fixture(scope="module")
def comfy():
    """Imports ComfyUI the way its own tests do: --cpu, args parsing, `utils` claimed before `nodes`."""
    path = str(comfy_dir())
    if path not in sys.path:
        sys.path.insert(0, path)
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import utils.extra_config  # noqa: F401
    import comfy.sd
    import comfy.utils

    sys.argv = argv
    return comfy


@pytest.fixture(scope="module")
def tiny_vae(comfy, tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "tiny.safetensors"
    write_tiny_wan_vae(path)
    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))


def load_pack():
    """The pack's node modules, imported as ComfyUI's custom-node loader imports a package (with ComfyUI's `nodes`
    module loaded: outside it the pack loads no node). The nodes reach the engine as `longlive_pack.longlive_core`:
    the pack makes that the `longlive_core` the tests import (one copy of its classes and custom ops in the process)."""
    import importlib.util

    import nodes  # ComfyUI's (the comfy fixture put it first on sys.path)

    assert pathlib.Path(nodes.__file__).resolve().parent == comfy_dir().resolve(), nodes.__file__
    spec = importlib.util.spec_from_file_location("longlive_pack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["longlive_pack"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("longlive_pack.nodes")


def test_streaming_decode_in_chunks_equals_comfys_full_decode(tiny_vae):
    load_pack()
    from longlive_pack.nodes.decode import new_stream, stream_decode

    z = torch.randn(1, 16, 11, 8, 12, generator=torch.Generator().manual_seed(0))
    full = tiny_vae.decode(z).reshape(-1, 64, 96, 3)  # what ComfyUI's VAEDecode returns
    stream = new_stream(tiny_vae)
    chunks = [stream_decode(tiny_vae, part, stream) for part in z.split([3, 6, 1, 1], dim=2)]
    assert [c.shape[0] for c in chunks] == [9, 24, 4, 4]  # 4T - 3, then 4T
    torch.testing.assert_close(torch.cat(chunks), full, rtol=1e-5, atol=1e-5)
    # without the kept cache the second piece would be another video
    alone = stream_decode(tiny_vae, z[:, :, 3:9], new_stream(tiny_vae))
    with pytest.raises(ConfigError, match=r"batch x height x width \(1, 8, 12\), these are \(2, 8, 12\)"):
        stream_decode(tiny_vae, z.expand(2, -1, -1, -1, -1)[:, :, :3], stream)
    assert alone.shape[0] == 21 and not torch.allclose(alone[-20:], full[9:33][-20:], atol=1e-3)


def set_comfy_cast(decoder, cast: bool) -> None:
    """Low VRAM: ComfyUI's ops cast each weight when they run."""
    for module in decoder.modules():
        if hasattr(module, "comfy_cast_weights"):
            module.comfy_cast_weights = cast


@pytest.mark.parametrize("cast", [False, True], ids=["resident", "comfy-cast weights"])
@torch.no_grad()
def test_steady_decode_equals_the_decoder(tiny_vae, cast):
    """With resident weights within float32 rounding: the upsamplers run as sub-pixel convs (kernel rows summed), the
    RGB head in the Triton kernel (here in its interpreter). With ComfyUI-cast weights exactly: its modules run."""
    from comfy.ldm.wan.vae import count_conv3d

    from longlive_core.vae.stream import is_steady, steady_decode

    vae = tiny_vae.first_stage_model
    set_comfy_cast(vae.decoder, cast)
    try:
        x = vae.conv2(torch.randn(1, 16, 9, 8, 12, generator=torch.Generator().manual_seed(2)))
        theirs, ours = ([None] * count_conv3d(vae.decoder) for _ in range(2))
        for part in (x[:, :, :1], x[:, :, 1:3]):  # the first frame alone, then the rest of the first block
            assert not is_steady(ours)
            torch.testing.assert_close(vae.decoder(part, feat_cache=ours, feat_idx=[0]),
                                       vae.decoder(part, feat_cache=theirs, feat_idx=[0]), rtol=0, atol=0)
        assert is_steady(ours)
        for part in (x[:, :, 3:6], x[:, :, 6:7], x[:, :, 7:9]):  # a block, one frame, two frames
            want = vae.decoder(part, feat_cache=theirs, feat_idx=[0])
            tol = 0 if cast else 1e-4
            torch.testing.assert_close(steady_decode(vae.decoder, part, ours), want, rtol=tol, atol=tol)
            assert [a is None for a in ours] == [b is None for b in theirs]
            for a, b in zip(ours, theirs):
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    finally:
        set_comfy_cast(vae.decoder, False)


def test_compiled_streaming_decode_gives_the_same_frames(tiny_vae):
    load_pack()
    from longlive_pack.nodes.decode import new_stream, stream_decode

    z = torch.randn(1, 16, 9, 8, 12, generator=torch.Generator().manual_seed(1))
    plain, fast = new_stream(tiny_vae), new_stream(tiny_vae)
    for part in z.split(3, dim=2):
        torch.testing.assert_close(stream_decode(tiny_vae, part, fast, fast=True), stream_decode(tiny_vae, part, plain),
                                   rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_a_vae_for_another_device_is_a_copy_with_its_own_weights(tiny_vae):
    """decode_device: ComfyUI's VAE itself for its own device; for another, a copy whose weights are its own (made
    on the offload device, none of ComfyUI's loading state on them) and decode as the original's."""
    load_pack()
    from longlive_core import DEFAULT_DEVICE
    from longlive_pack.nodes.decode import _copy_to, vae_on

    assert vae_on(tiny_vae, DEFAULT_DEVICE) is tiny_vae and vae_on(tiny_vae, None) is tiny_vae
    original = tiny_vae.first_stage_model
    other = _copy_to(original, torch.device("cpu"))
    pairs = list(zip(original.state_dict().values(), other.state_dict().values(), strict=True))
    assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for a, b in pairs)
    assert not any(hasattr(m, "comfy_patched_weights") for m in other.modules())
    z = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(other.decode(z), original.decode(z), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=rf"decode_device: cuda:{torch.cuda.device_count()} is not a CUDA device"):
        vae_on(tiny_vae, f"cuda:{torch.cuda.device_count()}")


def test_a_missing_model_file_fed_by_a_link_says_where_to_get_it(comfy):
    """ComfyUI skips validate_inputs for an input fed by a link: the loader itself names the file and its source."""
    load_pack()
    from longlive_pack.nodes.loader import ModelLoader

    with pytest.raises(ConfigError, match=r"^model_name: 'nowhere\.pt' is not in models/diffusion_models; download "
                                          r"models/longlive_base\.pt of huggingface\.co/Efficient-Large-Model/"
                                          r"LongLive-1\.3B \(LongLive 1\.x\) or model_bf16\.pt of "
                                          r"huggingface\.co/Efficient-Large-Model/LongLive-2\.0-5B \(LongLive 2\.0\) "
                                          r"there, or pick a listed file$"):
        ModelLoader.execute("nowhere.pt", "none", 1.0, "bf16", "auto", False)


@pytest.mark.parametrize("workflow", sorted((REPO / "workflows" / "api").glob("*.json")), ids=lambda p: p.stem)
def test_no_shipped_workflow_asks_the_sampler_for_its_whole_video_as_image(comfy, workflow):
    """The sampler keeps its decoded frames as IMAGE (the whole video in memory) only when a node takes that output
    (output_taken, read from the queued graph): no shipped workflow does; a node added on it does."""
    load_pack()
    from longlive_pack.nodes.outputs import output_taken

    graph = json.loads(workflow.read_text())
    (sampler,) = [key for key, node in graph.items() if node["class_type"] == "LongLive_StreamingSampler"]
    assert not output_taken(graph, sampler, 1)
    graph["99"] = {"class_type": "PreviewImage", "inputs": {"images": [sampler, 1]}}
    assert output_taken(graph, sampler, 1)


def test_conditioning_schedule(comfy):
    load_pack()
    from longlive_pack.nodes.schedule import ConditioningSchedule

    conds = [[[torch.full((1, 20, 4096), float(i)), {"pooled_output": None}]] for i in range(3)]
    out = ConditioningSchedule.execute(starts="0, 5s, f45", conditioning_1=conds[0], conditioning_2=conds[1],
                                       conditioning_3=conds[2])
    segments = out.result[0].prompts
    assert [s.start for s in segments] == [0, 21, 45]  # the starts the schedule text takes ('f45' too)
    assert [s.embeds[0, 0, 0].item() for s in segments] == [0.0, 1.0, 2.0]
    with pytest.raises(PromptError, match="lists 2 start"):
        ConditioningSchedule.execute(starts="0, 5s", conditioning_1=conds[0], conditioning_2=conds[1],
                                     conditioning_3=conds[2])
    for bad in ("soon", "inf", "1e400s", "9" * 400 + "s", "frame " + "9" * 5000):
        with pytest.raises(PromptError, match=r"start '.*' is not seconds \('10s', or a bare number\) or a latent"):
            ConditioningSchedule.execute(starts=f"0, {bad}", conditioning_1=conds[0], conditioning_2=conds[1])


TINY_UMT5 = {"d_ff": 64, "d_kv": 8, "d_model": 32, "dense_act_fn": "gelu_pytorch_tanh", "is_gated_act": True,
             "layer_norm_epsilon": 1e-6, "model_type": "umt5", "num_heads": 4, "num_layers": 3,
             "relative_attention_num_buckets": 32, "vocab_size": 256}


@pytest.fixture(scope="module")
def tiny_umt5(comfy):
    """A CLIP as CLIPLoader (type wan) makes it, from ComfyUI's own umt5 classes (its tokenizer with a small
    sentencepiece model of umt5's special ids, its T5 with masks and zeroed padding), umt5-xxl's config made tiny,
    random float32 weights."""
    return tiny_umt5_clip({"dtype": torch.float32})


def tiny_umt5_clip(model_options: dict, std: float = 0.5):

    import comfy.sd1_clip
    import comfy.text_encoders.t5
    import comfy.text_encoders.wan
    from full_models import tokenizer_bytes

    class TinyUMT5(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", layer="last", layer_idx=None, dtype=None, model_options={}):
            super().__init__(device=device, layer=layer, layer_idx=layer_idx, textmodel_json_config=TINY_UMT5,
                             dtype=dtype, special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                             enable_attention_masks=True, zero_out_masked=True, model_options=model_options)

    class TinyWanT5(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options, name="umt5xxl",
                             clip_model=TinyUMT5, **kwargs)

    target = types.SimpleNamespace(params={}, clip=TinyWanT5, tokenizer=comfy.text_encoders.wan.WanT5Tokenizer)
    clip = comfy.sd.CLIP(target, tokenizer_data={"spiece_model": tokenizer_bytes()}, model_options=model_options)
    gen = torch.Generator().manual_seed(0)
    for name, p in clip.cond_stage_model.named_parameters():
        if name.endswith("scale_weight"):
            p.data = torch.tensor(0.4)
        elif p.numel():
            values = torch.ones(p.shape) if "norm" in name else torch.randn(p.shape, generator=gen) * std
            p.data = values.to(p.dtype)
    return clip


@pytest.mark.parametrize("options", [{"dtype": torch.float32, "scaled_fp8": torch.float8_e4m3fn},
                                     {"dtype": torch.bfloat16}], ids=["scaled e4m3", "bfloat16"])
@pytest.mark.parametrize("std", [0.1, 0.5])
def test_the_engines_umt5_makes_comfyuis_embeddings_on_its_weights(comfy, options, std):
    """The engine's umt5 (each product's input split in two bfloat16 parts, the weights widened exactly) on the
    weights ComfyUI loaded from its scaled-FP8 and bfloat16 formats: ComfyUI's float32 embeddings of the text's own
    tokens, to 2e-5 of their norm with calm weights (std 0.1: 1e-6 and 8e-6 here) and 5e-4 with wild ones (std 0.5:
    3 layers amplify any rounding; 3e-5 and 3e-4 here, plain bfloat16 products 6%)."""
    load_pack()
    from longlive_pack.longlive_core import Umt5Encoder

    clip = tiny_umt5_clip(options, std)
    tokens = clip.tokenize("a corgi runs along a sunny beach as the waves roll in",
                           tokenizer_options={"umt5xxl_min_length": 0})
    full = clip.encode_from_tokens_scheduled(tokens)[0][0]
    ids = torch.tensor([[t[0] for t in tokens["umt5xxl"][0]]])
    embeds = Umt5Encoder(dict(clip.cond_stage_model.umt5xxl.transformer.named_parameters()))(ids)
    assert embeds.shape == full.shape and full.shape[1] > 10
    assert (embeds - full).norm() <= (2e-5 if std == 0.1 else 5e-4) * full.norm()


@pytest.mark.parametrize("text", ["a corgi runs along a sunny beach", "a (corgi:1.4) digs in the (sand:0.7)",
                                  " ".join(["the quick brown fox jumps over the lazy dog"] * 80)])
def test_a_prompts_umt5_embeddings_are_the_ones_clip_text_encode_makes(tiny_umt5, text):
    """The schedule encodes a text's own tokens and pads zeros after them: the embeddings ComfyUI makes of the text
    padded to 512 tokens (the padding masked out, its outputs zeroed), weighted words and a text past 512 tokens
    too."""
    load_pack()
    from longlive_pack.nodes.schedule import encode

    full = tiny_umt5.encode_from_tokens_scheduled(tiny_umt5.tokenize(text))[0][0]
    lengths = []  # the tokens each run of the encoder sees
    t5 = tiny_umt5.cond_stage_model.umt5xxl.transformer
    hook = t5.register_forward_pre_hook(lambda _, args, kwargs: lengths.append(kwargs["embeds"].shape[1]),
                                        with_kwargs=True)
    try:
        embeds = encode(tiny_umt5, text)
    finally:
        hook.remove()
    own = full.ne(0).any(-1).sum().item()  # the text's tokens and its end token
    assert full.shape[1] == max(512, len(tiny_umt5.tokenize(text)["umt5xxl"][0])) and lengths[0] == own
    assert_same_embeddings(embeds, full)


def test_the_engines_umt5_takes_only_texts_comfyui_would_encode_the_same_way(tiny_umt5):
    """The schedule hands a text to the engine's umt5 only where ComfyUI's encode computes the same thing: plain
    tokens of the last layer, no hooks, weights used as stored; a CLIP Set Last Layer clone's encode leaves its
    layer on the shared text model, which ComfyUI resets before each encode and so does the schedule."""
    import comfy.hooks

    load_pack()
    from longlive_pack.nodes.schedule import UNPADDED, _engine_takes

    def sections(clip, text):
        return clip.tokenize(text, tokenizer_options={f"{UNPADDED}_min_length": 0})[UNPADDED]

    transformer = tiny_umt5.cond_stage_model.umt5xxl.transformer
    assert _engine_takes(tiny_umt5, sections(tiny_umt5, "a corgi runs along a sunny beach")) is transformer
    assert _engine_takes(tiny_umt5, sections(tiny_umt5, "a (corgi:1.4) runs")) is None
    assert _engine_takes(tiny_umt5, sections(tiny_umt5, "a corgi (runs, fast)")) is None  # a weight of 1.1
    assert _engine_takes(tiny_umt5, [[(torch.zeros(32), 1.0)]]) is None  # an embedding's vector
    clone = tiny_umt5.clone()
    clone.clip_layer(-2)
    assert _engine_takes(clone, sections(clone, "a corgi runs")) is None
    clone.encode_from_tokens_scheduled(clone.tokenize("a corgi runs"))
    assert tiny_umt5.cond_stage_model.umt5xxl.layer != "last"  # left there by ComfyUI's encode of the clone
    assert _engine_takes(tiny_umt5, sections(tiny_umt5, "a corgi runs")) is transformer
    hooked = tiny_umt5.clone()
    hooked.patcher.forced_hooks = comfy.hooks.HookGroup()
    assert _engine_takes(hooked, sections(hooked, "a corgi runs")) is None
    linear = transformer.encoder.block[0].layer[0].SelfAttention.q
    linear.weight_function = [lambda weight: weight]  # as ComfyUI's low-VRAM loading patches a weight
    try:
        assert _engine_takes(tiny_umt5, sections(tiny_umt5, "a corgi runs")) is None
    finally:
        linear.weight_function = []


def test_a_clip_clone_that_encodes_otherwise_gets_its_own_embeddings(tiny_umt5):
    """The schedule's cache of embeddings keeps a CLIP's clone apart from it: the clone shares its text model but
    encodes otherwise (here CLIP Set Last Layer's layer; a LoRA's patches likewise)."""
    load_pack()
    from longlive_pack.nodes.schedule import cached_encoder

    text = "a heron lands on a misty pond"
    clone = tiny_umt5.clone()
    clone.clip_layer(-2)
    base, other = cached_encoder(tiny_umt5)(text), cached_encoder(clone)(text)
    assert_same_embeddings(other, clone.encode_from_tokens_scheduled(clone.tokenize(text))[0][0])
    assert not torch.allclose(base, other)
    assert cached_encoder(tiny_umt5)(text) is base  # encoded once


def assert_same_embeddings(embeds: torch.Tensor, full: torch.Tensor) -> None:
    """The same shape, zeros at the same tokens (the padding), the rest to float32 rounding (the attention sums
    over other key counts: 6e-6 of the norm at most here)."""
    assert embeds.shape == full.shape
    assert torch.equal(embeds.eq(0).all(-1), full.eq(0).all(-1)) and full.ne(0).any(-1).sum() > 5
    assert (embeds - full).norm() <= 2e-5 * full.norm()


def test_a_prompts_umt5_embeddings_keep_a_min_length_set_on_the_clip(tiny_umt5):
    """A min_length set on the CLIP (ComfyUI's T5TokenizerOptions node) pads the embeddings to it, as CLIPTextEncode's."""
    load_pack()
    from longlive_pack.nodes.schedule import encode

    clip = tiny_umt5.clone()
    clip.set_tokenizer_option("umt5xxl_min_length", 600)
    full = clip.encode_from_tokens_scheduled(clip.tokenize("a corgi on the beach"))[0][0]
    assert full.shape[1] == 600
    assert_same_embeddings(encode(clip, "a corgi on the beach"), full)


def test_sampler_output_is_raw_vae_latent_space(comfy):
    load_pack()
    import comfy.latent_formats
    from longlive_core import V2
    from longlive_pack.nodes.decode import model_latents, raw_latents
    from longlive_pack.nodes.sampler import latent_frames

    for channels, fmt in ((16, comfy.latent_formats.Wan21()), (48, comfy.latent_formats.Wan22())):
        blocks = torch.randn(1, 3, channels, 4, 4)  # the engine's [B, T, C, h, w]
        torch.testing.assert_close(fmt.process_in(raw_latents(blocks)), blocks.transpose(1, 2))
        torch.testing.assert_close(model_latents(raw_latents(blocks)), blocks)
    assert [latent_frames(5, "seconds"), latent_frames(81, "pixel frames"), latent_frames(40, "latent frames")] == [21, 21, 42]
    assert [latent_frames(5, "seconds", V2), latent_frames(121, "pixel frames", V2)] == [32, 32]  # 24 fps, blocks of 8


def test_schedule_text_parsing():
    segs = parse_schedule_text("0: a boy on a lawn\n# a comment\n\n10s: he starts to run\nframe 81: sunset\nf100: night")
    assert [(s.start, s.text) for s in segs] == [(0, "a boy on a lawn"), (39, "he starts to run"), (81, "sunset"),
                                                 (99, "night")]
    assert segs[1].note == "line 4: 10s is latent frame 40, rounded to 39 (block boundary)"
    assert segs[2].note == ""
    assert seconds_to_latent(0) == 0 and seconds_to_latent(1) == 4
    with pytest.raises(PromptError, match="first prompt must start at 0"):
        parse_schedule_text("5s: late start")
    with pytest.raises(PromptError, match="latent frame 39 follows 39"):
        parse_schedule_text("0: a\n10s: b\nframe 40: c")
    with pytest.raises(PromptError, match="schedule is empty"):
        parse_schedule_text("\n# nothing\n")
    assert [s.text for s in parse_schedule_text("0: a sign reads: stop\n3s: time: 12:00")] == ["a sign reads: stop",
                                                                                            "time: 12:00"]


def test_session_cap_from_the_environment(comfy, caplog):
    """A cap the pack cannot use is reported and the default taken: the nodes load whatever the environment says."""
    load_pack()
    from longlive_pack.nodes.state import session_cap

    assert session_cap(None) == session_cap("24") == 24 * 2**30 and session_cap("0.5") == 2**29
    for value in ("inf", "-1", "0", "nan", "lots"):
        assert session_cap(value) == 24 * 2**30
        assert f"LONGLIVE_SESSION_CAP_GB={value!r} is not a number of GiB" in caplog.text


class Video:
    """Counts graph drops; a Video's GraphRunner needs a GPU."""

    def __init__(self):
        self.cleared = 0

    def drop_graphs(self):
        self.cleared += 1


def test_graphs_are_dropped_when_comfy_moves_the_weights(comfy):
    load_pack()
    from longlive_pack.nodes.state import LongLiveModel
    from longlive_core.tools.synthetic import TINY, random_model

    wrapper = LongLiveModel(random_model(TINY, dtype=torch.float32), fast=True)
    video = Video()
    wrapper.videos.add(video)
    wrapper.refresh_graphs()
    wrapper.refresh_graphs()
    assert video.cleared == 0  # loaded where it was: the graphs stay
    wrapper.model.to(torch.float64).to(torch.float32)  # every weight gets a new address, as after an unload
    wrapper.refresh_graphs()
    assert video.cleared == 1


def test_unnamed_runs_start_the_last_unnamed_video_over_when_only_the_seed_changes(comfy):
    """Its caches and CUDA graphs are kept (nothing captured again); other settings or a named session drop it."""
    load_pack()
    from longlive_core import VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    import comfy.model_patcher
    from longlive_pack.nodes.loader import Holder
    from longlive_pack.nodes.sampler import open_video
    from longlive_pack.nodes.state import SESSIONS, LongLiveModel

    net, cpu = random_model(TINY), torch.device("cpu")
    model = LongLiveModel(net, fast=False, signature=("tiny",),
                          patcher=comfy.model_patcher.ModelPatcher(Holder(net), load_device=cpu, offload_device=cpu))
    settings = VideoSettings(("tiny",), 1, 96, 64, 9, 3, "recache", 0)
    first, _ = open_video(model, settings, reset=False)
    again, _ = open_video(model, dataclasses.replace(settings, seed=7), reset=False)
    assert again is first and again.settings.seed == 7 and again.session.seed == 7
    wider, _ = open_video(model, dataclasses.replace(settings, width=128), reset=False)
    assert wider is not first and model.spare is wider
    named, _ = open_video(model, dataclasses.replace(settings, session_id="spare_test"), reset=False)
    SESSIONS.delete("spare_test")
    assert model.spare is None and named is not wider


def test_unnamed_v2_runs_start_the_last_video_over_unless_an_image_starts_it(comfy):
    """LongLive 2.0 as 1.x: a video started over with another seed makes that seed's video; a video with an image
    is never reused, nor reused for a run with an image."""
    load_pack()
    from longlive_core import VideoSettings
    from longlive_core.tools.synthetic import TINY_V2, random_model
    import comfy.model_patcher
    from longlive_pack.nodes.loader import Holder
    from longlive_pack.nodes.sampler import open_video
    from longlive_pack.nodes.state import LongLiveModel

    net, cpu = random_model(TINY_V2, dtype=torch.float32, std=0.3), torch.device("cpu")
    model = LongLiveModel(net, fast=False, signature=("tiny v2",),
                          patcher=comfy.model_patcher.ModelPatcher(Holder(net), load_device=cpu, offload_device=cpu))
    settings = VideoSettings(("tiny v2",), 1, 96, 64, 32, 8, "keep", 0)
    embeds = torch.randn(1, 512, TINY_V2.text_dim, generator=torch.Generator().manual_seed(4))

    def block(video):
        video.session.set_prompt(embeds)
        return video.session.step_block()

    first, _ = open_video(model, settings, reset=False)
    block(first)
    again, _ = open_video(model, dataclasses.replace(settings, seed=7), reset=False)
    assert again is first and again.session.frame == 0
    fresh = ShotSession(net, batch=1, latent_hw=(4, 6), seed=7)
    fresh.set_prompt(embeds)
    torch.testing.assert_close(block(again), fresh.step_block(), rtol=0, atol=0)
    image = torch.zeros(1, 1, 48, 4, 6)
    with_image, _ = open_video(model, settings, reset=False, image=image)
    assert with_image is not again and model.spare is with_image
    after, _ = open_video(model, settings, reset=False)
    assert after is not with_image


def test_a_model_left_partly_off_its_device_is_refused_before_any_capture(comfy):
    """ComfyUI moves modules one by one and skips those holding both weights and children (a Block's modulation):
    a load that leaves any weight elsewhere is refused with the count, not run into a kernel."""
    load_pack()
    from longlive_pack.nodes.state import LongLiveModel
    from longlive_core import ConfigError
    from longlive_core.tools.synthetic import TINY, random_model

    wrapper = LongLiveModel(random_model(TINY, dtype=torch.float32), fast=True)
    wrapper.model.blocks[1].self_attn.q.to("meta")
    with pytest.raises(ConfigError, match=r"left 2 of LongLive's \d+ weight tensors off cpu"):
        wrapper.refresh_graphs()


def random_tiny_decoder(seed: int = 0, channels: int = 16):
    """ComfyUI's TAEHV for Wan 2.1 (16 latent channels) or Wan 2.2 (48) with random weights; returns (model, state
    dict)."""
    from comfy.taesd.taehv import TAEHV

    model = TAEHV(latent_channels=channels, show_progress_bar=False)
    gen = torch.Generator().manual_seed(seed)
    sd = {k: (torch.randn(v.shape, generator=gen) / max(1, v[0].numel()) ** 0.5 if v.dim() > 1
              else torch.randn(v.shape, generator=gen) * 0.1) for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    return model.eval(), sd


@pytest.mark.parametrize("channels", [16, 48], ids=["wan2.1", "wan2.2"])
def test_tiny_decoder_in_chunks_equals_its_whole_decode(comfy, channels):
    from longlive_core.vae.tiny import tiny_decode_chunk

    model, _ = random_tiny_decoder(channels=channels)
    z = torch.randn(1, channels, 7, 4, 6, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        whole = model.decode(z).clamp(0, 1)  # ComfyUI's own decode of the whole video
    memory: dict = {}
    chunks = [tiny_decode_chunk(model, part, memory) for part in z.split([3, 3, 1], dim=2)]
    assert [c.shape[2] for c in chunks] == [9, 12, 4] and whole.shape[2] == 25
    assert whole.shape[3:] == (4 * 8 * model.patch_size, 6 * 8 * model.patch_size)
    assert whole.std() > 0.05  # not a flat, saturated picture
    torch.testing.assert_close(torch.cat(chunks, dim=2), whole, rtol=1e-5, atol=1e-5)


def test_decode_node_draft_mode_streams_through_the_tiny_decoder(comfy, tiny_vae, tmp_path):
    """The tiny draft decodes a session's runs as one stream; the session is claimed while it decodes (a DELETE
    then is refused: it would close the stream under the decode)."""
    load_pack()
    import folder_paths
    from safetensors.torch import save_file

    from longlive_core import Video, VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes import decode
    from longlive_pack.nodes.decode import VAEDecode
    from longlive_pack.nodes.routes import _delete_one
    from longlive_pack.nodes.state import SESSIONS

    settings = VideoSettings((), 1, 96, 64, 12, 3, "recache", 0, "draft-session")
    SESSIONS.put("draft-session", Video(random_model(TINY), settings, fast=False), 0)

    z = torch.randn(1, 16, 6, 8, 12, generator=torch.Generator().manual_seed(3))
    empty = tmp_path / "empty"
    empty.mkdir()
    saved = folder_paths.folder_names_and_paths["vae_approx"]
    try:
        folder_paths.folder_names_and_paths["vae_approx"] = ([str(empty)], saved[1])
        with pytest.raises(ConfigError, match=r"needs Wan 2.1's tiny decoder: lighttaew2_1.safetensors .* in "
                                              r"models/vae_approx"):
            VAEDecode.execute(tiny_vae, {"samples": z}, "", decoder="tiny draft")
        model, sd = random_tiny_decoder(seed=4)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(empty / "lighttaew2_1.safetensors"))
        folder_paths.filename_list_cache.clear()
        with torch.inference_mode():
            whole = model.decode(z).clamp(0, 1).movedim(1, -1).flatten(0, 1)
        draft, deletes = decode.draft_decode, []

        def deleted_meanwhile(latents, stream):  # a DELETE of the session while it decodes
            deletes.append(_delete_one("draft-session")[0])
            return draft(latents, stream)

        decode.draft_decode = deleted_meanwhile
        try:
            runs = [VAEDecode.execute(tiny_vae, {"samples": part}, "draft-session", decoder="tiny draft").result[0]
                    for part in z.split(3, dim=2)]
        finally:
            decode.draft_decode = draft
        assert [r.shape for r in runs] == [(9, 64, 96, 3), (12, 64, 96, 3)] and deletes == [409, 409]
        assert SESSIONS.get("draft-session").claims == 0
        torch.testing.assert_close(torch.cat(runs), whole, rtol=1e-5, atol=1e-5)
    finally:
        folder_paths.folder_names_and_paths["vae_approx"] = saved
        folder_paths.filename_list_cache.clear()
        SESSIONS.delete("draft-session")


def test_a_decode_interrupted_half_way_is_decoded_again_with_the_next_run(comfy, tiny_vae):
    """ComfyUI's ops raise its interrupt inside the decoder: the stream's cache is rolled back, and the decode node's
    next run of that session decodes the interrupted run's latents too (the sampler delivered them), so the two runs'
    frames are the frames of one whole decode."""
    load_pack()
    import comfy.model_management as mm

    from longlive_core import Video, VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes.decode import VAEDecode
    from longlive_pack.nodes.state import SESSIONS

    video = Video(random_model(TINY), VideoSettings((), 1, 96, 64, 12, 3, "recache", 0, "cut"), fast=False)
    SESSIONS.put("cut", video, 0)
    z = torch.randn(1, 16, 9, 8, 12, generator=torch.Generator().manual_seed(5))
    runs = [z[:, :, :6].clone(), z[:, :, 6:].clone()]
    decoder = tiny_vae.first_stage_model.decoder
    calls = []

    def interrupt_in_the_second_chunk(module, args):
        calls.append(1)
        if len(calls) == 2:
            mm.interrupt_current_processing(True)  # as POST /interrupt does; the next op raises

    hook = decoder.upsamples[1].register_forward_pre_hook(interrupt_in_the_second_chunk)
    try:
        video.deliver(runs[0])
        with pytest.raises(mm.InterruptProcessingException):
            VAEDecode.execute(tiny_vae, {"samples": runs[0]}, "cut")
        video.deliver(runs[1])
        second = VAEDecode.execute(tiny_vae, {"samples": runs[1]}, "cut").result[0]
    finally:
        hook.remove()
        SESSIONS.delete("cut")
    with torch.inference_mode():  # as ComfyUI's executor runs it (earlier tests leave inference-mode weights)
        full = tiny_vae.decode(z).reshape(-1, 64, 96, 3)
    assert second.shape[0] == 4 * 9 - 3
    torch.testing.assert_close(second, full, rtol=1e-5, atol=1e-5)


def test_a_video_reports_the_time_of_the_decodes_done_by_each_block_hand_off(comfy, tiny_vae):
    """The sampler's block events carry `last_decode_ms`: the decoder stream times each call (CUDA events on a GPU,
    wall time here), the video reads the finished ones at a block's hand-off; a decode that fails adds none."""
    load_pack()
    from longlive_core import Prompt, RunHooks, Video, VideoSettings, hashed_embeds
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes.decode import new_stream, stream_decode

    video = Video.open(random_model(TINY), VideoSettings(("tiny",), 1, 96, 64, 9, 3, "recache", 0, "t"), fast=False)
    stream = video.decoder("wan", lambda: new_stream(tiny_vae))
    calls = []

    def decode(latents):
        calls.append(latents.shape[1])
        if len(calls) == 3:
            raise RuntimeError("decode failed")
        images = stream_decode(tiny_vae, latents.movedim(1, 2)[:, :16], stream)
        return lambda: images

    def embed(text):
        return hashed_embeds(text, TINY.text_dim)

    video.schedule([Prompt(0, "a boy")], 9, embed)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="decode failed"):
        video.run(9, live=False, hooks=RunHooks(embed_text=embed, decode=decode))
    assert calls == [3, 3, 3] and video.stats.last_decode_ms > 0
    assert stream.timing.take_ms() is None  # the two hand-offs read both decodes; the failed third added none


def compiled_graphs() -> int:
    """Frames torch.compile has compiled in this process so far (dynamo's count)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def run_counting_compiles(video, decoder, frames: int, counts: list, live: bool = False) -> tuple:
    """A run of `frames` latent frames decoded by `decoder` (a BlockDecoder), adding dynamo's count of compiled
    frames before and after the decoder's readying to `counts` (twice the count before, where nothing needed
    readying); the run's latents and images."""
    from longlive_core import Prompt, RunHooks, hashed_embeds
    from longlive_core.tools.synthetic import TINY

    def ready():
        counts.append(compiled_graphs())
        work = decoder.readying()
        if work is None:
            counts.append(compiled_graphs())
            return None

        def counted():
            work()
            counts.append(compiled_graphs())

        return counted

    def embed(text):
        return hashed_embeds(text, TINY.text_dim)

    video.schedule([Prompt(0, "a boy")], frames, embed)
    return video.run(frames, live=live, hooks=RunHooks(embed_text=embed, decode=decoder, ready_decode=ready))


def test_a_compiled_decode_is_compiled_before_the_first_block_and_no_block_compiles(comfy, tiny_vae):
    """compile_vae: the sampler's decoder compiles its steady chunk inside the run, beside the generation of its first
    blocks and before any is decoded (once per process, decoder and block shape, counted in the stats); the video's
    own stream then compiles nothing and gives the plain decoder's frames, in order. A run that continues the
    video's decode does not ready it again."""
    load_pack()
    from longlive_core import Video, VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes.decode import new_stream, raw_latents, stream_decode
    from longlive_pack.nodes.outputs import BlockDecoder, Files

    settings = VideoSettings(("tiny",), 1, 80, 48, 9, 3, "recache", 0, "warm")  # latents 6 x 10: no other test's
    video = Video.open(random_model(TINY), settings, fast=False)
    decoder = BlockDecoder(video, tiny_vae, True, Files(video, [], 1, 80, 48), keep_images=True, live=False)
    counts = []
    latents, images = run_counting_compiles(video, decoder, 9, counts)
    assert counts[1] > counts[0] and compiled_graphs() == counts[1]  # compiled before block 0, nothing after
    assert video.stats.decoder_beside_s > 0 and video.stats.decoder_warm_up_s >= 0
    plain = stream_decode(tiny_vae, raw_latents(latents), new_stream(tiny_vae))
    torch.testing.assert_close(images, plain, rtol=1e-4, atol=1e-4)

    run_counting_compiles(video, decoder, 3, counts)  # continues the decode: its stream is under way
    assert len(counts) == 4 and counts[3] == counts[2] == compiled_graphs() and video.stats.decoder_warm_up_s is None


def tiny_wrapper(fast: bool = False):
    """A tiny model as the loader hands it over, with ComfyUI's ModelPatcher (on the CPU)."""
    import comfy.model_patcher
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes.loader import Holder
    from longlive_pack.nodes.state import LongLiveModel

    net = random_model(TINY)
    return LongLiveModel(net, fast=fast, signature=("tiny",),
                         patcher=comfy.model_patcher.ModelPatcher(Holder(net), load_device=torch.device("cpu"),
                                                                  offload_device=torch.device("cpu")))


def test_the_samplers_hooks_ready_the_decoder_beside_the_blocks_only_while_comfyui_holds_the_whole_model(comfy,
                                                                                                    tiny_vae):
    """The sampler's RunHooks: `beside` true while ComfyUI's model management holds the whole model loaded; where
    loading the VAE for the readying finds the model unloaded, the run readies it on its own thread and the model
    is loaded again before the next block."""
    load_pack()
    import comfy.model_management as mm
    from longlive_core import Video, VideoSettings
    from longlive_pack.nodes.outputs import BlockDecoder, Files
    from longlive_pack.nodes.sampler import load, run_hooks
    from longlive_pack.nodes.state import PromptList

    model = tiny_wrapper()
    load(model)
    video = Video.open(model.model, VideoSettings(("tiny",), 1, 128, 48, 9, 3, "recache", 0, "hooks"), False)
    decoder = BlockDecoder(video, tiny_vae, True, Files(video, [], 1, 128, 48), keep_images=True, live=False)
    hooks = run_hooks(video, model, PromptList([]), decoder, 1, None)
    assert hooks.ready_decode() is not None and hooks.beside()  # compile_vae: its steady chunk to compile
    mm.unload_all_models()
    assert hooks.ready_decode() is not None and not hooks.beside()
    hooks.prepare()  # before the next block
    assert hooks.beside()


class Published:
    """A session's viewers as the decoder hands them frames (viewer.Channel.publish, which needs a running server):
    what it was handed, in order."""

    fps = 16

    def __init__(self):
        self.calls, self.frames = [], []

    def publish(self, frames: torch.Tensor, first_frame: int, posted, paced: bool) -> None:
        self.calls.append((first_frame, frames.shape[0], paced))
        self.frames.append(frames.clone())


def test_a_live_block_is_decoded_and_handed_to_the_viewers_a_latent_frame_at_a_time(comfy, tiny_vae):
    """With the Wan decoder a live run decodes each block a latent frame at a time and hands each piece on as soon
    as it is on the host (a prompt's first frames show after a third of its block's decode): the video's first
    frame, then pieces of 4 frames, in order, each frame once. The pieces' steady chunk is compiled before block 0
    and no block compiles; the frames are those of the plain decoder."""
    load_pack()
    from longlive_core import Video, VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes.decode import new_stream, raw_latents, stream_decode
    from longlive_pack.nodes.outputs import BlockDecoder, Files

    settings = VideoSettings(("tiny",), 1, 96, 48, 9, 3, "recache", 0, "pieces")  # latents 6 x 12: no other test's
    video = Video.open(random_model(TINY), settings, fast=False)
    decoder = BlockDecoder(video, tiny_vae, True, Files(video, [], 1, 96, 48), keep_images=True, live=True)
    decoder.channel = Published()
    counts = []
    latents, images = run_counting_compiles(video, decoder, 9, counts, live=True)
    assert counts[1] > counts[0] and compiled_graphs() == counts[1]  # compiled before block 0, nothing after
    assert decoder.channel.calls == [(0, 1, True)] + [(1 + 4 * i, 4, True) for i in range(8)]
    plain = stream_decode(tiny_vae, raw_latents(latents), new_stream(tiny_vae))
    torch.testing.assert_close(images, plain, rtol=1e-4, atol=1e-4)


def test_a_live_block_interrupted_in_its_second_piece_is_decoded_whole_by_the_next_run(comfy, tiny_vae):
    """An interrupt inside a live block's second piece (ComfyUI's ops raise it in the decoder) hands on none of that
    block: its decode goes back to before the block, and the next run decodes the block whole before its own, so the
    viewers get every frame once, in order, and the frames are those of one plain decode."""
    load_pack()
    import comfy.model_management as mm

    from longlive_core import Video, VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes.decode import new_stream, raw_latents, stream_decode
    from longlive_pack.nodes.outputs import BlockDecoder, Files

    video = Video.open(random_model(TINY), VideoSettings(("tiny",), 1, 96, 48, 9, 3, "recache", 0, "cut piece"),
                       fast=False)
    decoder = BlockDecoder(video, tiny_vae, False, Files(video, [], 1, 96, 48), keep_images=True, live=True)
    decoder.channel = Published()
    calls = []

    def interrupt_in_the_second_piece_of_block_1(module, args):
        calls.append(1)
        if len(calls) == 5:  # block 0: calls 1-3, block 1: 4-6
            mm.interrupt_current_processing(True)  # as POST /interrupt does; the next op raises

    hook = tiny_vae.first_stage_model.decoder.upsamples[1].register_forward_pre_hook(
        interrupt_in_the_second_piece_of_block_1)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_counting_compiles(video, decoder, 6, [], live=True)
        latents, images = run_counting_compiles(video, decoder, 3, [], live=True)
    finally:
        hook.remove()
    assert decoder.channel.calls == [(0, 1, True)] + [(1 + 4 * i, 4, True) for i in range(8)]
    plain = stream_decode(tiny_vae, raw_latents(latents), new_stream(tiny_vae))
    assert latents.shape[1] == 9
    torch.testing.assert_close(images, plain, rtol=1e-4, atol=1e-4)
    shown = torch.cat(decoder.channel.frames).float() / 255
    torch.testing.assert_close(shown, plain, rtol=0, atol=0.5 / 255 + 1e-6)


def test_an_eager_decode_on_the_cpu_is_not_warmed_up(comfy, tiny_vae):
    """compile_vae off: only a GPU has cuDNN plans to find before the first block, so on the CPU the run warms
    nothing up (no decode of a scratch video) and says so in its stats."""
    load_pack()
    from longlive_core import Video, VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes.outputs import BlockDecoder, Files

    video = Video.open(random_model(TINY), VideoSettings(("tiny",), 1, 80, 48, 9, 3, "recache", 0), fast=False)
    decoder = BlockDecoder(video, tiny_vae, False, Files(video, [], 1, 80, 48), keep_images=False, live=False)
    counts = []
    run_counting_compiles(video, decoder, 6, counts)
    assert video.stats.decoder_warm_up_s is None and counts[0] == counts[1]
    assert not decoder.stream.is_warm(tiny_vae.first_stage_model, (1, 16, 3, 6, 10), fast=False)


def test_a_decode_under_way_is_compiled_before_the_run_and_no_block_compiles(comfy, tiny_vae):
    """A session's decode stream under way when the run starts (here past its first block, as one restored from a
    save after a restart: its cache comes back with the strides it had) is readied as a new one is: the steady
    chunk compiles before block 0, and no block compiles; the frames go on from where the stream was. (A stream
    whose eager decodes went past its first block holds entries of other strides, and compiles again.)"""
    load_pack()
    from longlive_core import Video, VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes.decode import new_stream, raw_latents, stream_decode
    from longlive_pack.nodes.outputs import BlockDecoder, Files

    settings = VideoSettings(("tiny",), 1, 112, 48, 9, 3, "recache", 0, "under way")  # latents 6 x 14: no other test's
    video = Video.open(random_model(TINY), settings, fast=False)
    decoder = BlockDecoder(video, tiny_vae, True, Files(video, [], 1, 112, 48), keep_images=True, live=False)
    plain, vae = new_stream(tiny_vae), tiny_vae.first_stage_model
    earlier = torch.randn(1, 16, 3, 6, 14, generator=torch.Generator().manual_seed(3))  # the video's first block
    with torch.inference_mode():
        for stream in (decoder.stream, plain):  # as a compiled stream decodes it: eagerly, channels-last
            stream.decode(vae, earlier, channels_last_3d=True)
    counts = []
    latents, images = run_counting_compiles(video, decoder, 9, counts)
    assert counts[1] > counts[0] and compiled_graphs() == counts[1]  # compiled before block 0, nothing after
    assert video.stats.decoder_beside_s > 0
    run_counting_compiles(video, decoder, 3, counts)  # the next run: readied already
    assert compiled_graphs() == counts[1] and video.stats.decoder_warm_up_s is None
    torch.testing.assert_close(images, stream_decode(tiny_vae, raw_latents(latents), plain), rtol=1e-4, atol=1e-4)


def test_a_compiled_decode_of_another_length_compiles_nothing_more(tiny_vae):
    """LongLive VAE Decode's `compile` decodes a whole LATENT a call: a video of another length (the same chunk
    shapes: a 3-frame steady chunk and a 2-frame last one) runs the code compiled for the first, with the frames of
    the plain decoder."""
    from comfy.ldm.wan.vae import count_conv3d

    from longlive_core.vae.stream import DecodeStream

    vae = tiny_vae.first_stage_model
    z = torch.randn(1, 16, 12, 4, 9, generator=torch.Generator().manual_seed(4))  # 4 x 9: no other test's
    with torch.inference_mode():
        DecodeStream(count_conv3d(vae.decoder)).decode(vae, z[:, :, :9], fast=True)
        before = compiled_graphs()
        got = DecodeStream(count_conv3d(vae.decoder)).decode(vae, z, fast=True)
        want = DecodeStream(count_conv3d(vae.decoder)).decode(vae, z)
    assert compiled_graphs() == before
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_restored_compiled_decode_compiles_nothing_more_and_goes_on_with_the_same_frames(tiny_vae):
    """A session saved and restored (its decoder's cache through export_state / import_state, stored contiguous as
    runtime/durable.py stores it) comes back with the strides it had, so the steady chunk compiled for the stream
    serves it too (a cache of other strides would compile again: 5-8 s at 480x832 on the H200), and its frames are
    those of the stream that was not saved."""
    from comfy.ldm.wan.vae import count_conv3d

    from longlive_core.vae.stream import DecodeStream

    vae = tiny_vae.first_stage_model
    z = torch.randn(1, 16, 12, 5, 7, generator=torch.Generator().manual_seed(2))  # 5 x 7: no other test's
    kept = DecodeStream(count_conv3d(vae.decoder))
    with torch.inference_mode():
        for part in z[:, :, :9].split(3, dim=2):
            kept.decode(vae, part, fast=True)
        tensors, fields = json_round_trip(kept.export_state())
        restored = DecodeStream(len(kept.cache))
        restored.import_state({k: v.contiguous() for k, v in tensors.items()}, fields, torch.device("cpu"))
        before = compiled_graphs()
        got, want = (stream.decode(vae, z[:, :, 9:], fast=True) for stream in (restored, kept))
    assert compiled_graphs() == before
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def json_round_trip(state: tuple) -> tuple:
    """A stream's export_state as a save holds it: its fields through JSON (the file's metadata)."""
    import json

    tensors, fields = state
    return tensors, json.loads(json.dumps(fields))


def test_a_warmed_up_wan22_stream_compiles_nothing_and_gives_the_plain_frames(tiny_wan22):
    from comfy.ldm.wan.vae2_2 import count_conv3d

    from longlive_core.vae.stream22 import Wan22DecodeStream

    z = torch.randn(1, 48, 16, 3, 5, generator=torch.Generator().manual_seed(1))  # 3 x 5: no other test's
    plain, fast = (Wan22DecodeStream(count_conv3d(tiny_wan22.decoder)) for _ in range(2))
    with torch.inference_mode():
        assert not fast.is_warm(tiny_wan22, (1, 48, 8, 3, 5))
        before = compiled_graphs()
        fast.warm_up(tiny_wan22, torch.zeros(1, 48, 8, 3, 5))
        assert compiled_graphs() > before and fast.is_warm(tiny_wan22, (1, 48, 8, 3, 5))
        assert fast.cache == [None] * len(fast.cache)  # the stream itself is left as it was
        warmed = compiled_graphs()
        for part in z.split(8, dim=2):
            torch.testing.assert_close(fast.decode(tiny_wan22, part, fast=True), plain.decode(tiny_wan22, part),
                                       rtol=1e-4, atol=1e-4)
    assert compiled_graphs() == warmed


def test_a_full_disk_fails_the_video_file_naming_it(comfy):
    """/dev/full answers every write with ENOSPC: the encoder thread's error reaches the run at its next write or at
    the file's close, naming the file and the fix."""
    load_pack()
    from longlive_pack.nodes.recording import FileSpec, Recording, RecordingError

    recording = Recording(FileSpec("/dev/full", "full.mp4", ""), 96, 64)
    frames = torch.randint(0, 255, (12, 64, 96, 3), dtype=torch.uint8)
    with pytest.raises(RecordingError, match=r"could not write the video file /dev/full \(.+\); free disk space"):
        for _ in range(20):
            recording.write(frames)
        recording.close()
    recording.close()  # the error was reported: closing again is quiet
    with pytest.raises(RecordingError, match="the video file /dev/full is already finished"):
        recording.write(frames)


def test_a_sessions_appended_file_that_fails_is_let_go_and_the_other_files_get_the_frames(comfy, tmp_path):
    """A session appends to a file on a full disk (/dev/full) while a second Save node writes a file per run: the
    write that meets the error gives the other file its frames, then fails naming the full one, which the session
    lets go; the session's next run appends to a new file."""
    load_pack()
    import folder_paths

    from longlive_core import Video, VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes.outputs import APPEND, PER_RUN, Files, SaveRequest, _Kept
    from longlive_pack.nodes.recording import FileSpec, Recording, RecordingError

    video = Video(random_model(TINY), VideoSettings((), 1, 96, 64, 12, 3, "recache", 0, "appended"), fast=False)
    key = "file 6 test/appended"
    video.outputs[key] = _Kept([Recording(FileSpec("/dev/full", "full.mp4", ""), 96, 64)])
    requests = [SaveRequest("6", "test/appended", APPEND), SaveRequest("7", "test/per_run", PER_RUN)]
    frames = torch.randint(0, 255, (1, 12, 64, 96, 3), dtype=torch.uint8)
    saved = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        files = Files(video, requests, 1, 96, 64)
        written = 0
        with pytest.raises(RecordingError, match=r"could not write the video file /dev/full"):
            for _ in range(200):  # the encoder thread meets the error when its buffer first goes to the file
                written += 1
                files.write(frames)
                time.sleep(0.01)
        assert key not in video.outputs
        (per_run,) = files.finish()["7"]
        assert mp4_frame_count(per_run.path) == 12 * written  # the failing write's frames too
        files = Files(video, requests[:1], 1, 96, 64)
        files.write(frames)
        (appended,) = video.outputs[key].recordings
        assert appended.spec.path.startswith(str(tmp_path))
        video.close_outputs()
        assert mp4_frame_count(appended.spec.path) == 12
    finally:
        folder_paths.set_output_directory(saved)


def test_a_save_node_refused_after_another_leaves_no_file_open_or_behind(comfy, tmp_path):
    """Two LongLive Save Video nodes, the second with a prefix that leaves the output folder: the run is refused
    naming it, and the file opened for the first (one per run, or the session's appended one) is closed, deleted and
    forgotten."""
    import threading

    load_pack()
    import folder_paths

    from longlive_core import Video, VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes.outputs import APPEND, PER_RUN, Files, SaveRequest

    video = Video(random_model(TINY), VideoSettings((), 1, 96, 64, 12, 3, "recache", 0, "refused"), fast=False)
    saved = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        for mode in (PER_RUN, APPEND):
            requests = [SaveRequest("6", "test/first", mode), SaveRequest("7", "../outside", PER_RUN)]
            with pytest.raises(ConfigError, match="filename_prefix '../outside'"):
                Files(video, requests, 1, 96, 64)
            assert not [t for t in threading.enumerate() if t.name.startswith("longlive-encode first_")]
            assert not list(tmp_path.rglob("*.mp4")) and video.outputs == {}
    finally:
        folder_paths.set_output_directory(saved)


def mp4_frame_count(path: str) -> int:
    import av

    with av.open(path) as container:
        return sum(1 for _ in container.decode(video=0))


def test_a_viewer_that_stops_reading_has_its_frames_dropped_and_counted(comfy):
    """A client whose socket stopped taking frames (its pump is stuck in a send): the channel keeps offering it
    frames without waiting; past its queue they are dropped and the next frame it gets says how many."""
    import asyncio

    load_pack()
    from longlive_pack.nodes.viewer import CLIENT_QUEUE, Client

    class Socket:  # what the pump sends to: the frames a client would receive
        def __init__(self):
            self.messages = []

        async def send_bytes(self, data: bytes) -> None:
            self.messages.append(data)

    async def wait_until(condition) -> None:
        while not condition():
            await asyncio.sleep(0.01)

    async def scenario() -> list[dict]:
        socket = Socket()
        client = Client(socket)
        for frame in range(CLIENT_QUEUE + 10):  # nobody sends: the queue fills, then frames drop
            client.offer({"frame": frame}, b"jpeg")
        assert client.dropped == 10
        pump = asyncio.create_task(client.pump())  # the socket takes frames again
        await asyncio.wait_for(wait_until(lambda: len(socket.messages) == CLIENT_QUEUE), 10)
        client.offer({"frame": CLIENT_QUEUE + 10}, b"jpeg")
        await asyncio.wait_for(wait_until(lambda: len(socket.messages) == CLIENT_QUEUE + 1), 10)
        pump.cancel()
        return [json.loads(m[4:4 + int.from_bytes(m[:4], "big")]) for m in socket.messages]

    headers = asyncio.run(scenario())
    assert [h["frame"] for h in headers] == [*range(CLIENT_QUEUE), CLIENT_QUEUE + 10]
    assert {h["dropped"] for h in headers} == {10}


def test_a_session_being_saved_is_not_deleted_and_routes_take_its_id_as_the_nodes_do(comfy):
    """DELETE while a save holds the video (it would write the file after the delete forgot it, and the next run would
    resume the deleted video) is refused, and DELETE of all sessions keeps it; once the save is done it deletes. An id with spaces around it names the
    session the sampler made of it (stripped)."""
    import asyncio

    from aiohttp.test_utils import make_mocked_request

    load_pack()
    from longlive_core import Video, VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes.routes import delete_all, delete_session
    from longlive_pack.nodes.state import SESSIONS

    def delete(session_id: str | None) -> tuple[int, dict]:
        """DELETE one session, or (None) all of them."""
        match = {} if session_id is None else {"session_id": session_id}
        request = make_mocked_request("DELETE", "/longlive/sessions/x", match_info=match)
        response = asyncio.run(delete_all(request) if session_id is None else delete_session(request))
        return response.status, json.loads(response.text)

    video = Video(random_model(TINY), VideoSettings((), 1, 96, 64, 12, 3, "recache", 0, "saving"), fast=False)
    SESSIONS.put("saving", video, 0)
    try:
        with video.busy:  # as a save holds it
            status, body = delete("saving")
            assert delete(None)[1]["kept_running"] == ["saving"]
        assert status == 409 and body["error"] == ("session 'saving' is in use by a run or a decode, or being saved; "
                                                   "delete it once that is done")
        video.claim()  # as a sampler run holds it from its opening, before its run starts
        try:
            assert delete("saving") == (status, body) and delete(None)[1]["kept_running"] == ["saving"]
        finally:
            video.unclaim()
        closed_on = []
        video.outputs["file"] = types.SimpleNamespace(close=lambda: closed_on.append(threading.current_thread()))
        assert delete(" saving ") == (200, {"deleted": "saving"})
        assert not video.busy.locked() and closed_on and closed_on[0] is not threading.main_thread()  # not the loop's
        assert delete("saving")[0] == 404
        release, making = threading.Event(), threading.Thread(  # a sampler run making the session
            target=SESSIONS.get_or_create, args=("saving", lambda: release.wait(10) and video, lambda v: 0))
        making.start()
        try:
            wait_until = time.monotonic() + 10
            while "saving" not in SESSIONS and time.monotonic() < wait_until:
                time.sleep(0.01)
            assert delete("saving") == (409, body)  # not the save file either: the run may be resuming from it
        finally:
            release.set()
            making.join()
        assert delete("saving") == (200, {"deleted": "saving"})
    finally:
        SESSIONS.delete("saving")


def test_a_delete_clears_an_evicted_id_and_a_reset_waits_for_a_save_under_way(comfy):
    """DELETE of an id the memory cap evicted answers 200 and lets a later run start it anew (it kept refusing
    before); a reset (the sampler's, LongLive Session Reset) frees a session once a save holding it is done, so the
    save cannot write the freed video back."""
    import asyncio

    from aiohttp.test_utils import make_mocked_request

    load_pack()
    from longlive_core import SessionEvictedError, UnknownSessionError, Video, VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes.routes import delete_session
    from longlive_pack.nodes.state import SESSIONS, free_session

    def video(key: str) -> Video:
        return Video(random_model(TINY), VideoSettings((), 1, 96, 64, 12, 3, "recache", 0, key), fast=False)

    SESSIONS.put("evicted", video("evicted"), SESSIONS.cap)
    SESSIONS.put("newer", video("newer"), SESSIONS.cap)  # over the cap: the older one goes
    try:
        with pytest.raises(SessionEvictedError):
            SESSIONS.get("evicted")
        request = make_mocked_request("DELETE", "/longlive/sessions/x", match_info={"session_id": "evicted"})
        response = asyncio.run(delete_session(request))
        assert (response.status, json.loads(response.text)) == (200, {"deleted": "evicted"})
        with pytest.raises(UnknownSessionError):
            SESSIONS.get("evicted")
        saving = SESSIONS.get("newer")
        saving.busy.acquire()  # a save under way, done in 0.3 s
        threading.Timer(0.3, saving.busy.release).start()
        start = time.monotonic()
        assert free_session("newer") and time.monotonic() - start >= 0.25 and "newer" not in SESSIONS
    finally:
        SESSIONS.delete("newer")


def test_a_new_viewer_is_a_client_of_its_channel_before_any_prune(comfy, monkeypatch):
    """channel() adds a new viewer under the lock that pruning takes: a watcher of an id no session has yet (the
    panel opened before the first run) keeps its channel while it waits for its socket."""
    import asyncio

    load_pack()
    import server
    from longlive_pack.nodes import viewer

    loop = asyncio.new_event_loop()
    monkeypatch.setattr(server.PromptServer, "instance", types.SimpleNamespace(loop=loop), raising=False)
    client = viewer.Client(object())
    try:
        made = viewer.channel("not yet", client)
        viewer._prune()
        assert viewer.CHANNELS["not yet"] is made and made.clients == {client}
        made.clients.clear()
        viewer._prune()
        assert "not yet" not in viewer.CHANNELS
    finally:
        viewer.CHANNELS.pop("not yet", None)
        loop.close()


def test_a_session_deleted_as_a_run_claims_it_is_made_anew_for_the_run(comfy):
    """The sampler claims its named video (a DELETE then refuses it); a DELETE that freed it just before the claim
    leaves the run a new video, not the freed one."""
    load_pack()
    from longlive_core import Video, VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes.state import claim_session
    from longlive_pack.nodes.state import SESSIONS

    settings = VideoSettings((), 1, 96, 64, 12, 3, "recache", 0, "claimed")
    freed = Video(random_model(TINY), settings, fast=False)
    SESSIONS.put("claimed", freed, 0)
    claim = freed.claim

    def deleted_first():  # a DELETE between the registry's lookup and the claim
        SESSIONS.delete("claimed")
        claim()

    freed.claim = deleted_first
    made = []

    def make() -> Video:
        made.append(Video(freed.session.model, settings, fast=False))
        return made[-1]

    try:
        video, created = claim_session("claimed", make)
        assert video is made[0] and created and video.claims == 1 and freed.claims == 0
        assert SESSIONS.holds("claimed", video)
    finally:
        SESSIONS.delete("claimed")


def test_the_viewer_forgets_idle_channels_of_ids_that_name_no_session(comfy):
    """A channel stays while it has a viewer, a frame on its way, or a session of its id; others go, so watching
    ever new ids does not grow the server's memory."""
    import asyncio

    load_pack()
    from longlive_core import Video, VideoSettings
    from longlive_core.tools.synthetic import TINY, random_model
    from longlive_pack.nodes import viewer
    from longlive_pack.nodes.state import SESSIONS

    loop = asyncio.new_event_loop()
    channels = {key: viewer.Channel(key, loop) for key in ("gone", "watched", "sending", "held")}
    channels["watched"].clients.add(object())
    channels["sending"].waiting.append(({}, b"jpeg"))
    video = Video(random_model(TINY), VideoSettings((), 1, 96, 64, 12, 3, "recache", 0, "held"), fast=False)
    SESSIONS.put("held", video, 0)
    before = dict(viewer.CHANNELS)
    try:
        viewer.CHANNELS.clear()
        viewer.CHANNELS.update(channels)
        viewer._prune()
        assert sorted(viewer.CHANNELS) == ["held", "sending", "watched"]
        SESSIONS.delete("held")
        channels["watched"].clients.clear()
        viewer._prune()
        assert sorted(viewer.CHANNELS) == ["sending"]
    finally:
        SESSIONS.delete("held")
        viewer.CHANNELS.clear()
        viewer.CHANNELS.update(before)
        loop.close()


@pytest.fixture
def tiny_wan22(comfy):
    """ComfyUI's Wan 2.2 VAE module (LongLive 2.0's), narrow, with random weights."""
    from comfy.ldm.wan.vae2_2 import WanVAE

    torch.manual_seed(0)
    vae = WanVAE(dim=8, dec_dim=8, z_dim=48, dim_mult=[1, 2, 2], num_res_blocks=1,
                 temperal_downsample=[False, True, True]).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return vae


@pytest.mark.parametrize("cast", [False, True], ids=["resident", "comfy-cast weights"])
@torch.no_grad()
def test_steady_decode22_equals_the_wan22_decoder(tiny_wan22, cast):
    """The Wan 2.2 decoder's steady path: its up blocks' upsampled shortcuts, its 12-channel head; within float32
    rounding with resident weights (sub-pixel upsamplers), exactly with ComfyUI-cast weights."""
    from comfy.ldm.wan.vae2_2 import count_conv3d

    from longlive_core.vae.stream import is_steady, steady_decode22

    vae = tiny_wan22
    set_comfy_cast(vae.decoder, cast)
    try:
        x = vae.conv2(torch.randn(1, 48, 6, 3, 4, generator=torch.Generator().manual_seed(2)))
        theirs, ours = ([None] * count_conv3d(vae.decoder) for _ in range(2))
        for i, part in enumerate((x[:, :, :1], x[:, :, 1:2])):  # the video's first chunk, then the 'Rep' marks go
            assert not is_steady(ours)
            torch.testing.assert_close(vae.decoder(part, feat_cache=ours, feat_idx=[0], first_chunk=i == 0),
                                       vae.decoder(part, feat_cache=theirs, feat_idx=[0], first_chunk=i == 0),
                                       rtol=0, atol=0)
        assert is_steady(ours)
        tol = 0 if cast else 1e-4
        for part in (x[:, :, 2:3], x[:, :, 3:5], x[:, :, 5:6]):
            want = vae.decoder(part, feat_cache=theirs, feat_idx=[0])
            torch.testing.assert_close(steady_decode22(vae.decoder, part, ours), want, rtol=tol, atol=tol)
            for a, b in zip(ours, theirs):
                torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    finally:
        set_comfy_cast(vae.decoder, False)


def test_compiled_wan22_stream_gives_the_same_frames(tiny_wan22):
    from comfy.ldm.wan.vae2_2 import count_conv3d

    from longlive_core.vae.stream22 import Wan22DecodeStream

    z = torch.randn(1, 48, 10, 3, 4, generator=torch.Generator().manual_seed(1))
    plain, fast = (Wan22DecodeStream(count_conv3d(tiny_wan22.decoder)) for _ in range(2))
    with torch.no_grad():
        for part in z.split([8, 2], dim=2):  # a block of 8 (its first frame alone), then more
            torch.testing.assert_close(fast.decode(tiny_wan22, part, fast=True), plain.decode(tiny_wan22, part),
                                       rtol=1e-4, atol=1e-4)


def test_wan22_decode_in_pieces_equals_comfys_full_decode(tiny_wan22):
    """LongLive 2.0's decode: the Wan 2.2 VAE (48 channels) continued across calls gives the frames of ComfyUI's
    one-piece decode (the first latent frame 1 pixel frame, later ones 4); an interrupt leaves the stream as it was."""
    from comfy.ldm.wan.vae2_2 import count_conv3d

    from longlive_core.vae.stream22 import Wan22DecodeStream

    vae = tiny_wan22
    z = torch.randn(1, 48, 6, 3, 4)
    with torch.no_grad():
        full = vae.decode(z)
        stream = Wan22DecodeStream(count_conv3d(vae.decoder))
        pieces = [stream.decode(vae, part) for part in z.split([1, 2, 2, 1], dim=2)]
    assert [p.shape[2] for p in pieces] == [1, 8, 8, 4] and full.shape[2] == 21  # 4T - 3
    torch.testing.assert_close(torch.cat(pieces, dim=2), full, rtol=1e-5, atol=1e-5)

    fresh = Wan22DecodeStream(count_conv3d(vae.decoder))
    calls = []

    def interrupt_in_the_second_frame(*_):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as ComfyUI's interrupt raises inside a node

    hook = vae.decoder.upsamples[1].register_forward_pre_hook(interrupt_in_the_second_frame)
    with pytest.raises(KeyboardInterrupt), torch.no_grad():
        fresh.decode(vae, z[:, :, :2])
    hook.remove()
    with torch.no_grad():
        torch.testing.assert_close(fresh.decode(vae, z[:, :, :3]), full[:, :, :9], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match=r"the Wan 2.2 VAE decodes latents \[B, 48, T, h, w\]; got \[1, 16, 3, 3, 4\]"):
        fresh.decode(vae, torch.zeros(1, 16, 3, 3, 4))
    saved = fresh.export_state()  # a session's save (runtime/durable.py) holds this; a restart decodes on from it
    resumed = Wan22DecodeStream(count_conv3d(vae.decoder))
    resumed.import_state(*saved, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(resumed.decode(vae, z[:, :, 3:]), full[:, :, 9:], rtol=1e-5, atol=1e-5)
