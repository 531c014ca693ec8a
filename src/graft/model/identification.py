"""One observation -> one :class:`Identification`: the shape of an answer everywhere (Python, CLI ``--json``, HTTP).

:class:`Model` is what ``evaluate``, ``identify`` and serving need of a model; a run (:class:`Classifier`), an
:class:`Ensemble` and the ONNX engine all satisfy it. Per-call options (test-time augmentations, fusion rule, top-k, reject
threshold) are arguments; ``None`` means the model's configured default. Nothing here writes into a config.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from graft.config import GraftConfig
from graft.data.manifest import ImageRecord, Manifest
from graft.data.taxonomy import Taxonomy
from graft.model.fusion import fuse, ranked

PER_IMAGE_TOP = 3


@runtime_checkable
class Model(Protocol):
    labels: list[str]
    config: GraftConfig  # read for defaults (fusion, top-k, test-time augmentations, reject threshold), never written
    engine: str  # "torch" or "onnx"
    taxonomy: Taxonomy  # genus, family... per label: answers rank genera and families too

    def image_probabilities(self, part: Manifest, tta: Sequence[str] | None = None,
                            progress: bool = False) -> tuple[Manifest, np.ndarray, dict]:
        """(the readable records of ``part``, their class probabilities, {path: why skipped})."""

    def probabilities(self, images: Sequence[Image.Image], views: Sequence[str],
                      tta: Sequence[str] | None = None) -> np.ndarray:
        """Class probabilities of decoded images (uploads: nothing cached), all in one batched forward."""

    def decode(self, data: bytes, name: str, view: str, max_pixels: int) -> Image.Image:
        """An upload decoded as extraction decodes files (reduced JPEG decoding); ImageError naming ``name``."""

    def measure_throughput(self, part: Manifest, tta: Sequence[str] | None = None) -> float:
        """Images/s of the whole uncached path on ``part``."""


class Ranked(NamedTuple):
    """A label and its probability; a tuple in Python, ``{"label", "probability"}`` in JSON."""

    label: str
    probability: float


@dataclass
class ImageAnswer:
    image: str
    view: str
    ranking: list[Ranked]


@dataclass
class Identification:
    """One observation's answer: the fused ranking, each image's own top-3, skipped files, 'unknown', and the genera
    and families ranked by their species' summed probability (empty when the taxonomy knows none)."""

    ranking: list[Ranked]
    per_image: list[ImageAnswer]
    fusion: str
    failures: dict[str, str] = field(default_factory=dict)
    unknown: bool = False  # the fused top probability is below the reject threshold
    engine: str = ""
    milliseconds: float | None = None
    genus: list[Ranked] = field(default_factory=list)
    family: list[Ranked] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def listed(ranking: list[Ranked]) -> list[dict[str, Any]]:
            return [{"label": r.label, "probability": r.probability} for r in ranking]

        return {"ranking": listed(self.ranking), "unknown": self.unknown, "fusion": self.fusion,
                "per_image": [{"image": a.image, "view": a.view, "ranking": listed(a.ranking)} for a in self.per_image],
                "failures": dict(self.failures), "engine": self.engine, "milliseconds": self.milliseconds,
                "genus": listed(self.genus), "family": listed(self.family)}


def identify(model: Model, paths: Sequence[str | Path], views: Sequence[str] | None = None, *,
             fusion: str | None = None, top: int | None = None, tta: Sequence[str] | None = None,
             reject_threshold: float | None = None) -> Identification:
    """Rank the labels for one observation photographed in the files ``paths``; unreadable files are skipped."""
    start = time.perf_counter()
    views = list(views) if views else [model.config.data.default_view or ""] * len(paths)
    records = [ImageRecord(Path(p), "", "observation", view=v) for p, v in zip(paths, views, strict=True)]
    kept, probabilities, failures = model.image_probabilities(Manifest(records), tta)
    names = [str(r.path) for r in kept]
    return _answer(model, probabilities, names, [r.view for r in kept], {str(p): why for p, why in failures.items()},
                   fusion, top, reject_threshold, start)


def identify_images(model: Model, images: Sequence[Image.Image], names: Sequence[str], views: Sequence[str], *,
                    fusion: str | None = None, top: int | None = None, tta: Sequence[str] | None = None,
                    reject_threshold: float | None = None) -> Identification:
    """The same for photos already decoded (uploads)."""
    start = time.perf_counter()
    probabilities = model.probabilities(images, views, tta)
    return _answer(model, probabilities, list(names), list(views), {}, fusion, top, reject_threshold, start)


def _answer(model: Model, probabilities: np.ndarray, names: list[str], views: list[str], failures: dict[str, str],
            fusion: str | None, top: int | None, reject_threshold: float | None, start: float) -> Identification:
    settings = model.config.predict
    fusion = fusion or settings.fusion
    threshold = settings.reject_threshold if reject_threshold is None else reject_threshold
    if not names:
        return Identification([], [], fusion, failures, engine=model.engine)
    fused = fuse(probabilities, fusion)
    top = top or settings.top_k
    per_image = [ImageAnswer(name, view, _ranked(row, model.labels, PER_IMAGE_TOP))
                 for name, view, row in zip(names, views, probabilities, strict=True)]
    genus, family = ([Ranked(name, p) for name, p in model.taxonomy.rank(fused, model.labels, level)[:top]]
                     for level in ("genus", "family"))
    return Identification(_ranked(fused, model.labels, top), per_image, fusion, failures,
                          threshold is not None and float(fused.max()) < threshold, model.engine,
                          round(1000 * (time.perf_counter() - start), 1), genus, family)


def _ranked(scores: np.ndarray, labels: Sequence[str], top: int) -> list[Ranked]:
    return [Ranked(label, probability) for label, probability in ranked(scores, labels, top)]
