"""Related images: a species' training photos from the run's manifest, as Pl@ntNet's ``results[].images`` entries
(organ, author, license, date, ``url.o`` / ``url.m`` / ``url.s``), served by ``GET /v2/images/{project}/{n}/{size}``.

``n`` indexes the run's manifest, so no path comes from a request; and since a run directory may come from anyone, a
manifest row is served only when its file is a regular file whose bytes are an image (by header): a tampered
``manifest.csv`` naming ``/etc/passwd``, a key file or a device serves nothing. Where the server has API keys, the
images go only to a key holder (the gate, and the entries' URLs carry the caller's key).
Thumbnails are made once and kept under ``<cache root>/thumbnails/`` by image content (temp file + rename).
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import urlencode

from PIL import Image

from graft.data.images import load_rgb
from graft.data.manifest import Manifest
from graft.files import atomic_write, file_digest, open_regular
from graft.store import cache_root

SIZES = {"m": 1024, "s": 256}  # longest side; "o" is the original file
SERVED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
VIEW_ORGANS = {"leaf": "leaf", "leafscan": "leaf", "flower": "flower", "fruit": "fruit", "stem": "bark",
               "entire": "habit", "branch": "habit"}


@dataclass
class RelatedImages:
    manifest: Manifest
    cache_dir: str | None = None
    _servable: dict[int, Path | None] = field(default_factory=dict, repr=False)

    @cached_property
    def by_label(self) -> dict[str, list[int]]:
        """Training photos first (what the model learnt from), then the rest, by manifest row."""
        rows: dict[str, list[int]] = {}
        order = sorted(range(len(self.manifest.records)), key=lambda i: self.manifest.records[i].split != "train")
        for i in order:
            rows.setdefault(self.manifest.records[i].label, []).append(i)
        return rows

    def servable(self, row: int) -> Path | None:
        """Row ``row``'s file when it may be served: a regular file that is an image by its header (decided once per
        row: every identification with related images would otherwise re-open its species' photos)."""
        if row not in self._servable:
            path = self.manifest.records[row].path
            try:
                resolved = path.resolve(strict=True)
                with open_regular(resolved) as handle, Image.open(handle) as image:
                    self._servable[row] = resolved if image.format in SERVED_FORMATS else None
            except (OSError, ValueError, Image.DecompressionBombError):
                self._servable[row] = None
        found = self._servable[row]
        return found if found is not None and found.is_file() else None  # a photo deleted since: not served

    def entries(self, project: str, label: str, n: int, base_url: str, api_key: str | None = None) -> list[dict]:
        """Pl@ntNet's ``images`` entries for up to ``n`` servable training photos of ``label``; their URLs carry
        ``api_key`` (a server with keys serves images only to a key holder)."""
        base = base_url.rstrip("/")
        query = f"?{urlencode({'api-key': api_key})}" if api_key else ""
        rows = (row for row in self.by_label.get(label, []) if self.servable(row) is not None)
        result = []
        for row in itertools.islice(rows, n):
            record = self.manifest.records[row]
            result.append({
                "organ": VIEW_ORGANS.get(record.view.strip().lower(), ""), "author": record.user, "license": "",
                "date": {"timestamp": None, "string": ""}, "citation": record.user,
                "url": {size: f"{base}/v2/images/{project}/{row}/{size}{query}" for size in ("o", "m", "s")},
            })
        return result

    def file(self, row: int, size: str) -> Path | None:
        """The file to send for manifest row ``row`` at ``size`` (o, m, s); None when there is no such row/size or
        the photo can no longer be read."""
        if size not in ("o", *SIZES) or not 0 <= row < len(self.manifest.records):
            return None
        path = self.servable(row)
        if path is None:
            return None
        if size == "o":
            return path
        try:
            thumbnail = cache_root(self.cache_dir) / "thumbnails" / f"{file_digest(path)}-{size}.jpg"
            if not thumbnail.is_file():
                image = load_rgb(path, min_side=SIZES[size])
                image.thumbnail((SIZES[size], SIZES[size]))
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=85)
                thumbnail.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(thumbnail, lambda handle: handle.write(buffer.getvalue()))
            return thumbnail
        except Exception:  # an unreadable photo is a 404, never a crash
            return None
