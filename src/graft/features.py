"""Bottleneck features, extracted once and cached on disk by content.

Layout: ``<cache root>/<extractor key>/`` where the key hashes the backbone's weights identity, its preprocessing
and pooling. Inside, append-only chunks: ``<id>.npy`` (float32 rows) then ``<id>.keys`` (one image-bytes SHA-256 per
row). A chunk counts only once its ``.keys`` file exists (both written to a temp name and renamed), so a killed run
keeps every finished chunk and never leaves a half-written one; chunk ids are unique, so concurrent runs never fight.
Reads are memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from platformdirs import user_cache_dir
from torch.utils.data import DataLoader, Dataset

from graft.backbones import Backbone
from graft.errors import ImageError
from graft.files import atomic_write, atomic_write_text
from graft.images import load_rgb

CACHE_ENV = "GRAFT_CACHE_DIR"
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(user_cache_dir("graft")) / "features")


def file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def extractor_key(backbone: Backbone) -> str:
    """Content key of everything that changes a feature vector except the image itself."""
    description = {"format": CACHE_FORMAT, **backbone.describe()}
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:20]


class FeatureCache:
    """Append-only, content-addressed store of feature rows for one extractor."""

    def __init__(self, root: str | Path | None, backbone: Backbone):
        self.directory = Path(root or default_cache_dir()) / extractor_key(backbone)
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_once(self.directory / "extractor.json", json.dumps(backbone.describe(), indent=2, default=str))
        self._index: dict[str, tuple[Path, int]] = {}
        self._arrays: dict[Path, np.ndarray] = {}
        self.refresh()

    def refresh(self) -> None:
        """Index every complete chunk (those with a .keys file), including chunks other processes wrote."""
        for keys_file in sorted(self.directory.glob("*.keys")):
            array_file = keys_file.with_suffix(".npy")
            if array_file in self._arrays:
                continue
            self._arrays[array_file] = np.load(array_file, mmap_mode="r")
            for row, digest in enumerate(keys_file.read_text().split()):
                self._index.setdefault(digest, (array_file, row))

    def __contains__(self, digest: str) -> bool:
        return digest in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get(self, digests: Sequence[str]) -> np.ndarray:
        """Rows for ``digests`` (all must be present) as one float32 array."""
        if not digests:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._arrays[file][row] for file, row in (self._index[d] for d in digests)])

    def add(self, digests: Sequence[str], rows: np.ndarray) -> None:
        """Write one chunk atomically: the rows first, then the keys that make the chunk visible."""
        if len(digests) == 0:
            return
        stem = self.directory / uuid.uuid4().hex
        atomic_write(stem.with_suffix(".npy"), lambda handle: np.save(handle, np.asarray(rows, dtype=np.float32)))
        atomic_write(stem.with_suffix(".keys"), lambda handle: handle.write("\n".join(digests).encode()))
        self._arrays[stem.with_suffix(".npy")] = np.load(stem.with_suffix(".npy"), mmap_mode="r")
        for row, digest in enumerate(digests):
            self._index.setdefault(digest, (stem.with_suffix(".npy"), row))


def _write_once(path: Path, text: str) -> None:
    if not path.exists():
        atomic_write_text(path, text)


@dataclass
class FeatureSet:
    """Features for a list of images: ``rows[i]`` belongs to ``paths[i]``; failed images are listed, not included."""

    paths: list[Path]
    features: np.ndarray
    failures: dict[Path, str] = field(default_factory=dict)
    extracted: int = 0  # backbone forwards this call performed (0 when everything came from the cache)
    seconds: float = 0.0

    def rows_for(self, paths: Sequence[Path]) -> np.ndarray:
        position = {path: i for i, path in enumerate(self.paths)}
        return self.features[[position[p] for p in paths]]


class _DecodeDataset(Dataset):
    def __init__(self, paths: Sequence[Path], transform, input_size: tuple[int, int, int]):
        self.paths, self.transform, self.input_size = list(paths), transform, tuple(input_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, self.transform(load_rgb(self.paths[index])), ""
        except ImageError as error:
            return index, torch.zeros(self.input_size), str(error)
        except Exception as error:  # a transform failing on a strange image must not end the run
            return index, torch.zeros(self.input_size), f"{self.paths[index]}: {error}"


def default_workers() -> int:
    """Decode workers: none on <= 2 cores, where decoding is ~10% of a forward and a worker process only takes a
    core from torch's threads (bench/extract.py measured 0.74-0.82 of raw with 1 worker, 0.86-0.94 with 0);
    otherwise one per spare core, up to 4."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores - 1)


def extract_features(
    paths: Sequence[Path],
    backbone: Backbone,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    chunk_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureSet:
    """Features for ``paths``: cached rows are read, the rest extracted in batches and cached in chunks.

    ``progress(done, total)`` is called after each batch of images needing extraction.
    """
    import time

    start = time.perf_counter()
    cache = FeatureCache(cache_dir, backbone)
    paths = list(dict.fromkeys(Path(p) for p in paths))
    digests, failures = _digests(paths)
    todo = [(p, digests[p]) for p in paths if p in digests and digests[p] not in cache]
    todo = list({digest: (path, digest) for path, digest in todo}.values())  # same bytes at two paths: once
    extracted = _extract_missing(todo, backbone, cache, batch_size, num_workers, chunk_size, failures, progress)
    good = [p for p in paths if p not in failures]
    features = cache.get([digests[p] for p in good]) if good else np.zeros((0, backbone.num_features), np.float32)
    return FeatureSet(good, features, failures, extracted, time.perf_counter() - start)


def _digests(paths: Sequence[Path]) -> tuple[dict[Path, str], dict[Path, str]]:
    digests, failures = {}, {}
    for path in paths:
        try:
            digests[path] = file_digest(path)
        except OSError as error:
            failures[path] = f"{path}: cannot read ({error.strerror or error}); fix or remove the file"
    return digests, failures


def _extract_missing(todo, backbone, cache, batch_size, num_workers, chunk_size, failures, progress) -> int:
    if progress:
        progress(0, len(todo))
    if not todo:
        return 0
    dataset = _DecodeDataset([path for path, _ in todo], backbone.transform(), backbone.data_config["input_size"])
    workers = default_workers() if num_workers is None else num_workers
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=False)
    pending_keys: list[str] = []
    pending_rows: list[np.ndarray] = []
    extracted = 0
    with torch.inference_mode():
        for indices, images, errors in loader:
            ok = [i for i, error in enumerate(errors) if not error]
            for i, error in zip(indices.tolist(), errors, strict=True):
                if error:
                    failures[todo[i][0]] = error
            if ok:
                rows = backbone(images[ok] if len(ok) < len(errors) else images).float().numpy()
                pending_keys.extend(todo[int(indices[i])][1] for i in ok)
                pending_rows.append(rows)
                extracted += len(ok)
            if len(pending_keys) >= chunk_size:
                cache.add(pending_keys, np.concatenate(pending_rows))
                pending_keys, pending_rows = [], []
            if progress:
                progress(int(indices[-1]) + 1, len(todo))
    cache.add(pending_keys, np.concatenate(pending_rows) if pending_rows else np.zeros((0, 0)))
    return extracted
