"""The GPU end-to-end harness (scripts/gpu_e2e.py) in its CPU mode: tiny models, a real ComfyUI server on the CPU.

The GPU numbers come from running it on a GPU (docs/BENCHMARKS.md); this keeps its runs, checks and report working.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from gpu_e2e import BLOCK_S, block_gaps, playback, post_delays  # noqa: E402


def test_the_harness_runs_the_live_workflow_and_an_injected_capture_failure(tmp_path):
    probe = tmp_path / "probe_node.py"  # --extra-node: each server loads it beside the pack
    probe.write_text("import logging\n\nlogging.getLogger('probe').warning('PROBE NODE LOADED')\n"
                     "NODE_CLASS_MAPPINGS = {}\n")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_e2e.py"), "--tiny", "--groups",
                           "live,capture-failure", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                           "--extra-node", str(probe),
                           "--runs", "live,live_warm,live_api,live_keep,capture_failure_1,capture_failure_2"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for group in ("live", "capture-failure"):
        assert "PROBE NODE LOADED" in (tmp_path / "work" / f"server_{group}" / "comfy.log").read_text()
    report = json.loads((tmp_path / "out" / "e2e.json").read_text())
    runs = {r["name"]: r for r in report["runs"]}
    assert set(runs) == {"live", "live warm", "live api", "live keep", "capture failure 1",
                         "capture failure 2"}  # --runs' names
    assert all(r["ok"] and r["notes"]["server_alive"] for r in runs.values())
    for name in ("live", "live warm", "live api", "live keep"):  # a fresh server's session, three on the warm one
        live = runs[name]
        assert live["frames"] == 4 * 3 * live["blocks"] - 3 and len(live["notes"]["post_to_switch_block_s"]) == 10
        assert live["notes"]["texts_posted"] == 10  # ten texts, each new to the server (its encoding timed too)
        ahead = live["notes"]["encoded_ahead"]  # typed first, as in the panel, except by the API client
        assert ahead + len(live["notes"]["encode_ms"]) == 10 and (ahead == 0) == (name == "live api"), live["notes"]
        stream = live["notes"]["stream"]  # the frames WebSocket, as the panel watches it: every frame, in order
        assert stream["frames"] == live["frames"] and stream["in_order"] and stream["dropped"] == 0
        assert len(stream["prompt_to_pixel_ms"]) == 10 and None not in stream["prompt_to_pixel_ms"]
        assert 0 < stream["max_gap_ended_at"]["frame"] < stream["frames"]  # where the longest steady gap was
        assert stream["last_frame_before_end_s"] > -0.05  # the run ended once its frames were sent (two sockets)
        assert 0 < live["wall_s"] and sum(live["stages"].values()) <= live["wall_s"] + 0.05
        played = stream["playback"]  # the panel's player on these arrivals: each frame shown or skipped
        assert played["shown"] + played["skipped"] == stream["frames"]
        assert f"live / {name}, at the viewer: " in done.stdout
    split = runs["live"]["notes"]["compile_capture_s"]  # a new session: the model's part and the decoder's (none
    assert split["model"] >= 0 == split["decoder"]  # on the CPU: not compiled), which make up compile + capture
    assert abs(sum(split.values()) - runs["live"]["stages"]["compile+capture"]) <= 0.02
    assert [runs[f"capture failure {i}"]["frames"] for i in (1, 2)] == [81, 84]
    assert "| live | live | yes |" in done.stdout and "| live | live warm | yes |" in done.stdout


def test_the_harness_runs_the_interactive_group_with_a_reload_and_an_interrupt(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_e2e.py"), "--tiny", "--groups", "interactive",
                           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = {r["name"]: r for r in json.loads((tmp_path / "out" / "e2e.json").read_text())["runs"]}
    assert all(r["ok"] for r in runs.values()), {n: (r["frames"], r["expected_frames"], r["error"])
                                                 for n, r in runs.items()}
    assert [runs[f"interactive {i}"]["frames"] for i in (1, 2, 3)] == [81, 84, 84]
    gaps = runs["interactive 2"]["notes"]  # between its 7 block events
    assert len(gaps["first_block_gaps_s"]) == 5 and 1 <= gaps["longest_block_gap"]["block"] <= 6
    assert gaps["longest_block_gap"]["s"] >= max(gaps["first_block_gaps_s"]) > 0
    cut = runs["interrupt"]  # /interrupt after 3 block events: both files hold every frame the session made, once
    assert cut["notes"]["interrupted_status"] == "error" and cut["notes"]["blocks_before_interrupt"] >= 3
    assert 0 < cut["notes"]["frames_in_the_interrupted_file"] < cut["frames"] == cut["expected_frames"]
    watched = runs["watched"]["notes"]["stream"]  # a run faster than real time: its frames reach the viewer early
    assert watched["frames"] == runs["watched"]["frames"] == 165 and watched["in_order"]
    assert watched["ahead_s"]["median"] > 0.5 and watched["late_frames"] == 0


def test_the_harness_runs_the_one_minute_group_and_says_what_the_first_run_added(tmp_path):
    """The one-minute workflow twice on one server: every frame in each saved video, and what the first run's
    readying added (its sampler's time less the warm run's: on the CPU without compiling, about nothing)."""
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_e2e.py"), "--tiny", "--groups", "one-minute",
                           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = {r["name"]: r for r in json.loads((tmp_path / "out" / "e2e.json").read_text())["runs"]}
    first, warm = runs["one minute"], runs["one minute warm"]
    assert first["frames"] == warm["frames"] == 957
    stages = [r["stages"]["compile+capture"] + r["stages"]["generation"] for r in (first, warm)]
    assert warm["notes"]["first_run_adds_s"] == round(stages[0] - stages[1], 2)
    assert f"one-minute: the server's first run's readying added {warm['notes']['first_run_adds_s']} s" in done.stdout


def test_the_panel_player_simulation_counts_what_a_viewer_sees():
    """The harness replays the arrivals through the panel's player (2 frames before playing, 16 fps): frames on
    time show without a stall; half a second without frames holds the screen that long; a new prompt's first frame
    drops the frames waiting before it; frames coming faster than they play overflow the 24-frame buffer; a last
    frame that comes alone after the buffer ran dry still plays."""
    steady = [(k / 16, {"frame": k}) for k in range(100)]
    assert playback(steady) == {"shown": 100, "skipped": 0, "stalls": 0, "stalled_ms": 0, "longest_stall_ms": 0}
    last_late = [(t + (0.5 if h["frame"] == 99 else 0), h) for t, h in steady]
    assert playback(last_late)["shown"] == 100 and playback(last_late)["stalls"] == 1
    paused = [(t + (0.5 if h["frame"] >= 50 else 0), h) for t, h in steady]
    assert playback(paused)["stalls"] == 1 and 480 <= playback(paused)["longest_stall_ms"] <= 520
    early = [(t - (0.2 if h["frame"] == 60 else 0), h) for t, h in steady]
    switched = [(t, {**h, "posted_at": 1.0} if h["frame"] == 61 else h) for t, h in early]
    assert playback(switched)["skipped"] == 1 and playback(switched)["shown"] == 99
    fast = [(k / 32, {"frame": k}) for k in range(100)]
    assert playback(fast)["skipped"] > 0 and playback(fast)["stalls"] == 0


def test_block_gaps_name_the_block_after_the_longest_wait():
    gaps = block_gaps([10.0, 10.2, 16.5, 16.7, 16.9, 17.1, 17.3, 17.5], first=3)
    assert gaps == {"first_block_gaps_s": [0.2, 6.3, 0.2], "longest_block_gap": {"block": 2, "s": 6.3}}
    assert block_gaps([10.0]) == {}


def test_live_prompts_are_posted_across_a_whole_block():
    """A user types at any moment of a block: the harness's ten prompts come at ten evenly spread points of a live
    block's 0.75 s after a block event, not all just after it (where each met the block's decode)."""
    delays = post_delays(10)
    assert BLOCK_S == 0.75 and len(delays) == 10 and 0 < delays[0] < delays[-1] < BLOCK_S
    assert all(abs(b - a - BLOCK_S / 10) < 1e-3 for a, b in zip(delays, delays[1:]))
    assert abs(sum(delays) / 10 - BLOCK_S / 2) < 1e-3
