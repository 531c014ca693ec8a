"""Ensembles: the per-image probabilities of several models (other backbones, other seeds) averaged with weights.

An ensemble satisfies :class:`~graft.model.identification.Model` like a single run; per-call test-time augmentations are
passed down to its members, never written into them. Building and weighting one is :mod:`graft.training.ensembling`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from graft.config import GraftConfig
from graft.data.manifest import Manifest
from graft.data.taxonomy import Taxonomy
from graft.features.preparation import decode_upload
from graft.model.classifier import Classifier
from graft.model.identification import Identification, identify


def weighted_average(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum(w_i * a_i) / sum(w_i): the one place members' probabilities are combined."""
    return sum(w * a for w, a in zip(weights, arrays, strict=True)) / float(sum(weights))


def combine(part: Manifest, answers: Sequence[tuple[Manifest, np.ndarray, dict]],
            weights: Sequence[float], n_classes: int) -> tuple[Manifest, np.ndarray, dict]:
    """Members' ``image_probabilities`` answers on ``part`` -> the ensemble's: the images every member could read,
    their probabilities averaged with ``weights``."""
    failures: dict = {}
    per_member = []
    for kept, probabilities, failed in answers:
        failures |= failed
        per_member.append(dict(zip((r.path for r in kept), probabilities, strict=True)))
    kept = part.without(failures)
    if not kept.records:
        return kept, np.zeros((0, n_classes)), failures
    return kept, weighted_average([np.stack([rows[r.path] for r in kept]) for rows in per_member], weights), failures


@dataclass
class Ensemble:
    members: list[Classifier]
    weights: list[float]
    config: GraftConfig  # prediction defaults of the ensemble (fusion, test-time augmentations, reject threshold)
    engine = "torch"

    @property
    def labels(self) -> list[str]:
        return self.members[0].labels

    @property
    def taxonomy(self) -> Taxonomy:
        return self.members[0].taxonomy

    def _tta(self, tta: Sequence[str] | None) -> tuple[str, ...]:
        return tuple(self.config.predict.tta if tta is None else tta)

    def image_probabilities(self, part: Manifest, tta: Sequence[str] | None = None,
                            progress: bool = False) -> tuple[Manifest, np.ndarray, dict]:
        answers = [member.image_probabilities(part, self._tta(tta), progress) for member in self.members]
        return combine(part, answers, self.weights, len(self.labels))

    def probabilities(self, images: Sequence[Image.Image], views: Sequence[str],
                      tta: Sequence[str] | None = None) -> np.ndarray:
        """Each member prepares the images for its own backbone (e.g. Lite0 at 224 px, Lite2 at 260 px)."""
        return weighted_average([m.probabilities(images, views, self._tta(tta)) for m in self.members], self.weights)

    def decode(self, data: bytes, name: str, view: str, max_pixels: int) -> Image.Image:
        preparations = [preparation for member in self.members for _, preparation in member.preparations]
        return decode_upload(data, name, view, preparations, max_pixels)

    def measure_throughput(self, part: Manifest, tta: Sequence[str] | None = None) -> float:
        """Every member runs on every image: the ensemble's rate is the harmonic combination of theirs."""
        return round(1.0 / sum(1.0 / m.measure_throughput(part, self._tta(tta)) for m in self.members), 2)

    def identify(self, paths: Sequence[str | Path], views: Sequence[str] | None = None, fusion: str | None = None,
                 top: int | None = None, **options) -> Identification:
        return identify(self, paths, views, fusion=fusion, top=top, **options)
