"""The content-addressed chunk store under every cache graft keeps (features, per-view decisions).

Layout of one store directory: append-only chunks, ``<id>.npy`` (float32 rows) then ``<id>.keys`` (one key per row).
A chunk counts only once its ``.keys`` file exists (both written to a temp name, flushed to disk and renamed), so a
killed writer keeps every finished chunk and never leaves a half-written one; chunk ids are unique, so concurrent
writers never fight. Rows are read with positional reads (:mod:`graft.rows`), so reading a large cache does not grow
the process's resident memory the way a memory map does.

A chunk knows when it is damaged: the first line of its ``.keys`` is ``#sha256=`` the digest of its ``.npy`` bytes and
its keys. A chunk is checked for shape when it is indexed and against its digest the first time its rows are read;
a damaged one (flipped bytes, zeroed rows, swapped keys, truncated) is left out, so its images are extracted again
instead of training on wrong numbers. Chunks written before the digest existed are checked for shape only.
"""

from __future__ import annotations

import hashlib
import io
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


def is_cache_root(directory: str | Path) -> bool:
    """Whether ``directory`` already is a graft cache: a folder holding exported graphs, view decisions or a feature
    store (``<key>/extractor.json``). What a run's config names is used only then (graft.run.read_run_config)."""
    root = Path(directory)
    if not root.is_dir():
        return False
    if (root / "graphs").is_dir() or (root / "views").is_dir():
        return True
    try:
        return any((child / "extractor.json").is_file() for child in root.iterdir())
    except OSError:
        return False


DIGEST_PREFIX = "#sha256="


class CorruptChunk(KeyError):
    """A chunk's bytes no longer match its digest; it has been left out of the index (its keys read as missing)."""


def chunk_digest(array_bytes: bytes, keys: Sequence[str]) -> str:
    return hashlib.sha256(array_bytes + b"\0" + "\n".join(keys).encode()).hexdigest()


def read_chunk_keys(keys_file: Path) -> tuple[list[str], str | None]:
    """A chunk's keys and its recorded digest (None for a chunk written before digests); ValueError when unreadable."""
    lines = keys_file.read_bytes().decode("utf-8").split("\n")
    digest = lines[0][len(DIGEST_PREFIX):] if lines and lines[0].startswith(DIGEST_PREFIX) else None
    keys = [key for key in (lines[1:] if digest is not None else lines) if key.strip()]
    return keys, digest


def chunk_problem(keys_file: Path) -> str:
    """Why a chunk cannot be trusted ('' when it can), its row file read once: unreadable keys, a broken or truncated
    row file, a row count that differs from the key count, bytes that no longer match the recorded digest, or NaN or
    infinite rows."""
    array_file = keys_file.with_suffix(".npy")
    try:
        keys, digest = read_chunk_keys(keys_file)
        checked_rows(array_file, keys)
        data = array_file.read_bytes()
    except (OSError, ValueError, EOFError) as error:  # EOFError: a zero-length .npy
        return str(error) if isinstance(error, DamagedChunk) else f"unreadable ({error})"
    if digest is not None and chunk_digest(data, keys) != digest:
        return "its bytes do not match its recorded SHA-256 (flipped bytes, changed rows or keys)"
    if not np.isfinite(np.load(io.BytesIO(data), allow_pickle=False)).all():
        return "holds NaN or infinite values"
    return ""


class DamagedChunk(ValueError):
    """A chunk whose row file does not hold one row per key (truncated, or rows and keys from different writes)."""


def checked_rows(array_file: Path, keys: Sequence[str]) -> RowFile:
    """The chunk's rows, once its row file holds exactly one float32 row per key and nothing more or less."""
    rows = RowFile(array_file)
    if rows.rows_in_file != len(keys):
        raise DamagedChunk(f"{rows.rows_in_file} rows for {len(keys)} keys")
    expected = rows.offset + rows.rows_in_file * rows.dim * 4
    if array_file.stat().st_size != expected:
        raise DamagedChunk(f"{array_file.stat().st_size} bytes where its header announces {expected}")
    return rows


class ChunkStore:
    """Append-only, content-addressed rows (float32) in chunks; what a killed writer finished stays readable."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[Path, int]] = {}
        self._arrays: dict[Path, RowFile] = {}
        self._unchecked: dict[Path, tuple[str, list[str]]] = {}  # chunks whose digest is checked on first read
        self.damaged: set[Path] = set()
        self.refresh()

    def refresh(self) -> None:
        """Index every complete chunk (those with a .keys file), including chunks other processes wrote; a chunk
        whose shape is wrong is left out (:func:`checked_rows`), its digest is checked when first read."""
        for keys_file in sorted(self.directory.glob("*.keys")):
            array_file = keys_file.with_suffix(".npy")
            if array_file in self._arrays or array_file in self.damaged:
                continue
            try:  # the shape now, the digest when first read (reading every byte here would slow every start)
                keys, digest = read_chunk_keys(keys_file)
                self._arrays[array_file] = checked_rows(array_file, keys)
            except (OSError, ValueError, EOFError):  # EOFError: a zero-length .npy
                self.damaged.add(array_file)
                continue
            if digest is not None:
                self._unchecked[array_file] = (digest, keys)
            for row, key in enumerate(keys):
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
        for file in {file for file, _ in located} & self._unchecked.keys():
            self._check(file)
        by_file: dict[Path, list[int]] = {}
        for position, (file, _) in enumerate(located):
            by_file.setdefault(file, []).append(position)
        out = np.empty((len(keys), self._arrays[located[0][0]].dim), np.float32)
        for file, positions in by_file.items():
            out[positions] = self._arrays[file].take(np.array([located[p][1] for p in positions]))
        return out

    def _check(self, file: Path) -> None:
        digest, keys = self._unchecked.pop(file)
        try:
            intact = chunk_digest(file.read_bytes(), keys) == digest
        except OSError:
            intact = False
        if not intact:
            self.damaged.add(file)
            del self._arrays[file]
            self._index = {key: place for key, place in self._index.items() if place[0] != file}
            raise CorruptChunk(f"{file}: its bytes do not match its SHA-256; its rows will be computed again")

    def add(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """Write one chunk atomically: the rows first, then the keys that make the chunk visible."""
        if len(keys) == 0:
            return
        stem = self.directory / uuid.uuid4().hex
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(rows, dtype=np.float32))
        digest = chunk_digest(buffer.getvalue(), keys)
        atomic_write(stem.with_suffix(".npy"), lambda handle: handle.write(buffer.getvalue()))
        atomic_write(stem.with_suffix(".keys"), lambda handle: handle.write(
            "\n".join([DIGEST_PREFIX + digest, *keys]).encode()))
        self._arrays[stem.with_suffix(".npy")] = RowFile(stem.with_suffix(".npy"))
        for row, key in enumerate(keys):
            self._index.setdefault(key, (stem.with_suffix(".npy"), row))
