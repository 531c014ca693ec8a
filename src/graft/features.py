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
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from platformdirs import user_cache_dir
from torch.utils.data import DataLoader, Dataset

from graft.augment import tta_views
from graft.backbones import Backbone
from graft.config import ViewsConfig
from graft.errors import ImageError
from graft.files import atomic_write, atomic_write_text
from graft.images import load_rgb
from graft.views import Decision, apply, decide, params_key

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


class ChunkStore:
    """Append-only, content-addressed rows (float32) in chunks; what a killed writer finished stays readable."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
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
        return np.stack([self._arrays[file][row] for file, row in (self._index[k] for k in keys)])

    def add(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """Write one chunk atomically: the rows first, then the keys that make the chunk visible."""
        if len(keys) == 0:
            return
        stem = self.directory / uuid.uuid4().hex
        atomic_write(stem.with_suffix(".npy"), lambda handle: np.save(handle, np.asarray(rows, dtype=np.float32)))
        atomic_write(stem.with_suffix(".keys"), lambda handle: handle.write("\n".join(keys).encode()))
        self._arrays[stem.with_suffix(".npy")] = np.load(stem.with_suffix(".npy"), mmap_mode="r")
        for row, key in enumerate(keys):
            self._index.setdefault(key, (stem.with_suffix(".npy"), row))


class FeatureCache(ChunkStore):
    """Feature rows of one extractor (backbone weights + preprocessing + pooling)."""

    def __init__(self, root: str | Path | None, backbone: Backbone):
        directory = Path(root or default_cache_dir()) / extractor_key(backbone)
        super().__init__(directory)
        _write_once(directory / "extractor.json", json.dumps(backbone.describe(), indent=2, default=str))


def decision_store(root: str | Path | None, view_key: str) -> ChunkStore:
    """Cached per-view preprocessing decisions (boxes, thresholds), shared by every backbone."""
    return ChunkStore(Path(root or default_cache_dir()) / "views" / view_key)


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
    view_fallbacks: Counter = field(default_factory=Counter)  # view -> images used uncropped (subject not trusted)
    tta: tuple[str, ...] = ()  # test-time views beyond the original, when requested

    def rows_for(self, paths: Sequence[Path]) -> np.ndarray:
        """``[n, D]`` features, or ``[n, 1 + len(tta), D]`` (original first) when test-time views were requested."""
        position = {path: i for i, path in enumerate(self.paths)}
        return self.features[[position[p] for p in paths]]


@dataclass(frozen=True)
class _Item:
    path: Path
    view: str
    view_key: str  # '' when the view is left unchanged
    digest: str  # image bytes

    @property
    def row_key(self) -> str:
        """Feature-cache key: the image bytes, plus the preprocessing that was applied to them."""
        if not self.view_key:
            return self.digest
        return hashlib.sha256(f"{self.digest}:{self.view_key}".encode()).hexdigest()

    def tta_key(self, name: str) -> str:
        """Key of a test-time view's features; the original view ('') keeps the plain key, so caches are shared."""
        return self.row_key if not name else hashlib.sha256(f"{self.row_key}:tta:{name}".encode()).hexdigest()


class _DecodeDataset(Dataset):
    """Decode -> per-view preprocessing (a cached decision, or computed here in the worker) -> backbone transform."""

    def __init__(self, items, known_decisions, view_config: ViewsConfig, transform, data_config, needed):
        self.items, self.known, self.view_config = items, known_decisions, view_config
        self.transform, self.data_config, self.needed = transform, data_config, needed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        """(index, views [k, C, H, W] for the needed view names, error, decision row); decoded once."""
        item, names = self.items[index], self.needed[index]
        try:
            image = load_rgb(item.path)
            known = self.known[index]
            decision = Decision.from_row(known) if known is not None else decide(image, item.view, self.view_config)
            original = self.transform(apply(image, decision))
            extra = [name for name in names if name]
            views = [original[None]] if "" in names else []
            if extra:
                views.append(tta_views(original, extra, self.data_config["mean"], self.data_config["std"]))
            return index, torch.cat(views), "", decision.to_row()
        except ImageError as error:
            return index, torch.zeros(0, *self.data_config["input_size"]), str(error), Decision().to_row()
        except Exception as error:  # a transform failing on a strange image must not end the run
            return index, torch.zeros(0, *self.data_config["input_size"]), f"{item.path}: {error}", Decision().to_row()


