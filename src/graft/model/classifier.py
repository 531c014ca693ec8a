"""A trained model: backbone + head + labels (+ a temperature), with the config it was trained under.

It satisfies :class:`~graft.model.identification.Model` twice over: files go through the feature cache
(:meth:`image_probabilities`), decoded uploads through the same preprocessing path in memory (:meth:`probabilities`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from graft.config import GraftConfig
from graft.data.manifest import Manifest
from graft.data.taxonomy import Taxonomy
from graft.device import CPU, Device
from graft.features.backbones import Backbone, ConcatBackbone, members_of
from graft.features.engines import FeatureEngine, feature_engine
from graft.features.extract import FeatureSet, extract_features, forward_in_batches
from graft.features.preparation import Preparation, decode_side, decode_upload, view_names
from graft.model.fusion import mean_over_views, softmax
from graft.model.head import predict_logits
from graft.model.identification import Identification, identify
from graft.progress import progress_bar

THROUGHPUT_SAMPLE = 64


@dataclass
class Classifier:
    backbone: Backbone | ConcatBackbone
    head: nn.Module
    labels: list[str]
    config: GraftConfig
    temperature: float = 1.0  # fitted on held-out logits; 1.0 = uncalibrated
    taxonomy: Taxonomy = field(default_factory=Taxonomy)
    device: Device = CPU  # where the backbone runs (the head is small: it stays on the host)
    engine = "torch"

    def _tta(self, tta: Sequence[str] | None) -> tuple[str, ...]:
        return tuple(self.config.predict.tta if tta is None else tta)

    def features(self, paths: Sequence[Path], views: Sequence[str] | None = None, progress: bool = False,
                 tta: Sequence[str] | None = None, rows_to: Path | None = None) -> FeatureSet:
        """Features of ``paths``; with test-time augmentations (``tta``, default: the config's) shaped ``[n, 1 + k, D]``;
        into the row file ``rows_to`` instead of memory when given (no test-time augmentations then)."""
        with progress_bar("Extracting features", progress) as report:
            return extract_features(paths, self.backbone, self.config.features, views=views,
                                    view_config=self.config.views, tta=() if rows_to else self._tta(tta),
                                    progress=report, rows_to=rows_to, device=self.device)

    def manifest_features(self, manifest: Manifest, progress: bool = False,
                          tta: Sequence[str] | None = None, rows_to: Path | None = None) -> FeatureSet:
        return self.features([r.path for r in manifest], [r.view for r in manifest], progress, tta, rows_to)

    def image_probabilities(self, part: Manifest, tta: Sequence[str] | None = None,
                            progress: bool = False) -> tuple[Manifest, np.ndarray, dict]:
        feature_set = self.manifest_features(part, progress, tta)
        kept = part.without(feature_set.failures)
        return kept, self.predict_proba(feature_set.rows_for([r.path for r in kept])), feature_set.failures

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities per image; test-time augmentations (``[n, k, D]``) are averaged after the softmax."""
        if features.ndim == 3:
            n, k, dim = features.shape
            return mean_over_views(predict_logits(self.head, features.reshape(n * k, dim)), n, self.temperature)
        return softmax(predict_logits(self.head, features) / self.temperature)

    @cached_property
    def preparations(self) -> list[tuple[FeatureEngine, Preparation]]:
        """Each backbone's engine with its own preparation (a concatenation's members differ in resolution)."""
        settings = self.config.features
        return [(feature_engine(member, settings.engine, settings.cache_dir, self.device),
                 Preparation(member.transform(), member.data_config, self.config.views,
                             decode_side(member.data_config, settings.decode)))
                for member in members_of(self.backbone)]

    def probabilities(self, images: Sequence[Image.Image], views: Sequence[str],
                      tta: Sequence[str] | None = None) -> np.ndarray:
        names = view_names(self._tta(tta))
        size = self.device.extraction_batch(self.config.features.batch_size)
        with torch.inference_mode():
            features = np.concatenate([
                forward_in_batches(engine, preparation.batch(images, views, names), size)
                for engine, preparation in self.preparations], axis=1)
        return mean_over_views(predict_logits(self.head, features), len(images), self.temperature)

    def decode(self, data: bytes, name: str, view: str, max_pixels: int) -> Image.Image:
        return decode_upload(data, name, view, [preparation for _, preparation in self.preparations], max_pixels)

    def measure_throughput(self, part: Manifest, tta: Sequence[str] | None = None) -> float:
        """Images/s of the whole uncached path (read, decode, per-view preprocessing, resize, backbone, head).

        What is timed is serving's steady state: the engines (an ONNX export the first time a size is used) are made
        before the clock starts, in the run's cache; only the features are read through an empty one."""
        sample = part.records[:THROUGHPUT_SAMPLE]
        if not sample:
            return float("nan")
        self.preparations  # noqa: B018 - makes the engines (and their process-wide sessions) untimed
        with tempfile.TemporaryDirectory() as empty_cache:
            start = time.perf_counter()
            feature_set = extract_features(
                [r.path for r in sample], self.backbone, self.config.features.model_copy(update={"cache_dir": empty_cache}),
                views=[r.view for r in sample], view_config=self.config.views, tta=self._tta(tta), device=self.device)
            self.predict_proba(feature_set.features)
            return round(len(sample) / (time.perf_counter() - start), 2)

    def identify(self, paths: Sequence[str | Path], views: Sequence[str] | None = None, fusion: str | None = None,
                 top: int | None = None, **options) -> Identification:
        """Rank the labels for one observation photographed in ``paths`` (``views``: Flower, Leaf, ... per photo)."""
        return identify(self, paths, views, fusion=fusion, top=top, **options)
