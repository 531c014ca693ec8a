"""ONNX export and in-memory inference engines for serving and ``--engine``.

``graft export RUN --format onnx`` writes ``RUN/model.onnx`` (backbone + head, dynamic batch) and
``RUN/model.onnx.json`` (preprocessing, labels, temperature), so onnxruntime can serve without torch doing the work.
An :class:`Engine` takes decoded images (not paths), applies the same preprocessing as training (per-view step,
the weights' transform, test-time views) and never touches the feature cache: uploads are not worth caching.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn

from graft.augment import tta_views
from graft.config import GraftConfig
from graft.ensemble import Ensemble, load_model
from graft.errors import ImageError, RunError
from graft.files import atomic_write_text
from graft.images import load_rgb
from graft.pipeline import Classifier, Identification
from graft.predict import fuse, ranked, softmax
from graft.views import apply, decide

ONNX_FILE = "model.onnx"


@dataclass
class Engine:
    """One model in memory: ``logits(batch)`` is torch or onnxruntime; everything around it is shared."""

    name: str
    labels: list[str]
    config: GraftConfig
    data_config: dict
    logits: Callable[[np.ndarray], np.ndarray] | None
    temperature: float = 1.0
    members: list[tuple[float, Engine]] | None = None  # an ensemble: each member preprocesses for its own backbone

    @cached_property
    def transform(self):
        return timm.data.create_transform(**self.data_config, is_training=False)  # built once, not per request

    def batch(self, images: Sequence[Image.Image], views: Sequence[str]) -> tuple[np.ndarray, int]:
        transform = self.transform
        tta = self.config.predict.tta
        rows = []
        for image, view in zip(images, views, strict=True):
            tensor = transform(apply(image, decide(image, view, self.config.views)))
            rows.append(tensor[None])
            if tta:
                rows.append(tta_views(tensor, tta, self.data_config["mean"], self.data_config["std"]))
        return torch.cat(rows).numpy(), 1 + len(tta)

    def probabilities(self, images: Sequence[Image.Image], views: Sequence[str]) -> np.ndarray:
        if self.members:
            return sum(weight * engine.probabilities(images, views) for weight, engine in self.members)
        batch, per_image = self.batch(images, views)
        batch_size = self.config.features.batch_size
        logits = np.concatenate([self.logits(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)])
        probabilities = softmax(logits / self.temperature)
        return probabilities.reshape(len(images), per_image, -1).mean(axis=1)

    def identify(self, images, views, fusion: str | None = None, top: int | None = None) -> dict:
        fusion = fusion or self.config.predict.fusion
        probabilities = self.probabilities(images, views)
        fused = fuse(probabilities, fusion)
        threshold = self.config.predict.reject_threshold
        return {
            "ranking": [{"label": label, "probability": p} for label, p in
                        ranked(fused, self.labels, top or self.config.predict.top_k)],
            "per_image": [[{"label": label, "probability": p} for label, p in ranked(row, self.labels, 3)]
                          for row in probabilities],
            "fusion": fusion,
            "unknown": threshold is not None and float(fused.max()) < threshold,
            "engine": self.name,
        }


def export_onnx(run_dir: str | Path, opset: int = 17) -> Path:
    """Write ``model.onnx`` + ``model.onnx.json`` into the run (atomically)."""
    run_dir = Path(run_dir)
    model = load_model(run_dir)
    if isinstance(model, Ensemble):
        raise RunError(f"{run_dir} is an ensemble; export its member runs one by one")
    network = nn.Sequential(model.backbone.model.to(memory_format=torch.contiguous_format), model.head).eval()
    size = model.backbone.data_config["input_size"]
    temporary = run_dir / f".{ONNX_FILE}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        torch.onnx.export(network, (torch.zeros(1, *size),), str(temporary), input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=opset, dynamo=False)
        os.replace(temporary, run_dir / ONNX_FILE)
    finally:
        temporary.unlink(missing_ok=True)
    metadata = {"labels": model.labels, "data_config": model.backbone.data_config, "temperature": model.temperature,
                "backbone": model.backbone.describe(), "opset": opset}
    atomic_write_text(run_dir / f"{ONNX_FILE}.json", json.dumps(metadata, indent=2, default=list) + "\n")
    return run_dir / ONNX_FILE


def load_engine(run_dir: str | Path, engine: str = "auto") -> Engine:
    """``onnx`` (needs an export), ``torch``, or ``auto``: onnx when ``model.onnx`` exists, else torch."""
    run_dir = Path(run_dir)
    if engine not in ("auto", "onnx", "torch"):
        raise RunError(f"unknown engine {engine!r}; use auto, onnx or torch")
    exported = (run_dir / ONNX_FILE).is_file()
    if engine == "onnx" and not exported:
        raise RunError(f"{run_dir / ONNX_FILE} not found; run `graft export {run_dir} --format onnx` first")
    if engine == "onnx" or (engine == "auto" and exported):
        return _onnx_engine(run_dir)
    return _torch_engine(load_model(run_dir))


def _onnx_engine(run_dir: Path) -> Engine:
    import onnxruntime

    metadata = json.loads((run_dir / f"{ONNX_FILE}.json").read_text())
    session = onnxruntime.InferenceSession(str(run_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    config = GraftConfig.from_yaml(run_dir / "config.yaml")
    data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in metadata["data_config"].items()}
    return Engine("onnx", metadata["labels"], config, data_config,
                  lambda batch: session.run(None, {"images": batch})[0], metadata["temperature"])


def _torch_engine(model: Classifier | Ensemble) -> Engine:
    if isinstance(model, Ensemble):
        total = sum(model.weights)
        members = []
        for weight, member in zip(model.weights, model.members, strict=True):
            member.config = member.config.updated({"predict.tta": model.config.predict.tta})
            members.append((weight / total, _torch_engine(member)))
        return Engine("torch", model.labels, model.config, {}, None, members=members)
    return Engine("torch", model.labels, model.config, model.backbone.data_config,
                  lambda batch: _torch_logits(model, batch), model.temperature)


def _torch_logits(model: Classifier, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.head(model.backbone(torch.from_numpy(batch))).float().numpy()


def identify_files(engine: Engine, paths: Sequence[str | Path], views: Sequence[str] | None = None,
                   fusion: str | None = None, top: int | None = None) -> Identification:
    """``engine.identify`` for image files: unreadable ones are skipped and reported, as on the cached path."""
    images, kept, failures = [], [], {}
    for path, view in zip(paths, views or [""] * len(paths), strict=True):
        try:
            images.append(load_rgb(path))
            kept.append((str(path), view))
        except ImageError as error:
            failures[str(path)] = str(error)
    if not images:
        return Identification([], {}, fusion or engine.config.predict.fusion, failures)
    answer = engine.identify(images, [view for _, view in kept], fusion, top)
    ranking = [(r["label"], r["probability"]) for r in answer["ranking"]]
    per_image = {path: [(r["label"], r["probability"]) for r in rows]
                 for (path, _), rows in zip(kept, answer["per_image"], strict=True)}
    return Identification(ranking, per_image, answer["fusion"], failures, answer["unknown"])
