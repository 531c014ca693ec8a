"""The feature cache: one chunk store per extractor, ``<cache root>/<extractor key>/``.

The key hashes everything that changes a feature vector except the image itself: the backbone's weights identity,
its preprocessing, pooling and memory layout. Rows inside are keyed by the image's bytes (plus the per-view
preprocessing and test-time augmentation applied to them), so a different backbone never reads another's features.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from graft.features.backbones import Backbone
from graft.files import atomic_write_text
from graft.store import ChunkStore, cache_root

CACHE_FORMAT = 1


def extractor_key(backbone: Backbone, decode: str = "full") -> str:
    """Content key of everything that changes a feature vector except the image itself (the decode mode too:
    reduced JPEG decoding changes features slightly; full decoding keeps the key caches had before it existed)."""
    description = {"format": CACHE_FORMAT, **backbone.describe()} | ({"decode": decode} if decode != "full" else {})
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:20]


class FeatureCache(ChunkStore):
    """Feature rows of one extractor (backbone weights + preprocessing + pooling)."""

    def __init__(self, root: str | Path | None, backbone: Backbone, decode: str = "full"):
        directory = cache_root(root) / extractor_key(backbone, decode)
        super().__init__(directory)
        described = directory / "extractor.json"
        if not described.exists():
            atomic_write_text(described, json.dumps(backbone.describe(), indent=2, default=str))
