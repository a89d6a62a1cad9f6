"""Writes the thumbnail ComfyUI's template browser shows beside each shipped workflow (workflows/<name>.jpg) and the
pack's icon (docs/icon.png, pyproject's [tool.comfy] Icon).

    python scripts/make_thumbnails.py

Title cards: the tiny random model's frames are noise, and real frames need the real weights (a run of the
workflow with them can replace a card: same name, JPEG).
"""

from __future__ import annotations

import pathlib

from PIL import Image, ImageDraw, ImageFont

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = (640, 360)
CARDS = {
    "longlive_one_minute": ("One minute", "a 60 s video from a timed prompt schedule, decoded and saved as MP4"),
    "longlive_interactive": ("Interactive", "5 s a run; each run continues the same video with a new prompt"),
    "longlive_live": ("Live", "generates until stopped; prompts typed in the LongLive panel switch at the next block"),
    "longlive2_multishot": ("LongLive 2.0: shots", "20 s in four prompts; 'cut' lines start new shots (1280x704, 24 fps)"),
    "longlive2_image_to_video": ("LongLive 2.0: image to video", "an image is the first frame of a 10 s video"),
}
BACKGROUND, ACCENT, TEXT = (18, 22, 34), (86, 156, 255), (236, 240, 248)


def card(title: str, line: str) -> Image.Image:
    image = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(image)
    for i, x in enumerate(range(40, 600, 56)):  # a strip of frames: the stream
        shade = tuple(int(c * (0.35 + 0.06 * i)) for c in ACCENT)
        draw.rounded_rectangle((x, 236, x + 46, 298), radius=6, fill=shade)
    draw.text((40, 44), "LongLive", font=ImageFont.load_default(28), fill=ACCENT)
    draw.text((40, 86), title, font=ImageFont.load_default(52), fill=TEXT)
    draw.text((40, 168), _wrap(line, 58), font=ImageFont.load_default(19), fill=TEXT, spacing=6)
    return image


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


def icon() -> Image.Image:
    image = Image.new("RGB", (256, 256), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for i, x in enumerate(range(28, 228, 50)):
        draw.rounded_rectangle((x, 96, x + 40, 160), radius=6, fill=tuple(int(c * (0.4 + 0.15 * i)) for c in ACCENT))
    draw.text((128, 206), "LongLive", font=ImageFont.load_default(30), fill=TEXT, anchor="mm")
    return image


def main() -> None:
    for name, (title, line) in CARDS.items():
        card(title, line).save(REPO / "workflows" / f"{name}.jpg", quality=90)
    icon().save(REPO / "docs" / "icon.png")


if __name__ == "__main__":
    main()
