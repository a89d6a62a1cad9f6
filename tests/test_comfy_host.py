"""The pack inside a real ComfyUI 0.3.75 server on the CPU, driven through its HTTP API.

Tiny random-weight files in the real formats stand in for LongLive-1.3B, its LoRA and the Wan VAE.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "examples"))
from api_client import continuation_graphs  # noqa: E402
from host import (ComfyHost, FrameWatcher, comfy_dir, error_of, make_tiny_models, output_files,  # noqa: E402
                  write_tiny_wan_vae)
from run_main import tiny_graph  # noqa: E402
from workflow_format import ui_to_api  # noqa: E402

WORKFLOWS = sorted(p for p in (REPO / "workflows" / "api").glob("*.json") if p.stem != "longlive_live")  # own test
ABSENT_GPU = f"cuda:{torch.cuda.device_count()}"  # one past this machine's CUDA devices


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    names = make_tiny_models(base / "models", v2=True)
    shutil.copy(base / "models" / "vae" / names["vae"], base / "models" / "diffusion_models" / "not_a_model.safetensors")
    with ComfyHost(base, extra_args=["--preview-method", "auto"]) as server:
        server.names = names
        yield server


def graph_of(host, name: str, width: int = 96, height: int = 64, **sampler) -> dict:
    graph = tiny_graph(json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text()), host.names, width, height)
    graph["4"]["inputs"].update(sampler)
    return graph


def with_decode_node(graph: dict, session_id: str) -> dict:
    """The sampler's LATENT decoded by LongLive VAE Decode (node 6) and saved as lossless WEBP (node 7), in place of
    the sampler's own decode and LongLive Save Video."""
    graph = copy.deepcopy(graph)
    graph["4"]["inputs"].pop("vae", None)
    graph["6"] = {"class_type": "LongLive_VAEDecode", "inputs": {"vae": ["5", 0], "samples": ["4", 0],
                                                               "session_id": session_id, "compile": False,
                                                               "decoder": "wan vae"}}
    graph["7"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["6", 0], "filename_prefix": "test/node",
                                                            "fps": 16.0, "lossless": True, "quality": 100,
                                                            "method": "fastest"}}
    return graph


def with_latent_output(graph: dict, prefix: str) -> dict:
    graph = copy.deepcopy(graph)
    graph["99"] = {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": prefix}}
    return graph


def run_ok(host, graph: dict) -> dict:
    entry = host.run(graph, timeout=600)
    assert error_of(entry) is None, error_of(entry)
    return entry


def latents_of(host, entry) -> torch.Tensor:
    files = [f for out in entry["outputs"].values() for f in out.get("latents", [])]
    assert len(files) == 1
    f = files[0]
    return load_file(str(host.base / "output" / f["subfolder"] / f["filename"]))["latent_tensor"]


def video_of(host, entry) -> tuple[int, int, int]:
    import av

    (f,) = [f for f in output_files(entry) if f["filename"].endswith(".mp4")]
    with av.open(str(host.base / "output" / f["subfolder"] / f["filename"])) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(video=0)), stream.width, stream.height


def pixels_of(host, entry) -> torch.Tensor:
    """The frames of the run's saved MP4, [frames, H, W, 3] uint8."""
    import av

    (f,) = [f for f in output_files(entry) if f["filename"].endswith(".mp4")]
    with av.open(str(host.base / "output" / f["subfolder"] / f["filename"])) as container:
        return torch.stack([torch.from_numpy(frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)])


def failure(host, graph: dict) -> str:
    entry = host.run(graph, timeout=300)
    error = error_of(entry)
    assert error is not None and error["event"] == "execution_error", entry["status"]
    assert host.get("/system_stats")  # the server keeps serving
    return error["exception_message"]


