"""The content-addressed chunk store under every cache graft keeps (features, per-view decisions).

Layout of one store directory: append-only chunks, ``<id>.npy`` (float32 rows) then ``<id>.keys`` (one key per row).
A chunk counts only once its ``.keys`` file exists (both written to a temp name and renamed), so a killed writer
keeps every finished chunk and never leaves a half-written one; chunk ids are unique, so concurrent writers never
fight. Rows are read with positional reads (:mod:`graft.rows`), so reading a large cache does not grow the
process's resident memory the way a memory map does.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from platformdirs import user_cache_dir

from graft.files import atomic_write
from graft.rows import RowFile

CACHE_ENV = "GRAFT_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$GRAFT_CACHE_DIR``, else the user's cache directory (``~/.cache/graft/features`` on Linux)."""
    return Path(os.environ.get(CACHE_ENV) or Path(user_cache_dir("graft")) / "features")


def cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or default_cache_dir())


class ChunkStore:
    """Append-only, content-addressed rows (float32) in chunks; what a killed writer finished stays readable."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[Path, int]] = {}
        self._arrays: dict[Path, RowFile] = {}
        self.refresh()

    def refresh(self) -> None:
        """Index every complete chunk (those with a .keys file), including chunks other processes wrote."""
        for keys_file in sorted(self.directory.glob("*.keys")):
            array_file = keys_file.with_suffix(".npy")
            if array_file in self._arrays:
                continue
            self._arrays[array_file] = RowFile(array_file)
            for row, key in enumerate(keys_file.read_text().split()):
                self._index.setdefault(key, (array_file, row))

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Rows for ``keys`` (all must be present) as one float32 array."""
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        located = [self._index[k] for k in keys]
        by_file: dict[Path, list[int]] = {}
        for position, (file, _) in enumerate(located):
            by_file.setdefault(file, []).append(position)
        out = np.empty((len(keys), self._arrays[located[0][0]].dim), np.float32)
        for file, positions in by_file.items():
            out[positions] = self._arrays[file].take(np.array([located[p][1] for p in positions]))
        return out

    def add(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """Write one chunk atomically: the rows first, then the keys that make the chunk visible."""
        if len(keys) == 0:
            return
        stem = self.directory / uuid.uuid4().hex
        atomic_write(stem.with_suffix(".npy"), lambda handle: np.save(handle, np.ascontiguousarray(rows, dtype=np.float32)))
        atomic_write(stem.with_suffix(".keys"), lambda handle: handle.write("\n".join(keys).encode()))
        self._arrays[stem.with_suffix(".npy")] = RowFile(stem.with_suffix(".npy"))
        for row, key in enumerate(keys):
            self._index.setdefault(key, (stem.with_suffix(".npy"), row))
