"""Shared fixtures: the recorded reference runs and tiny random models."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

if not torch.cuda.is_available():  # the Triton kernels run in Triton's interpreter (before triton is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from longlive_core.tools.synthetic import TINY, random_model

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = pathlib.Path(os.environ.get("LONGLIVE_GOLDEN", REPO.parent / "shared" / "golden"))
GOLDEN_INF = pathlib.Path(os.environ.get("LONGLIVE_GOLDEN_INF", REPO.parent / "shared" / "golden_inf"))
GOLDEN_V2 = pathlib.Path(os.environ.get("LONGLIVE_GOLDEN_V2", REPO.parent / "shared" / "golden_v2"))


def golden_cases(folder: pathlib.Path = GOLDEN) -> list[pathlib.Path]:
    cases = sorted(p for p in folder.glob("*") if (p / "meta.json").exists())
    if not cases:
        raise FileNotFoundError(f"no reference runs under {folder}; set LONGLIVE_GOLDEN, LONGLIVE_GOLDEN_INF and "
                                f"LONGLIVE_GOLDEN_V2 to the golden/, golden_inf/ and golden_v2/ folders")
    return cases


@pytest.fixture
def tiny_model():
    return random_model(TINY, seed=0, dtype=torch.float32, std=0.3)


@pytest.fixture
def prompt():
    gen = torch.Generator().manual_seed(7)
    return torch.randn(1, 12, TINY.text_dim, generator=gen)