# --- shipped workflows ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_makes_a_video(host, path):
    """Each API workflow on the tiny files. LongLive 2.0's (24 fps, blocks of 8): the Wan 2.2 VAE, which ComfyUI
    builds at full width, decodes about a latent frame in 5 s on a CPU, so the image-to-video one makes 16 latent
    frames, and the multi-shot one (its cuts at 10 and 15 s) its whole length as LATENT, undecoded."""
    v2 = path.stem.startswith("longlive2")
    size = (64, 32) if v2 else (96, 64)
    graph = graph_of(host, path.stem, *size, reset=True, **({"length": 16, "length_unit": "latent frames"}
                                                             if path.stem == "longlive2_image_to_video" else {}))
    sampler = graph["4"]["inputs"]
    fps, block = (24, 8) if v2 else (16, 3)
    latent = sampler["length"] if sampler["length_unit"] == "latent frames" else -(-sampler["length"] * fps // 4)
    latent = block * -(-int(latent) // block)
    if path.stem == "longlive2_multishot":
        sampler.pop("vae")
        del graph["6"]
        assert latents_of(host, run_ok(host, with_latent_output(graph, "test/multishot"))).shape[2] == latent == 120
        return
    frames, width, height = video_of(host, run_ok(host, graph))
    assert (frames, width, height) == (4 * latent - 3, *size)


@pytest.mark.parametrize("path", sorted((REPO / "workflows").glob("*.json")), ids=lambda p: p.stem)
def test_ui_workflows_are_the_api_workflows(host, path):
    info = host.get("/object_info")
    ui = json.loads(path.read_text())
    assert all(node["type"] in info for node in ui["nodes"])
    assert ui_to_api(ui, info) == json.loads((REPO / "workflows" / "api" / path.name).read_text())


def test_a_preview_and_a_progress_step_for_every_block(host):
    graph = graph_of(host, "longlive_interactive", session_id="", length=15, length_unit="latent frames")
    entry, events = host.run_listening(graph)
    assert error_of(entry) is None
    previews = [data for kind, data in events if kind == "binary" and b"\xff\xd8\xff" in data[:64]]
    progress = [data["value"] for kind, data in events if kind == "progress" and data.get("node") == "4"]
    assert progress == [1, 2, 3, 4, 5]
    assert len(previews) == 5


# --- sessions across queue runs ------------------------------------------------------------------


def test_three_runs_with_one_session_make_one_continuous_video(host):
    base = graph_of(host, "longlive_interactive")
    prompts = ["a corgi on a beach", "the corgi jumps into the waves", "the sun sets over the sea"]
    pieces, counts = [], []
    for i, graph in enumerate(continuation_graphs(base, prompts, "continuity")):
        entry = run_ok(host, with_latent_output(graph, f"test/continuity_{i}"))
        pieces.append(latents_of(host, entry))
        counts.append(video_of(host, entry)[0])
    assert counts == [81, 84, 84]  # 21 latent frames a run; the decoder continues its cache

    schedule = "\n".join(f"frame {21 * i}: {p}" for i, p in enumerate(prompts))
    whole = graph_of(host, "longlive_interactive", session_id="", length=63, length_unit="latent frames")
    whole["3"]["inputs"]["schedule"] = schedule
    entry = run_ok(host, with_latent_output(whole, "test/whole"))
    ref, ours = latents_of(host, entry), torch.cat(pieces, dim=2)
    assert ours.shape == ref.shape == (1, 16, 63, 8, 12)
    assert ((ours - ref).norm() / ref.norm()).item() < 1e-4
    assert video_of(host, entry)[0] == sum(counts)


def test_interrupt_mid_run_leaves_the_session_usable(host):
    graph = graph_of(host, "longlive_interactive", session_id="interrupt", reset=True, length=900,
                     length_unit="latent frames")
    interrupted(host, with_latent_output(graph, "test/interrupt"), "interrupt", 6)
    state = host.get("/longlive/sessions")["sessions"]["interrupt"]
    done = state["frames"]
    assert 0 < done < 900 and done % 3 == 0 and state["undelivered_frames"] == done

    graph = graph_of(host, "longlive_interactive", session_id="interrupt", length=3, length_unit="latent frames")
    entry = run_ok(host, with_latent_output(graph, "test/after_interrupt"))
    assert latents_of(host, entry).shape[2] == done + 3  # nothing generated is lost
    assert host.get("/longlive/sessions")["sessions"]["interrupt"]["undelivered_frames"] == 0


def test_a_session_that_is_generating_cannot_be_deleted_and_a_new_one_says_so(host):
    """DELETE during a run would lose its frames (its decode would then find no session): refused until the run
    ends. A named session the server does not know starts a new video, and the sampler says so."""
    graph = graph_of(host, "longlive_interactive", session_id="busy", reset=False, length=900,
                     length_unit="latent frames")
    prompt_id = host.queue(graph)
    wait_for(lambda: (s := live_state(host, "busy")) and s["frames"] >= 3)
    status, body = host.request("DELETE", "/longlive/sessions/busy")
    assert status == 409 and "is generating; wait for its run to end, or interrupt it" in body["error"]
    assert host.request("DELETE", "/longlive/sessions")[1]["kept_running"] == ["busy"]
    host.request("POST", "/interrupt", {})
    assert error_of(host.wait(prompt_id))["event"] == "execution_interrupted"
    assert host.request("DELETE", "/longlive/sessions/busy") == (200, {"deleted": "busy"})

    notes = []
    for _ in range(2):
        entry = run_ok(host, graph_of(host, "longlive_interactive", session_id="busy", reset=False, length=3,
                                      length_unit="latent frames"))
        notes += [text for out in entry["outputs"].values() for text in out.get("text", []) if "session" in text]
    assert notes[0].startswith("session 'busy' is new: this server had no session of that name")
    assert notes[1] == "session 'busy' continues at latent frame 3"


def test_session_routes(host):
    run_ok(host, graph_of(host, "longlive_interactive", session_id="routes", reset=True, length=3,
                          length_unit="latent frames"))
    listed = host.get("/longlive/sessions")["sessions"]["routes"]
    assert listed["frames"] == 3 and listed["settings"]["local_attn_size"] == 12 and listed["device"] == "cpu"
    assert listed["settings"]["model"][:2] == [host.names["model"], host.names["lora"]]
    assert host.request("DELETE", "/longlive/sessions/nope")[0] == 404
    assert host.request("DELETE", "/api/longlive/sessions/routes") == (200, {"deleted": "routes"})
    assert "routes" not in host.get("/longlive/sessions")["sessions"]


# --- bad input comes back as readable node errors --------------------------------------------------


def test_unknown_session_in_the_decoder(host):
    graph = with_decode_node(graph_of(host, "longlive_interactive", length=3, length_unit="latent frames"), "nope")
    assert "no session 'nope'; run the LongLive sampler with this session id first" in failure(host, graph)


def test_bad_schedule_text(host):
    graph = graph_of(host, "longlive_interactive")
    graph["3"]["inputs"]["schedule"] = "0: a dog\nlater: a cat"
    assert "schedule line 2 ('later: a cat') is not 'start: prompt'" in failure(host, graph)
    graph["3"]["inputs"]["schedule"] = "0: a dog\nframe 300: a cat"
    assert "starts at latent frame 300, but the video has only 21 latent frames" in failure(host, graph)


def test_wrong_model_file(host):
    graph = graph_of(host, "longlive_interactive")
    graph["1"]["inputs"]["model_name"] = "not_a_model.safetensors"
    message = failure(host, graph)
    assert "not_a_model.safetensors: not a Wan diffusion model" in message


def test_fp8_on_the_cpu_is_refused(host):
    graph = graph_of(host, "longlive_interactive")
    graph["1"]["inputs"]["precision"] = "fp8"
    assert "precision 'fp8' needs an NVIDIA GPU of compute capability 8.9" in failure(host, graph)


def test_int8_dynamic_through_the_server_stays_close_to_bf16(host):
    latents = []
    for precision in ("bf16", "int8 dynamic"):
        graph = graph_of(host, "longlive_interactive", session_id="", length=3, length_unit="latent frames")
        graph["1"]["inputs"]["precision"] = precision
        latents.append(latents_of(host, run_ok(host, with_latent_output(graph, precision.replace(" ", "_")))))
    bf16, int8 = latents
    assert bf16.shape == int8.shape
    assert 0 < ((int8 - bf16).norm() / bf16.norm()).item() < 0.1


def test_a_reloaded_model_continues_the_session_and_a_changed_one_is_refused(host):
    """After ComfyUI dropped its caches, the loaders load the same files again: the session and its decode go on
    (the second run's 3 latent frames give 12 pixel frames, not a new video's 9)."""
    first = graph_of(host, "longlive_interactive", session_id="reload", reset=True, length=3, length_unit="latent frames")
    assert video_of(host, run_ok(host, first))[0] == 9
    assert host.request("POST", "/free", {"free_memory": True, "unload_models": True})[0] == 200  # ComfyUI drops its caches
    again = graph_of(host, "longlive_interactive", session_id="reload", length=3, length_unit="latent frames")
    assert video_of(host, run_ok(host, again))[0] == 12
    assert "LongLive session 'reload' continues with the model loaded again" in host.log()
    assert host.get("/longlive/sessions")["sessions"]["reload"]["frames"] == 6
    again["1"]["inputs"]["lora_strength"] = 0.5
    assert "session 'reload' was made with other settings (model:" in failure(host, again)


def test_changed_settings_of_a_session(host):
    run_ok(host, graph_of(host, "longlive_interactive", session_id="sizes", reset=True, length=3,
                          length_unit="latent frames"))
    graph = graph_of(host, "longlive_interactive", session_id="sizes", width=128, length=3,
                     length_unit="latent frames")
    assert "session 'sizes' was made with other settings (width: 96 -> 128)" in failure(host, graph)
    graph["4"]["inputs"]["reset"] = True
    run_ok(host, graph)
    graph = graph_of(host, "longlive_interactive", session_id="sizes", width=128, length=3,
                     length_unit="latent frames", position_mode="relative")
    assert "other settings (position_mode: absolute -> relative); turn on reset" in failure(host, graph)


# --- live sessions -------------------------------------------------------------------------------


def wait_for(condition, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError("condition not met")


def live_state(host, key="live"):
    return host.get("/longlive/sessions")["sessions"].get(key)


def interrupted(host, graph: dict, session: str, frames: int) -> None:
    """Queues the graph, sends /interrupt once its session holds `frames` latent frames, and checks the run ended
    interrupted."""
    prompt_id = host.queue(graph)
    wait_for(lambda: (s := live_state(host, session)) and s["frames"] >= frames)
    host.request("POST", "/interrupt", {})
    assert error_of(host.wait(prompt_id))["event"] == "execution_interrupted"


def test_live_session_switches_at_the_next_block_and_stops(host):
    graph = graph_of(host, "longlive_live", reset=True, length=900, length_unit="latent frames")
    prompt_id = host.queue(with_latent_output(graph, "test/live"))
    wait_for(lambda: (s := live_state(host)) and s["state"] == "live" and s["frames"] >= 6)
    # the panel sends the text as it is typed: the run encodes it while it waits for its viewers
    assert host.request("POST", "/longlive/sessions/live/typed", {"text": " the boat sails out to sea "})[0] == 202
    wait_for(lambda: live_state(host)["typed_encoded"] == "the boat sails out to sea")
    status, body = host.request("POST", "/longlive/sessions/live/prompt",
                                {"text": "the boat sails out to sea", "blend_blocks": 2, "blend": "slerp"})
    assert status == 202
    switch = wait_for(lambda: live_state(host)["switches"])[0]
    assert switch["text"] == "the boat sails out to sea" and switch["encoded_ahead"] and switch["encode_ms"] == 0
    assert switch["frame"] in (body["at_frame"], body["at_frame"] + 3)  # the next block boundary
    status, body = host.request("POST", "/longlive/sessions/live/prompt", {"text": "cut: a city at night"})
    assert status == 400 and "scene cuts are LongLive 2.0's" in body["error"]
    assert host.request("DELETE", "/longlive/sessions/live")[0] == 409  # stop it first
    assert "live" in host.request("DELETE", "/longlive/sessions")[1]["kept_live"]
    assert host.request("POST", "/api/longlive/sessions/live/stop")[0] == 200
    status, body = host.request("POST", "/longlive/sessions/live/prompt", {"text": "after the stop"})
    assert status == 409 and ("its live run is ending" in body["error"] or "not generating live" in body["error"])
    entry = host.wait(prompt_id)
    assert error_of(entry) is None
    made = live_state(host)["frames"]
    assert made < 900 and latents_of(host, entry).shape[2] == made
    assert live_state(host)["state"] == "idle" and live_state(host)["last_switch_ms"] > 0
    assert live_state(host)["last_decode_ms"] > 0  # the sampler's decode, timed by its stream
    status, body = host.request("POST", "/longlive/sessions/live/prompt", {"text": "too late"})
    assert status == 409 and "not generating live" in body["error"]


def test_a_stop_while_a_live_run_sends_its_last_frames_ends_the_run(host):
    """A live run's last frames leave at the video's rate after its last block (state "ending"); a stop then ends
    that wait instead of being refused."""
    graph = graph_of(host, "longlive_live", session_id="ending", reset=True, length=6, length_unit="latent frames")
    prompt_id = host.queue(graph)
    wait_for(lambda: (s := live_state(host, "ending")) and s["state"] == "ending")
    status, body = host.request("POST", "/longlive/sessions/ending/stop")
    assert status == 200 and body["at_frame"] == 6
    assert error_of(host.wait(prompt_id)) is None
    assert live_state(host, "ending")["state"] == "idle"


def test_live_routes_refuse_bad_requests(host):
    run_ok(host, graph_of(host, "longlive_interactive", session_id="idle", reset=True, length=3,
                          length_unit="latent frames"))
    cases = [
        ("/longlive/sessions/nope/prompt", {"text": "x"}, None, 404, "no session 'nope'"),
        ("/longlive/sessions/idle/prompt", None, b"{not json", 400, "must be JSON"),
        ("/longlive/sessions/idle/prompt", {"text": "  "}, None, 400, "non-empty string"),
        ("/longlive/sessions/idle/prompt", {"text": 5}, None, 400, "non-empty string"),
        ("/longlive/sessions/idle/prompt", {"text": "x" * 2001}, None, 400, "2001 characters; the limit is 2000"),
        ("/longlive/sessions/idle/prompt", {"text": "x", "blend_blocks": 0}, None, 400, "blend_blocks must be"),
        ("/longlive/sessions/idle/prompt", {"text": "x", "blend_blocks": "2"}, None, 400, "blend_blocks must be"),
        ("/longlive/sessions/idle/prompt", {"text": "x", "blend": "cubic"}, None, 400, "one of linear, slerp"),
        ("/longlive/sessions/idle/prompt", {"text": "cut: "}, None, 400, "'cut:' starts a new shot with the prompt"),
        ("/longlive/sessions/idle/prompt", {"text": "a dog"}, None, 409, "not generating live"),
        ("/longlive/sessions/idle/typed", {"text": "a dog"}, None, 409, "not generating live"),
        ("/longlive/sessions/idle/typed", {"text": ""}, None, 400, "non-empty string"),
        ("/longlive/sessions/nope/typed", {"text": "x"}, None, 404, "no session 'nope'"),
        ("/longlive/sessions/idle/stop", None, None, 409, "not generating live"),
        ("/longlive/sessions/nope/stop", None, None, 404, "no session 'nope'"),
    ]
    for path, body, raw, code, message in cases:
        status, answer = host.request("POST", path, body, raw)
        assert (status, message in answer.get("error", "")) == (code, True), (path, status, answer)
    assert host.get("/system_stats")
    assert live_state(host, "idle")["frames"] == 3  # nothing changed the session


def test_live_needs_a_session_id(host):
    graph = graph_of(host, "longlive_live", session_id="", length=3, length_unit="latent frames")
    assert "live needs a session_id" in failure(host, graph)


def test_sampler_with_a_vae_streams_decoded_frames_equal_to_the_decode_node(host):
    """The sampler's IMAGE (decoded block by block, continuing across runs) against LongLive VAE Decode
    of the same latents, both saved as lossless WEBP."""

    def graph(reset):
        g = with_decode_node(graph_of(host, "longlive_interactive", session_id="decoded", reset=reset, length=9,
                                      length_unit="latent frames"), "decoded")
        g["4"]["inputs"]["vae"] = ["5", 0]
        g["20"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["4", 1], "filename_prefix": "test/sampler",
                                                                "fps": 16.0, "lossless": True, "quality": 100,
                                                                "method": "fastest"}}
        g["21"] = g.pop("7")
        return g

    entry, events = host.run_listening(graph(reset=True))
    assert error_of(entry) is None
    ours, theirs = webp_frames(host, entry, "20"), webp_frames(host, entry, "21")
    assert len(ours) == len(theirs) == 33  # 9 latent frames: 4 * 9 - 3
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) <= 1  # the same pixels (8-bit rounding)
    assert len([d for kind, d in events if kind == "binary"]) >= 3  # a decoded preview per block
    compiled = graph(reset=False)  # the next run continues, decoding through the compiled decoder
    compiled["4"]["inputs"]["compile_vae"] = True
    entry = run_ok(host, compiled)
    ours, theirs = webp_frames(host, entry, "20"), webp_frames(host, entry, "21")
    assert len(ours) == len(theirs) == 36  # 4 * 9
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) <= 1


