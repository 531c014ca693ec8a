"""Engines for serving and ``--engine``: the ONNX export under onnxruntime, a run's cached backbone graph with its
head in numpy, or the run itself (torch).

:class:`OnnxModel` satisfies :class:`~graft.model.identification.Model` like a run or an ensemble does: it prepares
images through the same path (per-view step, the weights' transform, test-time augmentations) and never reads the feature
rows - uploads are not worth caching. With the original view alone and the weights' own centre crop it needs neither
torch nor timm (:mod:`graft.features.eval_transform`): ``graft predict`` on an export, or on a run whose backbone
graph is in the feature cache, does not wait for them.
"""

from __future__ import annotations

import importlib.util
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
from graft.features.engines import engine_for, graph_file, graph_intact, inference_session
from graft.features.eval_transform import centre_crop_transform
from graft.features.preparation import Preparation, decode_side, decode_upload, view_names
from graft.model.fusion import mean_over_views
from graft.model.identification import Model
from graft.model.numpy_head import numpy_head
from graft.run import (
    RunFiles,
    check_complete,
    checks,
    load_model,
    read_backbone_description,
    read_labels,
    read_run_config,
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
    where = files.onnx_metadata
    metadata = checks.read_json(where, REEXPORT)
    if not isinstance(metadata, dict):
        raise checks.refuse(where, "expected a JSON object (labels, data_config, temperature)", REEXPORT)
    labels = checks.check_labels(metadata.get("labels"), where)
    data_config = checks.check_data_config(metadata.get("data_config"), where)
    temperature = checks.check_temperature(metadata, where)
    session = _session(files.onnx, device, REEXPORT)
    return OnnxModel(labels, read_run_config(files), _tuples(data_config), session, temperature,
                     read_run_taxonomy(files), device=device)


REEXPORT = "run `graft export RUN` again"


def _session(path: Path, device: Device, fix: str):
    """An ONNX Runtime session (:func:`~graft.features.engines.inference_session`), or one RunError for a graph
    onnxruntime cannot load (truncated, not ONNX)."""
    try:
        return inference_session(path, device)
    except Exception as error:  # onnxruntime raises its own types (Fail, InvalidProtobuf, ...)
        raise checks.refuse(path, f"not a loadable ONNX graph ({checks.first_line(error)})", fix) from error


def _graph_model(files: RunFiles, device: Device) -> OnnxModel | None:
    """A run that was not exported, without torch: its backbone's ONNX graph from the feature cache (there wherever
    its features were extracted under ONNX Runtime; keyed by the weights' identity, so only the very network the
    head was trained on) and its head in numpy (:mod:`graft.model.numpy_head`). None where a piece is missing (an
    ensemble, concatenated backbones, ``features.engine: torch``, no graph, a head numpy cannot run): the run itself
    answers then, through torch."""
    if files.is_ensemble():
        return None
    check_complete(files)
    config = read_run_config(files)
    described = read_backbone_description(files)
    if config.features.engine == "torch" or "members" in described:
        return None
    graph = graph_file(described, config.features.cache_dir)
    labels = read_labels(files)
    head = _numpy_head(files, config, len(labels)) if graph_intact(graph) else None
    if head is None:
        return None
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    session = GraphThenHead(_session(graph, device, "run `graft cache verify --remove`"), head)
    return OnnxModel(labels, config, _tuples(described["data_config"]), session,
                     read_temperature(files), read_run_taxonomy(files), device=device)


def _numpy_head(files: RunFiles, config: GraftConfig, n_labels: int):
    """The run's head in numpy, checked: readable, finite, positive stds, one output per label."""
    from safetensors.numpy import load_file

    try:
        state = load_file(files.head)
    except Exception as error:  # safetensors' own error types for a damaged file
        raise checks.refuse(files.head, f"not a readable safetensors file ({checks.first_line(error)})") from error
    checks.check_head_state(state, files.head)
    try:
        head = numpy_head(state, config.head)  # the tensors just checked: the file is read once
        width = next(array.shape[-1] for name, array in state.items() if name.endswith("mean"))
        outputs = None if head is None else head(np.zeros((1, width), np.float32)).shape[-1]
    except (KeyError, ValueError, StopIteration) as error:
        raise checks.refuse(files.head, f"does not fit the run's config.yaml ({checks.first_line(error)})") from error
    if outputs is not None and outputs != n_labels:
        raise checks.refuse(files.head, f"the head has {outputs} outputs for {n_labels} labels")
    return head


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
