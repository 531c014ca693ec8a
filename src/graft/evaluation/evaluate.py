"""Scoring a model on data: ``graft evaluate``, and the scoring of a fitted head that ``fit`` and ``finetune`` use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graft.data.manifest import ImageRecord, load_manifest
from graft.errors import DataError
from graft.evaluation.metrics import photographer_regimes, score_probabilities, seen_photographers
from graft.model.classifier import Classifier
from graft.model.identification import Model
from graft.run import evaluation_part, load_model, read_manifest


def score(classifier: Classifier, records: Sequence[ImageRecord], features: np.ndarray,
          fusion: str | None = None) -> dict[str, Any]:
    """S and top-k per observation, top-1 per image, for ``features`` of ``records``."""
    probabilities = classifier.predict_proba(features)
    return score_probabilities(probabilities, records, classifier.labels, fusion or classifier.config.predict.fusion)


def ms_per_observation(results: dict[str, Any]) -> float:
    """Milliseconds to answer one observation at the measured images/s (an observation has several images)."""
    images_per_observation = results["n_images"] / max(1, results["n_observations"])
    return round(1000 * images_per_observation / results["images_per_second"], 1)


def evaluate_model(model: Model, part, tta: Sequence[str] | None = None, fusion: str | None = None,
                   progress: bool = False) -> tuple[dict[str, Any], Any, np.ndarray]:
    """(results with speed, the readable records, their probabilities) of ``model`` on the manifest ``part``."""
    fusion = fusion or model.config.predict.fusion
    kept, probabilities, failures = model.image_probabilities(part, tta, progress)
    results = score_probabilities(probabilities, kept.records, model.labels, fusion)
    results["images_per_second"] = model.measure_throughput(kept, tta)
    results["ms_per_observation"] = ms_per_observation(results)
    results["skipped_images"] = len(failures)
    return results, kept, probabilities


def evaluate(run_dir: str | Path, data: str | Path, progress: bool = False, tta: Sequence[str] | None = None,
             fusion: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Score a run (or ensemble) on a dataset: its test part when it names one, otherwise every image.

    ``tta`` (test-time augmentations) and ``fusion`` override the run's settings for this evaluation only; ``device``: where
    the model computes (:func:`~graft.device.resolve_device`).
    """
    model = load_model(run_dir, device)
    trained = read_manifest(run_dir)
    seen = seen_photographers(trained.without([r.path for r in evaluation_part(trained)]).records)
    config = model.config
    manifest = load_manifest(data, config.data.format, config.data.columns).with_default_view(config.data.default_view)
    part = manifest.where("test") if manifest.where("test").records else manifest
    known = set(model.labels)
    unknown = sum(record.label not in known for record in part.records)
    if part.records and unknown == len(part.records):
        raise DataError(f"{data}: none of its {len(part.records)} images has a label the run knows (e.g. "
                        f"{part.records[0].label!r}; the run's: {', '.join(model.labels[:3])}...); evaluate on data "
                        "labelled like the run's training data")
    results, kept, probabilities = evaluate_model(model, part, tta, fusion, progress)
    results["images_of_unknown_labels"] = unknown  # scored as misses: the model cannot name them
    results |= photographer_regimes(probabilities, kept.records, model.labels, fusion or config.predict.fusion, seen)
    results |= {
        "evaluated_on": "test" if kept.records and kept.records[0].split == "test" else "all",
        "tta": list(config.predict.tta if tta is None else tta),
        "data": str(data),
    }
    return results