# --- bad input: errors that name the field and the fix -----------------------------------------------------------


def rejected(host, graph: dict) -> str:
    """POST /prompt refuses the graph at queue time (ComfyUI's validation, our nodes' validate_inputs)."""
    status, body = host.request("POST", "/prompt", {"prompt": graph, "client_id": host.client_id})
    assert status == 400 and body.get("node_errors"), (status, body)
    return json.dumps(body["node_errors"])


@pytest.mark.parametrize("start", ["inf", "1e400s", "9" * 400 + "s", "frame " + "9" * 5000])
def test_unreadable_starts_are_refused(host, start):
    graph = graph_of(host, "longlive_interactive")
    graph["3"]["inputs"]["schedule"] = f"0: a dog\n{start}: a cat"
    assert "schedule line 2" in (message := failure(host, graph))
    assert "is not 'start: prompt' with a start in seconds ('10s', or a bare number) or a latent frame" in message


def test_a_prompt_that_is_not_valid_unicode(host):
    graph = graph_of(host, "longlive_interactive")
    graph["3"]["inputs"]["schedule"] = "0: a dog \ud800 runs"
    assert "the prompt schedule holds a character that is not valid Unicode ('\\ud800' at position 9)" in failure(host, graph)
    run_ok(host, graph_of(host, "longlive_interactive", session_id="unicode", reset=True, length=3,
                          length_unit="latent frames"))
    status, answer = host.request("POST", "/longlive/sessions/unicode/prompt", raw=b'{"text": "a \\ud800 b"}')
    assert status == 400 and "text holds a character that is not valid Unicode" in answer["error"]


