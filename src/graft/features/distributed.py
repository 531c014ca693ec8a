"""Feature extraction on a Ray cluster (Ray Data), into the same content-addressed cache as one process.

The driver only lists the images: no hashing, no decoding. Ray Data cuts the list into batches (at most
``features.chunk_size`` images) and sends them to a pool of actors; each actor builds the backbone once (the weights must
have the same identity as the driver's) and runs :func:`~graft.features.extract.extract_features` on its batch: it
hashes the images, skips those the cache already holds, extracts the rest and writes them as one chunk (temp file +
rename, unique chunk names), so concurrent writers never collide and a killed actor leaves only finished chunks.
Ray restarts a killed actor and retries its batch (``max_restarts``/``max_task_retries``); the retry skips whatever
the dead one finished. The cache must be on a filesystem every node sees (``features.cache_dir``).

Rows are bit-identical to a single process's: ONNX Runtime's features do not depend on how images are batched on
CPU (checked in tests/test_distributed.py); under ``features.engine: torch`` they can differ in the last float bit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from graft.config import BackboneConfig, FeatureConfig, ViewsConfig
from graft.device import resolve_device
from graft.errors import BackboneError, GraftError
from graft.features.backbones import create_backbone, members_of
from graft.features.cache import FeatureCache

RETRIES = 3


@dataclass
class RayExtraction:
    images: int
    extracted: int  # backbone forwards the actors performed (0 when the cache held everything)
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    actors: int = 1


class _Extractor:
    """A Ray actor: one backbone per process, ``extract_features`` per batch; on the GPU Ray gave it, if any."""

    def __init__(self, backbone: dict, features: dict, views: dict, identity: str, threads: int, gpu: bool):
        import torch

        torch.set_num_threads(threads)  # this actor's share of the node's cores (ONNX Runtime follows it)
        self.device = resolve_device("cuda" if gpu else "cpu")  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
        self.backbone = create_backbone(**backbone)
        if self.backbone.identity != identity:
            raise BackboneError(f"this worker loads {self.backbone.name} with weights {self.backbone.identity}, the "
                                f"driver {identity}; install the same weights on every node")
        self.settings = FeatureConfig(**features | {"num_workers": threads})  # decode threads beside the forward
        self.views = ViewsConfig(**views)
        self.cache = FeatureCache(self.settings.cache_dir, self.backbone, self.settings.decode)  # indexed once

    def __call__(self, batch: dict) -> dict:
        from graft.features.extract import extract_features

        paths = [Path(p) for p in batch["path"]]
        result = extract_features(paths, self.backbone, self.settings, views=list(batch["view"]),
                                  view_config=self.views, cache=self.cache, device=self.device)
        errors = [result.failures.get(path, "") for path in paths]
        return {"path": batch["path"], "error": errors, "forwards": [result.extracted] + [0] * (len(paths) - 1)}


def extract_on_ray(paths: Sequence[Path], backbone: BackboneConfig, settings: FeatureConfig, *,
                   views: Sequence[str] | None = None, view_config: ViewsConfig | None = None,
                   address: str | None = None, actors: int | None = None, threads_per_actor: int = 1,
                   gpus_per_actor: float = 0, progress: Callable[[int, int], None] | None = None) -> RayExtraction:
    """Extract the features of ``paths`` on Ray (``address``: "auto", "ray://host:10001"; None = a local cluster of
    this machine's cores) with ``actors`` backbone actors (None = one per ``threads_per_actor`` cores, or with
    ``gpus_per_actor`` > 0 one per that share of the cluster's GPUs, each forwarding on its GPU; 0.5 puts two actors
    on a GPU, so one decodes while the other forwards)."""
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise GraftError("Ray is not installed; pip install 'graft[ray]'") from error
    start = time.perf_counter()
    view_config = view_config or ViewsConfig()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False  # graft reports progress itself
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    resources = ray.cluster_resources()
    if gpus_per_actor > 0 and resources.get("GPU", 0) < gpus_per_actor:
        raise GraftError(f"--gpus-per-actor {gpus_per_actor:g}: the Ray cluster has {resources.get('GPU', 0):g} GPU(s); "
                         "start its nodes with GPUs or leave --gpus-per-actor at 0")
    by_gpu = int(resources.get("GPU", 0) / gpus_per_actor) if gpus_per_actor > 0 else None
    actors = actors or by_gpu or max(1, int(resources.get("CPU", 1)) // threads_per_actor)
    rows = [{"path": str(path), "view": view} for path, view in zip(paths, views or [""] * len(paths), strict=True)]
    failures: dict[str, str] = {}
    forwards = 0
    for member in members_of(create_backbone(**backbone.model_dump())):
        spec = backbone.model_dump() | {"name": member.name}
        dataset = ray.data.from_items(rows).map_batches(
            _Extractor, batch_size=_batch_size(len(rows), actors, settings), concurrency=actors,
            num_cpus=threads_per_actor, num_gpus=gpus_per_actor,
            fn_constructor_kwargs={"backbone": spec, "features": settings.model_dump(), "views": view_config.model_dump(),
                                   "identity": member.identity, "threads": threads_per_actor,
                                   "gpu": gpus_per_actor > 0},
            max_restarts=RETRIES, max_task_retries=RETRIES)
        done = 0
        for batch in dataset.iter_batches(batch_size=None):
            failures.update({p: e for p, e in zip(batch["path"], batch["error"], strict=True) if e})
            forwards += int(sum(batch["forwards"]))
            done += len(batch["path"])
            if progress:
                progress(done, len(rows))
    return RayExtraction(len(rows), forwards, failures, time.perf_counter() - start, actors)


def _batch_size(images: int, actors: int, settings: FeatureConfig) -> int:
    """Images per Ray batch (one cache chunk each): at most ``chunk_size``, and small enough that every actor gets
    about 4 batches of a small run (a killed actor then loses little, and none sits idle)."""
    return min(settings.chunk_size, max(1, images // (4 * actors)))
