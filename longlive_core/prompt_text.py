"""Parsing of prompt-schedule text: one `start: prompt` line per prompt.

    0: a boy on a lawn
    10s: he starts to run          (seconds of video at 16 fps; a bare number is seconds too)
    frame 42: the sun sets         (latent frame; `f42:` also works)

Starts are converted to latent frames and rounded to the nearest block boundary (3 latent
frames); every rounding is reported so the node can say so.
"""

from __future__ import annotations

import dataclasses
import re

from .cache import FRAMES_PER_BLOCK
from .errors import PromptError

FPS = 16
_LINE = re.compile(r"^\s*(?:(?P<frame>frame\s*|f)(?P<fnum>\d+)|(?P<sec>\d+(?:\.\d+)?)\s*s?)\s*:\s*(?P<text>.*\S)\s*$",
                   re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class TextSegment:
    start: int  # latent frame, on a block boundary
    text: str
    note: str = ""  # what was rounded, if anything


def seconds_to_latent(seconds: float) -> int:
    """Pixel frame p (16 fps) belongs to latent frame ceil(p / 4): latent 0 is pixel 0 alone."""
    pixel = round(seconds * FPS)
    return (pixel + 3) // 4


def round_to_block(frame: int) -> int:
    return int(FRAMES_PER_BLOCK * round(frame / FRAMES_PER_BLOCK))


def parse_schedule_text(text: str) -> list[TextSegment]:
    """Parses schedule text; raises PromptError naming the line for anything unreadable."""
    segments: list[TextSegment] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise PromptError(f"schedule line {number} ('{line.strip()[:40]}') is not 'start: prompt'; write e.g. "
                              f"'0: a boy on a lawn', '10s: he runs' or 'frame 42: the sun sets'")
        segments.append(_segment(match, number))
    if not segments:
        raise PromptError("the prompt schedule is empty; write at least one line such as '0: a boy on a lawn'")
    check_starts([s.start for s in segments])
    return segments


def _segment(match: re.Match, number: int) -> TextSegment:
    if match["fnum"] is not None:
        exact, label = int(match["fnum"]), f"frame {match['fnum']}"
    else:
        exact, label = seconds_to_latent(float(match["sec"])), f"{match['sec']}s"
    start = round_to_block(exact)
    note = f"line {number}: {label} is latent frame {exact}, rounded to {start} (block boundary)" if start != exact else ""
    return TextSegment(start, match["text"], note)


def check_starts(starts: list[int], total_frames: int | None = None) -> None:
    """Starts must begin at 0, increase, sit on block boundaries and lie inside the video."""
    if starts[0] != 0:
        raise PromptError(f"the first prompt must start at 0; it starts at latent frame {starts[0]}")
    for a, b in zip(starts, starts[1:]):
        if b <= a:
            raise PromptError(f"prompt starts must increase (after rounding to blocks of {FRAMES_PER_BLOCK} latent "
                              f"frames); latent frame {b} follows {a}: space the prompts further apart")
    for s in starts:
        if s % FRAMES_PER_BLOCK:
            raise PromptError(f"prompt start {s} is not on a block boundary (a multiple of {FRAMES_PER_BLOCK})")
        if total_frames is not None and s >= total_frames:
            raise PromptError(f"a prompt starts at latent frame {s}, but the video has only {total_frames} latent "
                              f"frames; lengthen the video or move the prompt earlier")