@pytest.mark.parametrize("inputs,message", [
    ({"length": float("nan")}, "length: nan is not a number above 0 and at most 4096"),
    ({"length_unit": "hours"}, "length_unit: 'hours' is not one of seconds, pixel frames, latent frames"),
    ({"switch_policy": "sometimes"}, "switch_policy: 'sometimes' is not one of recache, reset, keep"),
    ({"position_mode": "infinite"}, "position_mode: 'infinite' is not one of absolute, relative"),
    ({"session_id": "x" * 100_000}, "session_id must be at most 128 printable characters (got 100000 characters)"),
    ({"decode_device": ABSENT_GPU}, f"decode_device: {ABSENT_GPU} is not a CUDA device of this machine (its CUDA "),
])
def test_sampler_inputs_are_checked_at_queue_time(host, inputs, message):
    graph = graph_of(host, "longlive_interactive")
    graph["4"]["inputs"].update(inputs)
    assert message in rejected(host, graph)


def test_a_string_where_a_boolean_is_due_is_refused(host):
    """ComfyUI reads any non-empty string as True: "reset": "false" would start the video over."""
    graph = graph_of(host, "longlive_interactive")
    graph["4"]["inputs"].update(reset="false", live="no")
    graph["1"]["inputs"]["fast"] = "true"
    message = rejected(host, graph)
    for name, value in (("reset", "false"), ("live", "no"), ("fast", "true")):
        assert f"{name}: got the string '{value}' where a boolean is due; send true or false without quotes" in message


