"""Bottleneck features, extracted once and cached on disk by content (see :mod:`graft.features.cache`).

Each image is read and hashed, looked up in the cache, and only the missing ones are decoded, prepared
(:class:`~graft.features.preparation.Preparation`) and run through the backbone in batches; the new rows are written
in chunks, so a killed run keeps every finished chunk. A bad image is skipped and listed, never the end of a run.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from graft.config import AugmentConfig, FeatureConfig, ViewsConfig
from graft.device import CPU, Device
from graft.errors import ImageError
from graft.features.backbones import Backbone, ConcatBackbone
from graft.features.cache import FeatureCache
from graft.features.engines import FeatureEngine, feature_engine
from graft.features.feature_set import FeatureSet, concatenated
from graft.features.preparation import ORIGINAL, Preparation, decode_side
from graft.files import file_digest
from graft.rows import BLOCK_ROWS, write_blocks
from graft.store import ChunkStore, CorruptChunk
from graft.views.decisions import decision_store
from graft.views.preprocess import Decision, params_key

Progress = Callable[[int, int], None]


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
        """Key of a test-time augmentation's features; the original view ('') keeps the plain key, so caches are shared."""
        return self.row_key if not name else hashlib.sha256(f"{self.row_key}:tta:{name}".encode()).hexdigest()


class _DecodeDataset(Dataset):
    """One image -> its needed views, through the shared preparation path; a bad image is an error string."""

    def __init__(self, items: list[_Item], known: list, preparation: Preparation, needed: list[list[str]]):
        self.items, self.known, self.preparation, self.needed = items, known, preparation, needed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        """(index, views [k, C, H, W] for the needed view names, error, decision row); decoded once."""
        item, known = self.items[index], self.known[index]
        try:
            decision = Decision.from_row(known) if known is not None else None
            views, decision = self.preparation.load(item.path, item.view, self.needed[index], decision)
            return index, views, "", decision.to_row()
        except ImageError as error:
            return index, self.preparation.empty(), str(error), Decision().to_row()
        except Exception as error:  # a transform failing on a strange image must not end the run
            return index, self.preparation.empty(), f"{item.path}: {error}", Decision().to_row()


def _collate(batch, pin: bool = False):
    """Images contribute different numbers of views: stack them all into one forward batch (in page-locked memory
    with ``pin``, so the copy to a GPU does not block the thread that waits for it)."""
    indices, views, errors, decisions = zip(*batch, strict=True)
    counts = [len(v) for v in views]
    images = torch.cat(views)
    return list(indices), images.pin_memory() if pin else images, list(errors), \
        torch.from_numpy(np.stack(decisions)), counts


def decode_threads() -> int:
    """One decode thread per core: on 2 cores, 12 MP extraction ran 65 img/s with 1 thread, 86 with 2 (the floor
    the cores allow: 87; bench/extract.py --phone 48). Threads, not processes: PIL and onnxruntime release the GIL,
    and a worker process only fights the runtime for the same cores."""
    return os.cpu_count() or 1