def _collate(batch):
    """Images contribute different numbers of views: stack them all into one forward batch."""
    indices, views, errors, decisions = zip(*batch, strict=True)
    counts = [len(v) for v in views]
    return list(indices), torch.cat(views), list(errors), torch.from_numpy(np.stack(decisions)), counts


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
    views: Sequence[str] | None = None,
    view_config: ViewsConfig | None = None,
    tta: Sequence[str] = (),
) -> FeatureSet:
    """Features for ``paths``: cached rows are read, the rest extracted in batches and cached in chunks.

    ``views[i]`` is the view of ``paths[i]`` (Flower, Leaf, ...); with ``view_config.enabled`` each image is
    preprocessed for its view first. ``tta`` names test-time views (see ``augment.TTA_VIEWS``): their features
    are cached like any other and returned as ``[n, 1 + len(tta), D]``. ``progress(done, total)`` is called after
    each batch needing extraction.
    """
    start = time.perf_counter()
    view_config = view_config or ViewsConfig()
    cache = FeatureCache(cache_dir, backbone)
    view_of = dict(zip((Path(p) for p in paths), views or [""] * len(paths), strict=True))
    digests, failures = _digests(list(view_of))
    items = [_Item(p, v, params_key(v, view_config), digests[p]) for p, v in view_of.items() if p in digests]
    names = ("", *tta)
    missing = {}
    for item in items:
        needed = [name for name in names if item.tta_key(name) not in cache]
        if needed and item.row_key not in missing:
            missing[item.row_key] = (item, needed)
    stores = {key: decision_store(cache_dir, key) for key in {item.view_key for item in items} if key}
    extracted = _extract_missing(list(missing.values()), backbone, cache, stores, view_config,
                                 (batch_size, num_workers, chunk_size), failures, progress)
    good = [item for item in items if item.path not in failures]
    if not good:
        features = np.zeros((0, backbone.num_features), np.float32)
    elif tta:
        features = np.stack([cache.get([item.tta_key(name) for item in good]) for name in names], axis=1)
    else:
        features = cache.get([item.row_key for item in good])
    fallbacks = _count_fallbacks(good, stores)
    seconds = time.perf_counter() - start
    return FeatureSet([i.path for i in good], features, failures, extracted, seconds, fallbacks, tuple(tta))


def _digests(paths: Sequence[Path]) -> tuple[dict[Path, str], dict[Path, str]]:
    digests, failures = {}, {}
    for path in paths:
        try:
            digests[path] = file_digest(path)
        except OSError as error:
            failures[path] = f"{path}: cannot read ({error.strerror or error}); fix or remove the file"
    return digests, failures


def _count_fallbacks(items: Sequence[_Item], stores: dict[str, ChunkStore]) -> Counter:
    counts: Counter = Counter()
    for item in items:
        store = stores.get(item.view_key)
        if store is not None and item.digest in store and Decision.from_row(store.get([item.digest])[0]).fallback:
            counts[item.view] += 1
    return counts


def _extract_missing(todo, backbone, cache, stores, view_config, sizes, failures, progress) -> int:
    batch_size, num_workers, chunk_size = sizes
    if progress:
        progress(0, len(todo))
    if not todo:
        return 0
    items, needed = [item for item, _ in todo], [names for _, names in todo]
    known = [stores[i.view_key].get([i.digest])[0] if i.view_key and i.digest in stores[i.view_key] else None
             for i in items]
    dataset = _DecodeDataset(items, known, view_config, backbone.transform(), backbone.data_config, needed)
    workers = default_workers() if num_workers is None else num_workers
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    pending = _Pending()
    extracted = 0
    with torch.inference_mode():
        for indices, images, errors, decisions, counts in loader:
            # test-time views multiply the batch; forwards stay at batch_size (192 views at once ran 2x slower)
            chunks = [backbone(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)]
            rows = torch.cat(chunks).numpy() if chunks else np.zeros((0, backbone.num_features))
            offsets = np.cumsum([0, *counts])
            for position, (index, error) in enumerate(zip(indices, errors, strict=True)):
                if error:
                    failures[items[index].path] = error
                    continue
                item = items[index]
                keys = [item.tta_key(name) for name in needed[index]]
                pending.add(item, keys, rows[offsets[position] : offsets[position + 1]],
                            decisions[position].numpy(), known[index] is None)
            extracted += len(images)
            if len(pending.feature_keys) >= chunk_size:
                pending.flush(cache, stores)
            if progress:
                progress(indices[-1] + 1, len(todo))
    pending.flush(cache, stores)
    return extracted


class _Pending:
    """Rows waiting to be written as one chunk: features, and the preprocessing decisions computed for them."""

    def __init__(self):
        self.feature_keys: list[str] = []
        self.feature_rows: list[np.ndarray] = []
        self.decisions: dict[str, dict[str, np.ndarray]] = {}

    def add(self, item: _Item, keys: list[str], rows: np.ndarray, decision: np.ndarray, is_new_decision: bool) -> None:
        self.feature_keys.extend(keys)
        self.feature_rows.extend(rows)
        if item.view_key and is_new_decision:
            self.decisions.setdefault(item.view_key, {})[item.digest] = decision

    def flush(self, cache: FeatureCache, stores: dict[str, ChunkStore]) -> None:
        # decisions first: a feature row must never be visible without the decision that produced it
        for view_key, rows in self.decisions.items():
            stores[view_key].add(list(rows), np.stack(list(rows.values())))
        if self.feature_keys:
            cache.add(self.feature_keys, np.stack(self.feature_rows))
        self.__init__()


class ViewPreparer:
    """Per-view preprocessing for training images, reusing the cached decisions (picklable for DataLoader workers)."""

    def __init__(self, view_config: ViewsConfig, cache_dir: str | Path | None):
        self.view_config, self.cache_dir = view_config, cache_dir
        self._stores: dict[str, ChunkStore] = {}
        self._digests: dict[Path, str] = {}  # training reads each image every epoch: hash it once

    def __call__(self, image, record):
        key = params_key(record.view, self.view_config)
        if not key:
            return image
        store = self._stores.get(key) or self._stores.setdefault(key, decision_store(self.cache_dir, key))
        digest = self._digests.get(record.path) or self._digests.setdefault(record.path, file_digest(record.path))
        if digest in store:
            return apply(image, Decision.from_row(store.get([digest])[0]))
        return apply(image, decide(image, record.view, self.view_config))