@pytest.mark.parametrize("inputs,message", [
    ({"model_name": "nope.pt"}, "model_name: 'nope.pt' is not in models/diffusion_models; download "
                                "models/longlive_base.pt of huggingface.co/Efficient-Large-Model/LongLive-1.3B "
                                "(LongLive 1.x) or model_bf16.pt of "
                                "huggingface.co/Efficient-Large-Model/LongLive-2.0-5B (LongLive 2.0) there"),
    ({"lora_name": "nope.pt"}, "lora_name: 'nope.pt' is not in models/loras; download models/lora.pt of"),
    ({"lora_strength": float("nan")}, "lora_strength: nan is not a number from -4 to 4"),
    ({"device": ABSENT_GPU}, f"device: {ABSENT_GPU} is not a CUDA device of this machine (its CUDA devices: "),
    ({"precision": "fp4"}, "precision: 'fp4' is not one of"),
])
def test_loader_inputs_are_checked_at_queue_time(host, inputs, message):
    graph = graph_of(host, "longlive_interactive")
    graph["1"]["inputs"].update(inputs)
    assert message in rejected(host, graph)


def test_model_files_by_content_and_broken_weights(host):
    """A safetensors file named .sft loads; NaN weights are refused naming the file."""
    from longlive_core import load_model
    from longlive_core.io.checkpoint import export_safetensors

    folder = host.base / "models" / "diffusion_models"
    model = load_model(str(folder / host.names["model"]), dtype=torch.float32, num_heads=1)
    export_safetensors(model, str(folder / "tiny.sft"))
    with torch.no_grad():
        model.blocks[0].ffn[0].weight[0, 0] = float("nan")
    export_safetensors(model, str(folder / "tiny_nan.safetensors"))
    graph = graph_of(host, "longlive_interactive", session_id="", length=3, length_unit="latent frames")
    graph["1"]["inputs"].update(model_name="tiny.sft", lora_name="none")
    run_ok(host, graph)
    graph["1"]["inputs"]["model_name"] = "tiny_nan.safetensors"
    assert "tiny_nan.safetensors: blocks.0.ffn.0.weight holds NaN or infinite values" in failure(host, graph)