def prepared_batches(dataset: Dataset, batch_size: int, threads: int, pin: bool = False) -> Iterator:
    """``dataset`` in collated batches, each prepared by a pool of ``threads`` while earlier ones are consumed (on a
    GPU: while the device runs the current one); at most ``threads + 1`` batches are held, so memory stays flat
    however many images there are. ``pin``: batches in page-locked memory, for a CUDA device."""
    def make(start: int):
        return _collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))], pin)

    starts = range(0, len(dataset), batch_size)
    if threads == 0:
        yield from map(make, starts)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="graft-decode") as pool:
        pending: deque = deque()
        for start in starts:
            pending.append(pool.submit(make, start))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def extract_features(
    paths: Sequence[Path],
    backbone: Backbone | ConcatBackbone,
    settings: FeatureConfig | None = None,
    *,
    views: Sequence[str] | None = None,
    view_config: ViewsConfig | None = None,
    tta: Sequence[str] = (),
    progress: Progress | None = None,
    cache: FeatureCache | None = None,
    augment: AugmentConfig | None = None,
    rows_to: Path | None = None,
    device: Device = CPU,
) -> FeatureSet:
    """Features for ``paths``: cached rows are read, the rest extracted in batches and cached in chunks.

    ``settings`` holds the cache directory, batch size, decode workers and chunk size. ``views[i]`` is the view of
    ``paths[i]`` (Flower, Leaf, ...); with ``view_config.enabled`` each image is preprocessed for its view first.
    ``tta`` names test-time augmentations (see ``features.tta.TTA_VIEWS``): their features are cached like any other and
    returned as ``[n, 1 + len(tta), D]``. ``progress(done, total)`` is called after each batch needing extraction.
    ``augment``: the settings behind augmented copy names in ``tta`` (cached augmented copies of training images,
    :func:`~graft.features.augment.augmented_names`). ``cache``: an open cache of this backbone to reuse (a Ray
    actor's: re-indexing a large cache per batch is slow); it is refreshed first, so chunks other processes wrote count.
    ``rows_to``: write the features into this row file, block by block, instead of memory (more features than RAM;
    not with ``tta``). ``device``: where the backbone runs (:func:`~graft.device.resolve_device`); decoding stays on
    the host's cores, overlapped with the forwards.

    Example:
        >>> features = extract_features(paths, create_backbone(), FeatureConfig(cache_dir="cache"))
    """
    if tta and rows_to is not None:
        raise ValueError("rows_to holds [n, D] rows: extract test-time augmentations in memory")
    if isinstance(backbone, ConcatBackbone):
        parts = [extract_features(paths, member, settings, views=views, view_config=view_config, tta=tta,
                                  progress=progress, augment=augment,
                                  rows_to=rows_to and rows_to.with_suffix(f".{i}.npy"), device=device)
                 for i, member in enumerate(backbone.members)]
        return concatenated(parts, rows_to)
    start = time.perf_counter()
    settings = settings or FeatureConfig()
    view_config = view_config or ViewsConfig()
    if cache is None:
        cache = FeatureCache(settings.cache_dir, backbone, settings.decode)
    else:
        cache.refresh()
    view_of = dict(zip((Path(p) for p in paths), views or [""] * len(paths), strict=True))
    digests, failures = _digests(list(view_of))
    items = [_Item(p, v, params_key(v, view_config), digests[p]) for p, v in view_of.items() if p in digests]
    names = (ORIGINAL, *tta)
    missing = {}
    for item in items:
        needed = [name for name in names if item.tta_key(name) not in cache]
        if needed and item.row_key not in missing:
            missing[item.row_key] = (item, needed)
    stores = {key: decision_store(settings.cache_dir, key) for key in {item.view_key for item in items} if key}
    preparation = Preparation(backbone.transform(), backbone.data_config, view_config,
                              decode_side(backbone.data_config, settings.decode), augment)
    extracted = _extract_missing(list(missing.values()), backbone, cache, stores, preparation, settings, failures,
                                 progress, device)
    try:
        good = [item for item in items if item.path not in failures]
        if not good:
            features = np.zeros((0, backbone.num_features), np.float32)
        elif tta:
            features = np.stack([cache.get([item.tta_key(name) for item in good]) for name in names], axis=1)
        elif rows_to is not None:
            features = write_blocks(rows_to, len(good), backbone.num_features,
                                    ((first, cache.get([i.row_key for i in good[first : first + BLOCK_ROWS]]))
                                     for first in range(0, len(good), BLOCK_ROWS)))
        else:
            features = cache.get([item.row_key for item in good])
    except CorruptChunk:  # a chunk failed its digest on first read: it is left out, so its rows are made again
        return extract_features(paths, backbone, settings, views=views, view_config=view_config, tta=tta,
                                progress=progress, augment=augment, cache=cache, rows_to=rows_to, device=device)
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


def _extract_missing(todo, backbone: Backbone, cache: FeatureCache, stores: dict[str, ChunkStore],
                     preparation: Preparation, settings: FeatureConfig, failures: dict, progress: Progress | None,
                     device: Device) -> int:
    if progress:
        progress(0, len(todo))
    if not todo:
        return 0
    items, needed = [item for item, _ in todo], [names for _, names in todo]
    known = [stores[i.view_key].get([i.digest])[0] if i.view_key and i.digest in stores[i.view_key] else None
             for i in items]
    threads = decode_threads() if settings.num_workers is None else settings.num_workers
    batch_size = device.extraction_batch(settings.batch_size)
    engine = feature_engine(backbone, settings.engine, settings.cache_dir, device)
    batches = prepared_batches(_DecodeDataset(items, known, preparation, needed), batch_size, threads,
                               pin=engine.name == "torch" and device.type == "cuda")
    pending = _Pending()
    extracted = 0
    with torch.inference_mode():
        for indices, images, errors, decisions, counts in batches:
            rows = forward_in_batches(engine, images, batch_size)
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
            if len(pending.feature_keys) >= settings.chunk_size:
                pending.flush(cache, stores)
            if progress:
                progress(indices[-1] + 1, len(todo))
    pending.flush(cache, stores)
    return extracted


def forward_in_batches(engine: FeatureEngine, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """Features of ``images``; test-time augmentations multiply a batch, so forwards stay at ``batch_size``
    (192 views at once ran 2x slower per image on this CPU)."""
    if not len(images):  # every image of a batch failed
        return np.zeros((0, 0), np.float32)
    return np.concatenate([engine(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


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
