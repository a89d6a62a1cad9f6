"""The recorded upstream runs, reproduced through the public session API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from longlive_core.tools.verify import TOLERANCE, as_recorded, block_errors, run_case
from conftest import GOLDEN_INF, REPO, golden_cases


@pytest.mark.parametrize("case", golden_cases() + golden_cases(GOLDEN_INF), ids=lambda p: p.name)
def test_golden_case_matches_every_block(case):
    """Absolute RoPE (golden/) and upstream's infinite-length mode, block-relativistic RoPE (golden_inf/: the
    engine's position mode 'relative'), past the full window and through two switches."""
    ours, meta = run_case(str(case))
    ref = load_file(str(case / "io.safetensors"))["output"]
    errs = block_errors(as_recorded(ours), ref)
    assert len(errs) == meta["num_output_frames"] // 3
    assert max(errs) <= TOLERANCE, errs


def test_verify_command_passes_on_golden_and_fails_on_a_changed_case(tmp_path):
    """The README's command as written: its glob also matches golden/README.md, which is skipped with a note."""
    cases = golden_cases()
    readme = (REPO / "README.md").read_text()
    (command,) = set(re.findall(r"`(python -m longlive_core\.verify \.\./shared/golden/\*)`", readme))
    here = os.path.relpath(cases[0].parent, REPO)  # ../shared/golden unless LONGLIVE_GOLDEN points elsewhere
    ok = subprocess.run(command.replace("python", sys.executable, 1).replace("../shared/golden", here), shell=True,
                        cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    lines = [json.loads(line) for line in ok.stdout.splitlines()]
    assert [line["passed"] for line in lines] == [True] * len(cases)
    assert "README.md: not a case folder (no meta.json)" in ok.stderr
    empty = subprocess.run([sys.executable, "-m", "longlive_core.verify", str(tmp_path)], cwd=REPO,
                           capture_output=True, text=True)
    assert empty.returncode == 2 and "no reference case found" in empty.stderr

    broken = tmp_path / "case"
    broken.mkdir()
    src = golden_cases()[0]
    for name in ("meta.json", "longlive_base.pt", "lora.pt"):
        (broken / name).write_bytes((src / name).read_bytes())
    io = load_file(str(src / "io.safetensors"))
    io["output"] = io["output"].clone()
    io["output"][:, -3:] = 1 - io["output"][:, -3:]  # the last block is wrong
    save_file(io, str(broken / "io.safetensors"))
    bad = subprocess.run([sys.executable, "-m", "longlive_core.verify", str(broken)], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 1
    result = json.loads(bad.stdout)
    assert result["passed"] is False and result["block_rel_errors"][-1] > 0.1 > result["block_rel_errors"][0]


def test_golden_fails_with_a_wrong_lora_strength():
    """The reference is sensitive to the LoRA merge: a check that the check can fail."""
    case = golden_cases()[0]
    ours, _ = run_case(str(case), lora_strength=0.5)
    ref = load_file(str(case / "io.safetensors"))["output"]
    assert max(block_errors(as_recorded(ours), ref)) > 1e-3


def test_compiled_stages_match_the_golden_runs():
    """The fast path's compiled dense stages, in float32 on the CPU, against a recorded run."""
    case = golden_cases()[0]
    ours, _ = run_case(str(case), compiled=True)
    ref = load_file(str(case / "io.safetensors"))["output"]
    assert max(block_errors(as_recorded(ours), ref)) <= TOLERANCE


@pytest.mark.parametrize("case", golden_cases(GOLDEN_INF), ids=lambda p: p.name)
def test_relative_positions_with_compiled_stages_match_and_differ_from_absolute(case):
    ours, meta = run_case(str(case), compiled=True)
    ref = load_file(str(case / "io.safetensors"))["output"]
    assert max(block_errors(as_recorded(ours), ref)) <= TOLERANCE
    meta_path = case / "meta.json"
    absolute, _ = run_case(str(case), position_mode="absolute")  # the sinks at their own positions
    errs = block_errors(as_recorded(absolute), ref)
    full = meta["local_attn_size"] // 3  # the first block whose pass needs more than the window
    assert max(errs[:full]) <= TOLERANCE and min(errs[full:]) > 1e-3, (errs, meta_path)