def test_deeply_nested_json_to_the_prompt_route(host):
    status, answer = host.request("POST", "/longlive/sessions/x/prompt", raw=b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "must be JSON" in answer["error"]
    assert host.get("/system_stats")


def test_one_attention_line_per_model_load(host):
    run_ok(host, graph_of(host, "longlive_interactive", session_id="", length=3, length_unit="latent frames"))
    import re

    log = host.log()
    loads = len(re.findall(r"loaded \S+ \(\d+ layers", log))
    assert loads >= 1 and log.count("attention backend:") == loads


def test_a_saved_session_resumes_after_a_restart_as_if_the_server_had_kept_it(host, tmp_path):
    """Two runs of a session, POST .../save, the server stopped and started again: the third run continues the video
    (latents and decoded frames) exactly as a session the server kept does."""
    prompts = ["a corgi on a beach", "the corgi jumps into the waves", "the sun sets over the sea"]

    def third_of(server, session: str, restart=None) -> tuple[dict, torch.Tensor]:
        graphs = [with_latent_output(g, f"test/{session}_{i}")
                  for i, g in enumerate(continuation_graphs(graph_of(host, "longlive_interactive"), prompts, session))]
        for graph in graphs[:2]:
            run_ok(server, graph)
        if restart:
            server = restart(server)
        entry = run_ok(server, graphs[2])
        return entry, latents_of(server, entry)

    kept_entry, kept = third_of(host, "kept")
    base = tmp_path / "restart"
    names = make_tiny_models(base / "models")
    assert names.items() <= host.names.items()  # the LongLive 1.x files, the same names
    with ComfyHost(base) as first:
        def restart(server):
            status, body = server.request("POST", "/longlive/sessions/durable/save")
            assert status == 200 and body["frames"] == 42 and body["saved"].endswith(".safetensors")
            first.stop()
            first.start()
            assert first.get("/longlive/sessions")["sessions"] == {}  # a new server process
            return first

        entry, resumed = third_of(first, "durable", restart)
        notes = [text for out in entry["outputs"].values() for text in out.get("text", []) if "session" in text]
        assert notes[0].startswith("session 'durable' resumes from its save ") and notes[0].endswith("frame 42")
        torch.testing.assert_close(resumed, kept, rtol=0, atol=0)
        assert video_of(first, entry)[0] == video_of(host, kept_entry)[0] == 84  # the decoder continued, not restarted
        # the same frames, encoded: equal when this test runs alone; after the module's other tests the kept session's
        # frames moved by a few pixel values (cause not pinned down: its server has run the compiled decoder)
        assert (pixels_of(first, entry).float() - pixels_of(host, kept_entry).float()).abs().mean() < 1.0
        assert first.request("DELETE", "/longlive/sessions/durable") == (200, {"deleted": "durable"})
        assert not list((base / "output" / "longlive_sessions").glob("*.safetensors"))  # deleted with its session


def test_an_interrupted_live_run_that_decodes_keeps_every_frame_for_the_next(host):
    """The live workflow decodes inside the sampler: wherever /interrupt lands (between passes, or inside a block's
    decode), the interrupted run's file and the next run's hold the frames of every latent frame made, once each
    (4T - 3 from frame 0)."""
    graph = graph_of(host, "longlive_live", session_id="cut_live", reset=True, length=900,
                     length_unit="latent frames")
    graph["6"]["inputs"]["filename_prefix"] = "test/cut_live"
    interrupted(host, graph, "cut_live", 6)
    kept = live_state(host, "cut_live")["undelivered_frames"]
    graph = graph_of(host, "longlive_live", session_id="cut_live", reset=False, live=False, length=3,
                     length_unit="latent frames")
    entry = run_ok(host, with_latent_output(graph, "test/cut_live"))
    frames = latents_of(host, entry).shape[2]
    assert frames == kept + 3
    (cut,) = [p for p in (host.base / "output" / "test").glob("cut_live_*.mp4")
              if p.name != entry["outputs"]["6"]["images"][0]["filename"]]
    written = len(mp4_frames(host, {"subfolder": "test", "filename": cut.name}))
    assert written + video_of(host, entry)[0] == 4 * frames - 3


def test_the_template_browser_lists_the_shipped_workflows(host):
    """ComfyUI lists workflows/*.json as the pack's templates (their thumbnails, <name>.jpg beside them:
    test_package.py; ComfyUI serves them from the pack's folder, which aiohttp does not follow through the symlink
    this test server installs the pack with)."""
    shipped = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
    assert sorted(host.get("/workflow_templates")["ComfyUI-LongLive"]) == shipped


# --- the video file, written while generating ----------------------------------------------------------------------


def mp4_frames(host, f: dict) -> torch.Tensor:
    import av

    with av.open(str(host.base / "output" / f["subfolder"] / f["filename"])) as container:
        return torch.stack([torch.from_numpy(frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)])


def test_a_session_appends_to_one_file_and_each_run_to_its_own(host):
    """Two Save nodes on one sampler: one appends the session's runs to one file, one writes a file per run. The
    appended file, finished when the session is freed, holds the runs' frames in order."""
    def graph(i):
        g = graph_of(host, "longlive_interactive", session_id="appended", reset=i == 0, length=9,
                     length_unit="latent frames")
        g["6"]["inputs"].update(filename_prefix="test/per_run")
        g["16"] = {"class_type": "LongLive_SaveVideo", "inputs": {"video": ["4", 2], "filename_prefix": "test/whole",
                                                                  "mode": "append to the session's file"}}
        return g

    entries = [run_ok(host, graph(i)) for i in range(3)]
    per_run = [mp4_frames(host, e["outputs"]["6"]["images"][0]) for e in entries]
    assert [len(p) for p in per_run] == [33, 36, 36]  # 9 latent frames a run: 4 * 9 - 3, then 4 * 9
    names = {e["outputs"]["16"]["images"][0]["filename"] for e in entries}
    assert len(names) == 1  # every run shows the same growing file
    (appended,) = [e["outputs"]["16"]["images"][0] for e in entries[-1:]]
    assert len(mp4_frames(host, appended)) == 104  # between runs: all but the last frame (its duration is unknown)
    assert host.request("DELETE", "/longlive/sessions/appended")[0] == 200  # finishes the file
    whole = mp4_frames(host, appended)
    assert len(whole) == 105
    # the same frames (H.264 at CRF 18 on noise-like tiny frames: close, not equal)
    assert (whole.float() - torch.cat(per_run).float()).abs().mean() < 6


def test_an_interrupted_run_leaves_a_playable_file(host):
    graph = graph_of(host, "longlive_interactive", session_id="cut_file", reset=True, length=900,
                     length_unit="latent frames")
    graph["6"]["inputs"]["filename_prefix"] = "test/cut_file"
    interrupted(host, graph, "cut_file", 9)
    (path,) = (host.base / "output" / "test").glob("cut_file_*.mp4")
    frames = mp4_frames(host, {"subfolder": "test", "filename": path.name})
    assert len(frames) >= 21 and (len(frames) + 3) % 12 == 0  # the blocks decoded before the third: 4T - 3 frames


def test_an_unwritable_video_file_fails_the_run_and_the_session_goes_on(host):
    (host.base / "output" / "blocked").write_text("a file where the folder should be")
    graph = graph_of(host, "longlive_interactive", session_id="blocked", reset=True, length=3,
                     length_unit="latent frames")
    run_ok(host, graph)
    graph = graph_of(host, "longlive_interactive", session_id="blocked", length=3, length_unit="latent frames")
    graph["6"]["inputs"]["filename_prefix"] = "blocked/video"
    message = failure(host, graph)
    assert "filename_prefix 'blocked/video'" in message and str(host.base / "output" / "blocked") in message, message
    assert live_state(host, "blocked")["frames"] == 3  # refused before generating
    graph["6"]["inputs"]["filename_prefix"] = "test/unblocked"
    entry = run_ok(host, graph)
    assert video_of(host, entry)[0] == 12 and live_state(host, "blocked")["frames"] == 6


def test_a_save_node_needs_the_sampler_to_decode(host):
    graph = graph_of(host, "longlive_interactive", length=3, length_unit="latent frames")
    del graph["4"]["inputs"]["vae"]
    assert "LongLive Save Video needs decoded frames: connect the Wan VAE (2.1 for LongLive 1.x, 2.2 for 2.0) to the " \
           "sampler's vae input" in \
        failure(host, graph)


def test_every_viewer_gets_every_frame_and_one_that_leaves_changes_nothing(host):
    """Two tabs watch a live session from its start and get every frame in order; a third leaves after a few
    frames; the run and its file are unaffected."""
    watchers = [FrameWatcher(host.url, "watched") for _ in range(3)]
    graph = graph_of(host, "longlive_live", session_id="watched", reset=True, length=900, length_unit="latent frames")
    graph["6"]["inputs"]["filename_prefix"] = "test/watched"
    prompt_id = host.queue(graph)
    wait_for(lambda: len(watchers[2].frames) >= 12)
    watchers[2].close()
    wait_for(lambda: (s := live_state(host, "watched")) and s["frames"] >= 12)
    assert host.request("POST", "/longlive/sessions/watched/prompt", {"text": "a lighthouse at night"})[0] == 202
    wait_for(lambda: any(h.get("prompt") == "a lighthouse at night" for _, h in watchers[0].frames))
    host.request("POST", "/longlive/sessions/watched/stop", {})
    entry = host.wait(prompt_id)
    assert error_of(entry) is None
    written = video_of(host, entry)[0]
    wait_for(lambda: all(len(w.frames) == written for w in watchers[:2]), timeout=60)  # sent at 16 fps
    for watcher in watchers[:2]:
        watcher.close()
        assert [h["frame"] for _, h in watcher.frames] == list(range(written))
        assert all(h["dropped"] == 0 for _, h in watcher.frames)



def test_a_run_faster_than_real_time_reaches_its_viewer_ahead_of_playback(host):
    """Frames leave the channel up to 0.75 s before they play (at 16 fps from the first), so a viewer's buffer rides
    over the host's pauses: ComfyUI collects garbage after each prompt, 0.3-0.5 s without a frame (run 98)."""
    watcher = FrameWatcher(host.url, "ahead")
    entry = run_ok(host, graph_of(host, "longlive_interactive", session_id="ahead", reset=True, length=10.0,
                                  length_unit="seconds"))
    written = video_of(host, entry)[0]
    wait_for(lambda: len(watcher.frames) == written, timeout=60)
    watcher.close()
    times = [t for t, _ in watcher.frames]
    ahead = sorted(times[0] + k / 16 - t for k, t in enumerate(times))  # how long before it plays each frame came
    assert [h["frame"] for _, h in watcher.frames] == list(range(written))
    assert ahead[len(ahead) // 2] > 0.5 and ahead[-1] < 0.75 + 0.1


def test_a_batch_writes_a_file_a_sample_and_runs_never_overwrite_each_other(host):
    names = []
    for seed in (1, 2):
        graph = graph_of(host, "longlive_interactive", session_id="", batch_size=2, seed=seed, length=3,
                         length_unit="latent frames")
        graph["6"]["inputs"]["filename_prefix"] = "test/batch"
        files = run_ok(host, graph)["outputs"]["6"]["images"]
        assert [len(mp4_frames(host, f)) for f in files] == [9, 9]
        names += [f["filename"] for f in files]
    assert names == ["batch_00001_b0_.mp4", "batch_00001_b1_.mp4", "batch_00002_b0_.mp4", "batch_00002_b1_.mp4"]


def webp_frames(host, entry, node: str) -> list[torch.Tensor]:
    """The frames of a lossless WEBP a node saved, int16 [H, W, 3] each."""
    import numpy as np
    from PIL import Image

    (f,) = entry["outputs"][node]["images"]
    out = []
    with Image.open(host.base / "output" / f["subfolder"] / f["filename"]) as img:
        for i in range(img.n_frames):
            img.seek(i)
            out.append(torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.int16)))
    return out


