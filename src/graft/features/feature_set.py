"""A :class:`FeatureSet` - the features of a list of images, in memory or in a row file on disk - and how the
features of several backbones are put side by side."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft.rows import BLOCK_ROWS, RowFile, write_blocks


@dataclass
class FeatureSet:
    """Features for a list of images: ``rows[i]`` belongs to ``paths[i]``; failed images are listed, not included.
    ``features`` is in memory, or a row file on disk when the caller asked for one (``rows_to``)."""

    paths: list[Path]
    features: np.ndarray | RowFile
    failures: dict[Path, str] = field(default_factory=dict)
    extracted: int = 0  # backbone forwards this call performed (0 when everything came from the cache)
    seconds: float = 0.0
    view_fallbacks: Counter = field(default_factory=Counter)  # view -> images used uncropped (subject not trusted)
    tta: tuple[str, ...] = ()  # test-time augmentations beyond the original, when requested

    def rows_for(self, paths: Sequence[Path]) -> np.ndarray:
        """``[n, D]`` features, or ``[n, 1 + len(tta), D]`` (original first) when test-time augmentations were requested."""
        rows = self.rows_subset(paths)
        return rows.take() if isinstance(rows, RowFile) else rows

    def rows_subset(self, paths: Sequence[Path]) -> np.ndarray | RowFile:
        """Like :meth:`rows_for`, but rows on disk stay there (a view of the row file: nothing is read)."""
        position = {path: i for i, path in enumerate(self.paths)}
        index = np.array([position[p] for p in paths], np.int64)
        return self.features.subset(index) if isinstance(self.features, RowFile) else self.features[index]


def concatenated(parts: list[FeatureSet], rows_to: Path | None = None) -> FeatureSet:
    """Members' features side by side, for the images every member could read (block by block into ``rows_to``)."""
    failures = {path: why for part in parts for path, why in part.failures.items()}
    good = [path for path in parts[0].paths if path not in failures]
    if rows_to is None:
        features = np.concatenate([part.rows_for(good) for part in parts], axis=-1)
    else:
        dim = sum(part.features.dim for part in parts)
        members = [part.rows_subset(good) for part in parts]
        blocks = ((start, np.concatenate([rows.take(slice(start, start + BLOCK_ROWS)) for rows in members], axis=1))
                  for start in range(0, len(good), BLOCK_ROWS))
        features = write_blocks(rows_to, len(good), dim, blocks)
        for part in parts:
            part.features.path.unlink()
    return FeatureSet(good, features, failures, sum(p.extracted for p in parts), sum(p.seconds for p in parts),
                      parts[0].view_fallbacks, parts[0].tta)
