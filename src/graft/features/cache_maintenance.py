"""``graft cache info | prune | verify``: what a (shared) cache holds, dropping old chunks, finding corrupt ones.

A cache root holds one chunk store per extractor (``<key>/extractor.json`` names the backbone), per-view decision
stores, exported graphs and thumbnails. A chunk is a ``.npy`` of float32 rows plus the ``.keys`` file that makes it
visible; prune removes the ``.keys`` first, so a reader never sees half a chunk.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from graft.errors import DataError
from graft.features.engines import graph_digest_file, graph_intact
from graft.store import cache_root, chunk_problem, read_chunk_keys

DAY = 86_400


@dataclass
class StoreInfo:
    directory: Path
    name: str  # the backbone for a feature store, "view decisions" for a decision store
    rows: int = 0
    chunks: int = 0
    bytes: int = 0
    newest: float = 0.0  # mtime of the newest chunk


@dataclass
class CacheReport:
    root: Path
    stores: list[StoreInfo] = field(default_factory=list)
    other_bytes: dict[str, int] = field(default_factory=dict)  # graphs, thumbnails
    unreadable: int = 0  # chunks whose keys cannot be read: `graft cache verify --remove` repairs them


def cache_info(cache_dir: str | Path | None = None) -> CacheReport:
    root = cache_root(cache_dir)
    report = CacheReport(root)
    stores = sorted({keys.parent for keys in root.rglob("*.keys")})
    for directory in sorted(p for p in root.glob("*") if p.is_dir()):
        if not any(store.is_relative_to(directory) for store in stores):
            report.other_bytes[directory.name] = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    for directory in stores:
        chunks = sorted(directory.glob("*.keys"))
        info = StoreInfo(directory, _store_name(directory), chunks=len(chunks))
        for keys in chunks:
            array = keys.with_suffix(".npy")
            try:
                info.rows += len(read_chunk_keys(keys)[0])
            except (OSError, ValueError):
                report.unreadable += 1
            info.bytes += keys.stat().st_size + (array.stat().st_size if array.exists() else 0)
            info.newest = max(info.newest, keys.stat().st_mtime)
        report.stores.append(info)
    return report


def prune(cache_dir: str | Path | None, older_than_days: float) -> tuple[int, int]:
    """Remove chunks last written more than ``older_than_days`` ago, and what killed writers left for over a day
    (temp files, a streamed fit's row directory); (chunks removed, bytes freed). Images whose rows go are simply
    extracted again when next needed."""
    cutoff = time.time() - older_than_days * DAY
    removed = freed = 0
    for keys in cache_root(cache_dir).rglob("*.keys"):
        if keys.stat().st_mtime < cutoff:
            array = keys.with_suffix(".npy")
            freed += keys.stat().st_size + (array.stat().st_size if array.exists() else 0)
            keys.unlink()  # invisible first
            array.unlink(missing_ok=True)
            removed += 1
    for temporary in cache_root(cache_dir).rglob(".*.tmp"):
        if temporary.stat().st_mtime < time.time() - DAY:
            freed += temporary.stat().st_size
            temporary.unlink(missing_ok=True)
    for rows in cache_root(cache_dir).glob("rows-*"):  # a streamed fit's row files, left by a killed fit
        files = [f for f in rows.rglob("*") if f.is_file()]
        if max([rows.stat().st_mtime] + [f.stat().st_mtime for f in files]) < time.time() - DAY:
            freed += sum(f.stat().st_size for f in files)
            shutil.rmtree(rows, ignore_errors=True)
    return removed, freed


def verify(cache_dir: str | Path | None = None, remove: bool = False) -> list[str]:
    """Re-read every chunk and exported graph in full; one line per damaged one (removed when ``remove``, so the
    next run makes it again). A chunk is damaged when it is unreadable or truncated, its rows and keys disagree, its
    bytes differ from its recorded SHA-256 (:func:`~graft.store.chunk_problem`) or it holds NaN/infinite values; a
    graph when its bytes differ from the SHA-256 written with it."""
    root = cache_root(cache_dir)
    if not root.is_dir():
        raise DataError(f"{root}: no such cache directory; give the --cache-dir your runs used")
    problems = []
    for keys in sorted(root.rglob("*.keys")):
        why = chunk_problem(keys)
        if why:
            problems.append(f"{keys.with_suffix('.npy')}: {why}" + ("; removed" if remove else ""))
            if remove:
                keys.unlink()
                keys.with_suffix(".npy").unlink(missing_ok=True)
    for graph in sorted((root / "graphs").glob("*.onnx")):
        if not graph_intact(graph):
            problems.append(f"{graph}: missing its SHA-256 or its bytes changed" + ("; removed" if remove else ""))
            if remove:
                graph.unlink()
                graph_digest_file(graph).unlink(missing_ok=True)
    return problems


def _store_name(directory: Path) -> str:
    described = directory / "extractor.json"
    if described.is_file():
        try:
            return str(json.loads(described.read_text()).get("name", directory.name))
        except (OSError, ValueError):
            return directory.name
    return "view decisions"
