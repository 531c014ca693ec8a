"""The cache of per-view preprocessing decisions (boxes, thresholds), shared by every backbone.

A decision is deterministic for (image bytes, view, parameters), so it is computed once - the contour costs ~55 ms,
twice a Lite0 forward - and stored in a :class:`~graft.store.ChunkStore` under ``<cache>/views/<params key>/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from graft.config import ViewsConfig
from graft.files import file_digest
from graft.store import ChunkStore, cache_root
from graft.views.preprocess import Decision, decide, params_key


def decision_store(cache_dir: str | Path | None, view_key: str) -> ChunkStore:
    """The store of decisions made with the parameters ``view_key`` (see :func:`params_key`)."""
    return ChunkStore(cache_root(cache_dir) / "views" / view_key)


class DecisionCache:
    """Decisions per (image digest, view), read from the stores or made on the spot (picklable for workers)."""

    def __init__(self, config: ViewsConfig, cache_dir: str | Path | None):
        self.config, self.cache_dir = config, cache_dir
        self.stores: dict[str, ChunkStore] = {}
        self._digests: dict[Path, str] = {}  # training reads each image every epoch: hash it once

    def store(self, view_key: str) -> ChunkStore:
        if view_key not in self.stores:
            self.stores[view_key] = decision_store(self.cache_dir, view_key)
        return self.stores[view_key]

    def known(self, digest: str, view: str) -> np.ndarray | None:
        """The cached decision row for this image and view, or None (also when the view is left unchanged)."""
        key = params_key(view, self.config)
        if not key or digest not in self.store(key):
            return None
        return self.store(key).get([digest])[0]

    def decision(self, image: Image.Image, path: Path, view: str) -> Decision:
        """The decision for a decoded image (by its file's bytes), from the cache when it was made before."""
        if not params_key(view, self.config):
            return Decision()
        digest = self._digests.get(path) or self._digests.setdefault(path, file_digest(path))
        row = self.known(digest, view)
        return Decision.from_row(row) if row is not None else decide(image, view, self.config)
