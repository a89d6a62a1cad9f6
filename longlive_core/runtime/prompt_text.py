"""Parsing of prompt-schedule text: one `start: prompt` line per prompt.

    0: a boy on a lawn
    10s: he starts to run          (seconds of video; a bare number is seconds too)
    frame 42: the sun sets         (latent frame; `f42:` also works)
    20s cut: a beach at dusk       (LongLive 2.0: a scene cut, a new shot starts here)

A prompt posted to a live run cuts the same way: 'cut: a beach at dusk'.

Starts are converted to latent frames at the model family's frame rate and rounded to the nearest
block boundary (LongLive 1.x: 16 fps, blocks of 3 latent frames; 2.0: 24 fps, blocks of 8); every
rounding is reported so the node can say so. A cut's prompt is encoded with upstream's scene-cut prefix.
"""

from __future__ import annotations

import dataclasses
import re

from ..errors import PromptError
from .family import V1, Family
from .shots import SCENE_CUT_PREFIX

FPS = V1.fps
MAX_DIGITS = 7  # a start of at most 9,999,999 latent frames or seconds: anything longer is a typo
_START = re.compile(rf"^\s*(?:(?:frame\s*|f)(?P<fnum>\d{{1,{MAX_DIGITS}}})|(?P<sec>\d{{1,{MAX_DIGITS}}}(?:\.\d{{1,6}})?)\s*s?)"
                    rf"(?P<cut>\s+cut)?\s*$", re.IGNORECASE)
START_FORMS = "seconds ('10s', or a bare number) or a latent frame ('frame 42' or 'f42')"


@dataclasses.dataclass(frozen=True)
class TextSegment:
    start: int  # latent frame, on a block boundary
    text: str  # a cut's text begins with the scene-cut prefix
    note: str = ""  # what was rounded, if anything
    cut: bool = False


def seconds_to_latent(seconds: float, fps: int = FPS) -> int:
    """Pixel frame p belongs to latent frame ceil(p / 4): latent 0 is pixel 0 alone."""
    pixel = round(seconds * fps)
    return (pixel + 3) // 4


def round_to_block(frame: int, block: int = V1.block) -> int:
    return int(block * round(frame / block))


def parse_schedule_text(text: str, family: Family = V1) -> list[TextSegment]:
    """Parses schedule text for a model family; raises PromptError naming the line for anything unreadable."""
    check_text(text, "the prompt schedule")
    segments: list[TextSegment] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        start, colon, prompt = line.partition(":")
        if not colon or not prompt.strip() or _START.match(start) is None:
            raise PromptError(f"schedule line {number} ('{line.strip()[:40]}') is not 'start: prompt' with a start in "
                              f"{START_FORMS}; write e.g. '0: a boy on a lawn', '10s: he runs' or 'frame 42: the sun sets'")
        segments.append(_segment(start, prompt.strip(), f"line {number}: ", family))
    if not segments:
        raise PromptError("the prompt schedule is empty; write at least one line such as '0: a boy on a lawn'")
    if segments[0].cut:
        raise PromptError("schedule line 1 is a scene cut: a cut starts a new shot after another, so the first prompt "
                          "cannot be one; remove 'cut' from it")
    check_starts([s.start for s in segments], block=family.block)
    return segments


def parse_start(text: str, family: Family = V1) -> TextSegment:
    """One start (the Conditioning node's `starts`): its block-rounded latent frame and the note on the rounding."""
    if _START.match(text) is None or _START.match(text)["cut"]:
        raise PromptError(f"start '{text.strip()[:40]}' is not {START_FORMS}")
    return _segment(text, "", "", family)


def _segment(start: str, prompt: str, where: str, family: Family) -> TextSegment:
    match = _START.match(start)
    if match["fnum"] is not None:
        exact, label = int(match["fnum"]), f"frame {match['fnum']}"
    else:
        exact, label = seconds_to_latent(float(match["sec"]), family.fps), f"{match['sec']}s"
    start = round_to_block(exact, family.block)
    note = f"{where}{label} is latent frame {exact}, rounded to {start} (block boundary)" if start != exact else ""
    cut = match["cut"] is not None
    return TextSegment(start, SCENE_CUT_PREFIX + prompt if cut else prompt, note, cut)


_POSTED_CUT = re.compile(r"^\s*cut\s*:\s*", re.IGNORECASE)


def parse_posted_text(text: str) -> tuple[str, bool]:
    """A prompt posted to a live run: 'cut: a city at night' starts a new shot (LongLive 2.0), as 'cut' after a
    schedule line's start does. Returns the text to encode (a cut's with upstream's scene-cut prefix) and whether it
    cuts."""
    match = _POSTED_CUT.match(text)
    if match is None:
        return text, False
    if not text[match.end():].strip():
        raise PromptError("text: 'cut:' starts a new shot with the prompt after it; write e.g. 'cut: a city at night'")
    return SCENE_CUT_PREFIX + text[match.end():].strip(), True


def check_text(text: str, field: str) -> None:
    """Refuses text that is not valid Unicode (a lone surrogate, which no encoder can take)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PromptError(f"{field} holds a character that is not valid Unicode ({exc.object[exc.start]!r} at "
                          f"position {exc.start}); remove it") from None


def check_starts(starts: list[int], total_frames: int | None = None, block: int = V1.block) -> None:
    """Starts must begin at 0, increase, sit on block boundaries (of `block` latent frames) and lie inside the video."""
    if starts[0] != 0:
        raise PromptError(f"the first prompt must start at 0; it starts at latent frame {starts[0]}")
    for a, b in zip(starts, starts[1:]):
        if b <= a:
            raise PromptError(f"prompt starts must increase (after rounding to blocks of {block} latent "
                              f"frames); latent frame {b} follows {a}: space the prompts further apart")
    for s in starts:
        if s % block:
            raise PromptError(f"prompt start {s} is not on a block boundary (a multiple of {block})")
        if total_frames is not None and s >= total_frames:
            raise PromptError(f"a prompt starts at latent frame {s}, but the video has only {total_frames} latent "
                              f"frames; lengthen the video or move the prompt earlier")