def saved_latent(host, entry, node: str) -> torch.Tensor:
    (f,) = entry["outputs"][node]["latents"]
    return load_file(str(host.base / "output" / f["subfolder"] / f["filename"]))["latent_tensor"]


def longlive_2_graph(host) -> dict:
    """The interactive workflow on the tiny LongLive 2.0 file: window 32, sink 8, upstream's `keep`, 16 latent
    frames."""
    graph = graph_of(host, "longlive_interactive", length=16, length_unit="latent frames", session_id="",
                     local_attn_size=32, sink_size=8, switch_policy="keep", seed=3)
    graph["1"]["inputs"].update(model_name=host.names["model_v2"], lora_name="none")
    return graph


def test_a_live_longlive_2_session_takes_a_posted_cut_and_refuses_a_blend(host):
    """The live workflow on the LongLive 2.0 file (latents only: the Wan 2.2 VAE is slow on the CPU): 'cut: ...'
    posted starts a new shot at the next block, its text with the scene-cut prefix (the typed route takes the same
    text; test_v2 encodes a typed cut ahead); a blend is refused with a 400 while the run goes on, and a stop ends it
    with every block's latents."""
    graph = graph_of(host, "longlive_live", session_id="live2", reset=True, length=900, length_unit="latent frames",
                     local_attn_size=32, sink_size=8, switch_policy="keep", position_mode="absolute")
    graph["1"]["inputs"].update(model_name=host.names["model_v2"], lora_name="none")
    graph["4"]["inputs"].pop("vae")
    del graph["6"]  # LongLive Save Video: nothing decoded
    prompt_id = host.queue(with_latent_output(graph, "test/live2"))
    wait_for(lambda: (s := live_state(host, "live2")) and s["state"] == "live" and s["frames"] >= 16)
    status, body = host.request("POST", "/longlive/sessions/live2/typed", {"text": "cut: a city at night"})
    assert (status, body["typed"]) == (202, "The scene transitions. a city at night")
    status, body = host.request("POST", "/longlive/sessions/live2/prompt", {"text": "a fox", "blend_blocks": 2})
    assert status == 400 and "blend_blocks=2: LongLive 2.0 switches prompts at a block" in body["error"]
    status, body = host.request("POST", "/longlive/sessions/live2/prompt", {"text": "cut: a city at night"})
    assert status == 202 and body["cut"] and body["queued"] == "The scene transitions. a city at night"
    switch = wait_for(lambda: live_state(host, "live2")["switches"])[0]
    assert switch["cut"] and switch["text"] == body["queued"] and switch["frame"] % 8 == 0
    assert host.request("POST", "/longlive/sessions/live2/stop")[0] == 200
    entry = host.wait(prompt_id)
    assert error_of(entry) is None
    made = live_state(host, "live2")["frames"]
    assert made % 8 == 0 and made > switch["frame"] and latents_of(host, entry).shape[2] == made


