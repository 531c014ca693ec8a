"""`graft preview-views`: contact sheets of per-view preprocessing, before (subject box drawn) and after, a row of
pairs per view."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from graft.config import ViewsConfig
from graft.data.images import load_rgb
from graft.data.manifest import ImageRecord, Manifest
from graft.errors import ImageError
from graft.files import atomic_write
from graft.views.preprocess import apply, decide, method_of

THUMB = 160
CAPTION = 18


def sample_per_view(manifest: Manifest, per_view: int, seed: int = 0) -> dict[str, list[ImageRecord]]:
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in manifest:
        groups[record.view or "(none)"].append(record)
    rng = random.Random(seed)
    return {view: rng.sample(records, min(per_view, len(records))) for view, records in sorted(groups.items())}


def contact_sheet(manifest: Manifest, config: ViewsConfig, out: str | Path, per_view: int = 4) -> dict[str, int]:
    """Write the sheet to ``out`` (PNG); return, per view, how many of the shown images fell back to uncropped."""
    config = config.model_copy(update={"enabled": True})
    rows, fallbacks = [], {}
    for view, records in sample_per_view(manifest, per_view).items():
        pairs = [_pair(record, view, config) for record in records]
        pairs = [pair for pair in pairs if pair is not None]
        fallbacks[view] = sum(1 for *_, fell_back in pairs if fell_back)
        rows.append((view, pairs))
    width = max(1, max((len(pairs) for _, pairs in rows), default=1)) * (2 * THUMB + 12) + 120
    sheet = Image.new("RGB", (width, max(1, len(rows)) * (THUMB + CAPTION + 8)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    for row, (view, pairs) in enumerate(rows):
        top = row * (THUMB + CAPTION + 8)
        method = method_of(view, config) or "unchanged"
        draw.text((6, top + THUMB // 2 - 8), f"{view}\n{method}", fill="black", font=font)
        for column, (before, after, caption, _) in enumerate(pairs):
            left = 120 + column * (2 * THUMB + 12)
            sheet.paste(_thumb(before), (left, top))
            sheet.paste(_thumb(after), (left + THUMB + 2, top))
            draw.text((left, top + THUMB + 2), caption, fill="dimgray", font=font)
    atomic_write(Path(out), lambda handle: sheet.save(handle, format="PNG"))
    return fallbacks


def _pair(record: ImageRecord, view: str, config: ViewsConfig):
    try:
        image = load_rgb(record.path)
    except ImageError:
        return None
    decision = decide(image, view, config)
    before = image.copy()
    if decision.kind == "crop" and not decision.fallback:
        ImageDraw.Draw(before).rectangle(decision.box, outline=(255, 0, 0), width=max(2, image.width // 100))
    caption = f"{record.path.name[:18]} {decision.fallback or ''}".strip()
    return before, apply(image, decision), caption, bool(decision.fallback)


def _thumb(image: Image.Image) -> Image.Image:
    image = image.copy()
    image.thumbnail((THUMB, THUMB))
    canvas = Image.new("RGB", (THUMB, THUMB), (235, 235, 235))
    canvas.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return canvas


__all__: Sequence[str] = ["contact_sheet", "sample_per_view"]
