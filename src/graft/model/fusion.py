"""From per-image class probabilities to one ranked answer per observation.

Fusion rules combine the images of one observation:
  mean       average of probabilities (the default; robust)
  max        per class, the most confident image
  geometric  normalised geometric mean (a product of experts: one confident "no" vetoes a class)
  borda      Borda count over each image's ranking, normalised to sum to 1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FUSION_RULES = ("mean", "max", "geometric", "borda")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def fuse(probabilities: np.ndarray, rule: str = "mean") -> np.ndarray:
    """Fuse the rows (images of one observation) into one score vector that sums to 1."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if rule == "mean":
        fused = probabilities.mean(axis=0)
    elif rule == "max":
        fused = probabilities.max(axis=0)
    elif rule == "geometric":
        fused = np.exp(np.log(np.clip(probabilities, 1e-12, 1.0)).mean(axis=0))
    elif rule == "borda":
        points = probabilities.argsort(axis=1).argsort(axis=1)  # 0 for the last-ranked class, C-1 for the first
        fused = points.sum(axis=0).astype(np.float64)
    else:
        raise ValueError(f"unknown fusion rule {rule!r}; expected one of {FUSION_RULES}")
    total = fused.sum()
    return fused / total if total > 0 else np.full_like(fused, 1.0 / len(fused))


@dataclass
class ObservationScores:
    observations: list[str]
    scores: np.ndarray  # [n_observations, n_classes], each row sums to 1


def fuse_observations(probabilities: np.ndarray, observations: Sequence[str], rule: str = "mean") -> ObservationScores:
    """Group image rows by observation id (first-seen order) and fuse each group."""
    groups: dict[str, list[int]] = {}
    for row, observation in enumerate(observations):
        groups.setdefault(observation, []).append(row)
    scores = np.stack([fuse(probabilities[rows], rule) for rows in groups.values()]) if groups else np.zeros((0, 0))
    return ObservationScores(list(groups), scores)


def ranked(scores: np.ndarray, labels: Sequence[str], top_k: int | None = None) -> list[tuple[str, float]]:
    """Labels sorted by score, best first, with their scores."""
    order = np.argsort(-scores, kind="stable")[: top_k or len(labels)]
    return [(labels[i], float(scores[i])) for i in order]