def test_longlive_2_image_to_video_streams_wan_2_2_frames_equal_to_comfys_decode(host):
    """Image-to-video through the server with the Wan 2.2 VAE (random, at the full width ComfyUI builds it): LATENT
    frame 0 is ComfyUI's VAEEncode of the image, the sampler's frames (decoded block by block) are ComfyUI's
    VAEDecode of the LATENT, and LongLive Save Video writes every frame at 24 fps. An image of another size is
    refused with both sizes."""
    import av
    from PIL import Image

    Image.effect_mandelbrot((96, 64), (-2.0, -1.0, 1.0, 1.0), 60).convert("RGB").save(host.base / "input" / "first.png")
    graph = longlive_2_graph(host)
    graph["5"]["inputs"]["vae_name"] = host.names["vae_v2"]
    graph["8"] = {"class_type": "LoadImage", "inputs": {"image": "first.png"}}
    graph["4"]["inputs"]["image"] = ["8", 0]
    webp = {"filename_prefix": "test/v2", "fps": 24.0, "lossless": True, "quality": 100, "method": "fastest"}
    graph["20"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["4", 1], **webp}}
    graph["21"] = {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["5", 0]}}
    graph["22"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["21", 0], **webp}}
    graph["23"] = {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "test/v2"}}
    graph["24"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["5", 0]}}
    graph["25"] = {"class_type": "SaveLatent", "inputs": {"samples": ["24", 0], "filename_prefix": "test/v2_image"}}
    entry = run_ok(host, graph)
    latents, image = saved_latent(host, entry, "23"), saved_latent(host, entry, "25")
    assert latents.shape == (1, 48, 16, 4, 6) and image.shape == (1, 48, 1, 4, 6)
    torch.testing.assert_close(latents[:, :, :1], image, rtol=1e-4, atol=1e-4)  # the first frame is the image
    ours, theirs = webp_frames(host, entry, "20"), webp_frames(host, entry, "22")
    assert len(ours) == len(theirs) == 4 * 16 - 3
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) <= 1  # the same pixels (8-bit rounding)
    (f,) = entry["outputs"]["6"]["images"]
    with av.open(str(host.base / "output" / f["subfolder"] / f["filename"])) as container:
        assert container.streams.video[0].average_rate == 24
        assert sum(1 for _ in container.decode(video=0)) == 4 * 16 - 3

    Image.new("RGB", (64, 64)).save(host.base / "input" / "square.png")
    graph["8"]["inputs"]["image"] = "square.png"
    assert "image: 64x64 pixels, but the video is 96x64" in failure(host, graph)


def test_wan_2_2s_tiny_decoder_on_the_vae_input_streams_comfys_decode_with_it(host):
    """Wan 2.2's tiny decoder (lighttaew2_2 in models/vae_approx, random weights, as VAELoader lists and loads it) on
    the sampler's vae input: the frames it streams block by block are ComfyUI's VAEDecode of the LATENT with the same
    VAE, and LongLive Save Video writes every one. Image-to-video with it is refused: it cannot encode."""
    import av
    from PIL import Image

    (host.base / "models" / "vae_approx").mkdir(exist_ok=True)
    write_tiny_wan_vae(host.base / "models" / "vae_approx" / "lighttaew2_2.safetensors", "taew2_2")
    graph = longlive_2_graph(host)
    graph["5"]["inputs"]["vae_name"] = "lighttaew2_2.safetensors"
    webp = {"filename_prefix": "test/v2_tiny", "fps": 24.0, "lossless": True, "quality": 100, "method": "fastest"}
    graph["20"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["4", 1], **webp}}
    graph["21"] = {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["5", 0]}}
    graph["22"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["21", 0], **webp}}
    entry = run_ok(host, graph)
    ours, theirs = webp_frames(host, entry, "20"), webp_frames(host, entry, "22")
    assert len(ours) == len(theirs) == 4 * 16 - 3 and ours[0].shape == (64, 96, 3)
    assert torch.stack(theirs).float().std() > 10  # not a flat picture
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) <= 1  # the same pixels (8-bit rounding)
    (f,) = entry["outputs"]["6"]["images"]
    with av.open(str(host.base / "output" / f["subfolder"] / f["filename"])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4 * 16 - 3

    Image.new("RGB", (96, 64)).save(host.base / "input" / "tiny_first.png")
    graph["8"] = {"class_type": "LoadImage", "inputs": {"image": "tiny_first.png"}}
    graph["4"]["inputs"]["image"] = ["8", 0]
    assert "Wan 2.2's tiny decoder, which cannot encode" in failure(host, graph)


def test_a_longlive_2_model_makes_shots_through_the_nodes_as_the_engine_does(host):
    """A LongLive 2.0 file (48 latent channels) in models/diffusion_models: the loader tells its family, the schedule's
    'cut' starts a shot, and the sampler's LATENT (in the Wan 2.2 VAE's raw space) holds the blocks a ShotSession makes
    from the same file, seed and prompts. Where it cannot go: a Wan 2.1 VAE, a cut on the first line, a window that
    cannot hold its sinks, a LongLive 1.x LoRA."""
    from longlive_core import ShotSession, hashed_embeds, load_model, resolve_precision

    sys.path.insert(0, str(comfy_dir()))
    import comfy.latent_formats

    path = host.base / "models" / "diffusion_models" / host.names["model_v2"]
    graph = longlive_2_graph(host)
    graph["3"]["inputs"]["schedule"] = "0: a red fox in the snow\nframe 8 cut: a city at night"
    assert "need the Wan 2.2 VAE (wan2.2_vae.safetensors)" in failure(host, graph)
    graph["4"]["inputs"].pop("vae")
    del graph["6"]  # LongLive Save Video: nothing decoded
    graph = with_latent_output(graph, "test/v2")
    latents = latents_of(host, run_ok(host, graph))

    cpu = torch.device("cpu")
    model = load_model(str(path), device=cpu, precision=resolve_precision("bf16", cpu))
    session = ShotSession(model, batch=1, latent_hw=(4, 6), seed=3)
    texts = ["a red fox in the snow", "The scene transitions. a city at night"]
    text_dim = model.cfg.text_dim
    want = torch.cat([session.make_block(hashed_embeds(t, text_dim), cut=k == 1) for k, t in enumerate(texts)], 1)
    assert latents.shape == (1, 48, 16, 4, 6)
    torch.testing.assert_close(latents, comfy.latent_formats.Wan22().process_out(want.transpose(1, 2)),
                               rtol=1e-5, atol=1e-5)

    graph["3"]["inputs"]["schedule"] = "0 cut: a red fox in the snow"
    assert "schedule line 1 is a scene cut" in failure(host, graph)
    graph["3"]["inputs"]["schedule"] = "0: a red fox"
    graph["4"]["inputs"].update(local_attn_size=16)
    assert "window 16 cannot hold the global sink (8), the shot sink (8) and a block (8)" in failure(host, graph)
    graph["1"]["inputs"]["lora_name"] = host.names["lora"]
    assert "the LoRA belongs to another model than the LongLive 2.0 (Wan2.2 TI2V 5B) one loaded" in failure(host, graph)
