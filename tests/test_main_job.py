"""scripts/run_main.py, the README's main job, run as a user runs it."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

from conftest import REPO

REAL_NAMES = ("diffusion_models/longlive_base.pt", "loras/lora.pt",
              "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors", "vae/wan_2.1_vae.safetensors")


def run_main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "run_main.py"), *args], capture_output=True,
                          text=True, timeout=900)


def test_without_weights_it_says_so_shows_progress_and_names_the_video(tmp_path):
    done = run_main("--workflow", "longlive_interactive", "--models", str(tmp_path / "none"), "--output",
                    str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stderr
    assert "using a TINY BUILT-IN RANDOM MODEL" in log and "running LongLive_StreamingSampler" in log
    blocks = re.findall(r"block (\d+) of (\d+) \(latent frame (\d+)\): \d+ ms a block \(([\d.]+) pixel fps\), (\d+) "
                        r"previews?\b", log)
    assert [b[:3] for b in blocks] == [(str(i), "7", str(3 * i)) for i in range(1, 8)]  # 21 latent frames, 7 blocks
    assert all(float(b[3]) > 0 for b in blocks) and int(blocks[-1][4]) >= 1
    (video,) = re.findall(r"video: (\S+\.mp4)", log)
    assert pathlib.Path(video).is_file() and pathlib.Path(video).is_relative_to(tmp_path / "out")


def test_a_failing_run_names_the_node_and_keeps_its_folder(tmp_path):
    models = tmp_path / "models"
    for name in REAL_NAMES:  # the real names, broken contents: the job takes them for the real weights
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        (models / name).write_bytes(b"not a model")
    done = run_main("--workflow", "longlive_interactive", "--models", str(models), "--output", str(tmp_path / "out"))
    assert done.returncode == 1
    failed = re.search(r"the workflow failed in node (\d+) \((\w+)\): (.*)\nComfyUI's log: (\S+); the temporary "
                       r"folder (\S+) is left for inspection", done.stderr)
    assert failed, done.stderr[-3000:]
    assert failed[2] in ("CLIPLoader", "LongLive_ModelLoader", "VAELoader")
    assert pathlib.Path(failed[4]).is_file() and pathlib.Path(failed[5]).is_dir()


def test_serve_keeps_a_server_for_the_api_client_whose_printed_command_works(tmp_path):
    """The README's route to examples/api_client.py without real weights: run_main --serve prints a command."""
    import shlex

    server = subprocess.Popen([sys.executable, str(REPO / "scripts" / "run_main.py"), "--serve", "--models",
                               str(tmp_path / "none"), "--output", str(tmp_path / "out")], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        lines = [server.stdout.readline() for _ in range(3)]
        command = shlex.split(lines[1].strip())
        assert lines[0].startswith("ComfyUI with LongLive at http://127.0.0.1:") and command[:2] == [
            "python", "examples/api_client.py"]
        done = subprocess.run([sys.executable, *command[1:], "--download", str(tmp_path / "parts")], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        parts = re.findall(r"part (\d): (\S+)", done.stdout)
        assert [p[0] for p in parts] == ["1", "2"] and all(pathlib.Path(p[1]).is_file() for p in parts)
        assert all(pathlib.Path(p[1]).is_relative_to(tmp_path / "parts") for p in parts)
        bad = subprocess.run([sys.executable, *command[1:4], "--workflow", str(REPO / "workflows" / "api" /
                              "longlive_interactive.json"), "a"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "the server answered 400" in bad.stderr
        assert "model_name: 'longlive_base.pt' is not in models/diffusion_models" in bad.stderr
        workflow = json.loads(pathlib.Path(command[command.index("--workflow") + 1]).read_text())
        (sampler,) = [k for k, n in workflow.items() if n["class_type"] == "LongLive_StreamingSampler"]
        del workflow[sampler]["inputs"]["vae"]  # valid at queue time; the sampler refuses to run without it
        (tmp_path / "no_vae.json").write_text(json.dumps(workflow))
        failed = subprocess.run([sys.executable, *command[1:4], "--workflow", str(tmp_path / "no_vae.json"), "a"],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert failed.returncode == 1 and re.fullmatch(
            rf"run 1 failed in node {sampler} \(LongLive_StreamingSampler\): \S*ConfigError: LongLive Save Video needs "
            r"decoded frames: connect the Wan VAE .*", failed.stderr.strip()), failed.stderr
    finally:
        server.terminate()
        server.wait(60)


def test_the_api_client_says_in_one_line_that_no_server_answers():
    done = subprocess.run([sys.executable, "examples/api_client.py", "--server", "http://127.0.0.1:9", "a corgi"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert re.fullmatch(r"no ComfyUI at http://127\.0\.0\.1:9 \(.+\); start one \(python scripts/run_main\.py --serve "
                        r"starts one with the tiny model\) or pass --server URL", done.stderr.strip()), done.stderr


def test_the_api_client_help_documents_its_options_and_parts():
    done = subprocess.run([sys.executable, "examples/api_client.py", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    text = " ".join(done.stdout.split())  # argparse wraps option help at the terminal's width
    assert "--workflow WORKFLOW an API-format workflow with the LongLive nodes" in text
    assert "--session SESSION the session id the runs share; the first run resets it" in text
    assert "consecutive parts of one video" in text and "--serve" in text
    assert not re.search(r"\S {3,}\S", done.stdout.split("positional arguments")[0])  # no run of spaces in the text


def test_run_main_help_documents_every_option():
    done = subprocess.run([sys.executable, "scripts/run_main.py", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    text = " ".join(done.stdout.split())
    assert done.returncode == 0
    for option in ("--models MODELS a ComfyUI models folder", "--workflow WORKFLOW a shipped workflow",
                   "--output OUTPUT ComfyUI's output folder", "--serve keep the server up"):
        assert option in text, text
