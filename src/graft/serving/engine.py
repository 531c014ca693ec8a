"""Engines for serving and ``--engine``: the ONNX export under onnxruntime, a run's cached backbone graph with its
head in numpy, or the run itself (torch).

:class:`OnnxModel` satisfies :class:`~graft.model.identification.Model` like a run or an ensemble does: it prepares
images through the same path (per-view step, the weights' transform, test-time views) and never reads the feature
rows - uploads are not worth caching. With the original view alone and the weights' own centre crop it needs neither
torch nor timm (:mod:`graft.features.eval_transform`): ``graft predict`` on an export, or on a run whose backbone
graph is in the feature cache, does not wait for them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from graft.config import GraftConfig
from graft.data.images import load_rgb
from graft.data.manifest import Manifest
from graft.data.taxonomy import Taxonomy
from graft.device import CPU, Device, resolve_device
from graft.errors import ImageError, RunError
from graft.features.engines import engine_for, graph_file
from graft.features.eval_transform import centre_crop_transform
from graft.features.preparation import Preparation, decode_side, decode_upload, view_names
from graft.model.fusion import mean_over_views
from graft.model.identification import Model
from graft.model.numpy_head import load_numpy_head
from graft.run import (
    RunFiles,
    check_complete,
    load_model,
    read_backbone_description,
    read_labels,
    read_run_taxonomy,
    read_temperature,
)
from graft.serving.batching import MicroBatcher

ENGINES = ("auto", "onnx", "torch")


@dataclass
class OnnxModel:
    labels: list[str]
    config: GraftConfig
    data_config: dict
    session: Any  # onnxruntime.InferenceSession
    temperature: float = 1.0
    taxonomy: Taxonomy = field(default_factory=Taxonomy)
    batcher: MicroBatcher | None = None  # serving: concurrent requests share forwards
    device: Device = CPU  # where ONNX Runtime computes (a GPU through onnxruntime-gpu's provider)
    engine = "onnx"

    @cached_property
    def preparation(self) -> Preparation:  # built once, not per request
        transform = centre_crop_transform(self.data_config)
        if transform is None:  # another framing: timm's own transform
            import timm

            transform = timm.data.create_transform(**self.data_config, is_training=False)
        return Preparation(transform, self.data_config, self.config.views,
                           decode_side(self.data_config, self.config.features.decode))

    def decode(self, data: bytes, name: str, view: str, max_pixels: int) -> Image.Image:
        return decode_upload(data, name, view, [self.preparation], max_pixels)

    def _tta(self, tta: Sequence[str] | None) -> tuple[str, ...]:
        return tuple(self.config.predict.tta if tta is None else tta)

    def probabilities(self, images: Sequence[Image.Image], views: Sequence[str],
                      tta: Sequence[str] | None = None) -> np.ndarray:
        batch = np.asarray(self.preparation.batch(images, views, view_names(self._tta(tta))))
        if self.batcher is not None:
            return mean_over_views(self.batcher.run(batch), len(images), self.temperature)
        size = self.device.extraction_batch(self.config.features.batch_size)
        logits = np.concatenate([self.forward(batch[i : i + size]) for i in range(0, len(batch), size)])
        return mean_over_views(logits, len(images), self.temperature)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": batch})[0]

    def image_probabilities(self, part: Manifest, tta: Sequence[str] | None = None,
                            progress: bool = False) -> tuple[Manifest, np.ndarray, dict]:
        images, failures = [], {}
        for record in part:
            try:
                images.append(load_rgb(record.path, min_side=self.preparation.side_for(record.view)))
            except ImageError as error:
                failures[record.path] = str(error)
        kept = part.without(failures)
        if not images:
            return kept, np.zeros((0, len(self.labels))), failures
        return kept, self.probabilities(images, [r.view for r in kept], tta), failures

    def measure_throughput(self, part: Manifest, tta: Sequence[str] | None = None) -> float:
        sample = Manifest(part.records[:64])
        start = time.perf_counter()
        self.image_probabilities(sample, tta)
        return round(len(sample) / (time.perf_counter() - start), 2) if len(sample) else float("nan")


def load_engine(run_dir: str | Path, engine: str = "auto", batch_window_ms: float = 0.0,
                device: str | Device = "auto") -> Model:
    """``onnx`` (needs an export), ``torch`` (the run or ensemble itself), or ``auto``: the export when there is one,
    else the backbone's graph from the feature cache with the head in numpy (:func:`_graph_model`), else torch.

    ``device`` (:func:`~graft.device.resolve_device`): where the model computes. ``auto`` takes ONNX Runtime only where
    it runs on that device (a GPU needs onnxruntime-gpu), else the run itself on the device through torch.
    ``batch_window_ms`` > 0: the ONNX engine batches concurrent callers' images into shared forwards, waiting this
    long for company (see :mod:`graft.serving.batching`)."""
    files = RunFiles(run_dir)
    if engine not in ENGINES:
        raise RunError(f"unknown engine {engine!r}; use auto, onnx or torch")
    device = resolve_device(device)
    exported = files.onnx.is_file()
    if engine == "onnx" and not exported:
        raise RunError(f"{files.onnx} not found; run `graft export {files.root} --format onnx` first")
    onnx_here = engine_for(engine, device) == "onnx"
    if onnx_here and exported:
        model = _onnx_model(files, device)
    elif not onnx_here or (model := _graph_model(files, device)) is None:
        return load_model(files.root, device)
    if batch_window_ms > 0:
        model.batcher = MicroBatcher(model.forward, batch_window_ms / 1000,
                                     device.extraction_batch(model.config.features.batch_size))
    return model


def _onnx_model(files: RunFiles, device: Device) -> OnnxModel:
    import onnxruntime

    metadata = json.loads(files.onnx_metadata.read_text())
    session = onnxruntime.InferenceSession(str(files.onnx), providers=device.onnx_providers())
    return OnnxModel(metadata["labels"], GraftConfig.from_yaml(files.config), _tuples(metadata["data_config"]),
                     session, metadata["temperature"], read_run_taxonomy(files), device=device)


def _graph_model(files: RunFiles, device: Device) -> OnnxModel | None:
    """A run that was not exported, without torch: its backbone's ONNX graph from the feature cache (there wherever
    its features were extracted under ONNX Runtime; keyed by the weights' identity, so only the very network the
    head was trained on) and its head in numpy (:mod:`graft.model.numpy_head`). None where a piece is missing (an
    ensemble, concatenated backbones, ``features.engine: torch``, no graph, a head numpy cannot run): the run itself
    answers then, through torch."""
    if files.is_ensemble():
        return None
    check_complete(files)
    config = GraftConfig.from_yaml(files.config)
    described = read_backbone_description(files)
    if config.features.engine == "torch" or "members" in described:
        return None
    graph = graph_file(described, config.features.cache_dir)
    head = load_numpy_head(files.head, config.head) if graph.is_file() else None
    if head is None:
        return None
    try:
        import onnxruntime
    except ImportError:
        return None
    session = GraphThenHead(onnxruntime.InferenceSession(str(graph), providers=device.onnx_providers()), head)
    return OnnxModel(read_labels(files), config, _tuples(described["data_config"]), session,
                     read_temperature(files), read_run_taxonomy(files), device=device)


@dataclass(frozen=True)
class GraphThenHead:
    """An onnxruntime-like session: the backbone's graph gives features, the numpy head turns them into logits."""

    backbone: Any  # onnxruntime.InferenceSession
    head: Callable[[np.ndarray], np.ndarray]

    def run(self, output_names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [self.head(self.backbone.run(output_names, feeds)[0])]


def _tuples(data_config: dict) -> dict:
    """A data config read from JSON, its lists tuples again (as timm gives them)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
