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


def mean_over_views(logits: np.ndarray, n_images: int, temperature: float) -> np.ndarray:
    """``[n * k, C]`` logits of k views per image -> ``[n, C]`` probabilities, averaged after the softmax."""
    return softmax(logits / temperature).reshape(n_images, -1, logits.shape[1]).mean(axis=1)


def fuse(probabilities: np.ndarray, rule: str = "mean") -> np.ndarray:
    """Fuse the rows (images of one observation) into one score vector that sums to 1."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not len(probabilities):
        return np.full(probabilities.shape[1], 1.0 / probabilities.shape[1])
    return fuse_runs(probabilities, np.zeros(1, np.int64), rule)[0]


def fuse_runs(probabilities: np.ndarray, starts: np.ndarray, rule: str) -> np.ndarray:
    """Each run of consecutive rows (``starts``: the first row of each, ascending, from 0) fused into one row that
    sums to 1 - all runs at once (one ``reduceat`` per rule): scoring a candidate fuses every observation of the
    training part, 25 times or more per ``graft fit``, and a Python loop over them took 7 ms for ELPV's 2,100
    (0.7 ms now)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    counts = np.diff(np.append(starts, len(probabilities)))[:, None]
    if rule == "mean":
        fused = np.add.reduceat(probabilities, starts) / counts
    elif rule == "max":
        fused = np.maximum.reduceat(probabilities, starts)
    elif rule == "geometric":
        fused = np.exp(np.add.reduceat(np.log(np.clip(probabilities, 1e-12, 1.0)), starts) / counts)
    elif rule == "borda":
        points = probabilities.argsort(axis=1).argsort(axis=1)  # 0 for the last-ranked class, C-1 for the first
        fused = np.add.reduceat(points, starts).astype(np.float64)
    else:
        raise ValueError(f"unknown fusion rule {rule!r}; expected one of {FUSION_RULES}")
    total = fused.sum(axis=1, keepdims=True)
    return np.where(total > 0, fused / np.where(total > 0, total, 1.0), 1.0 / fused.shape[1])


@dataclass
class ObservationScores:
    observations: list[str]
    scores: np.ndarray  # [n_observations, n_classes], each row sums to 1


def fuse_observations(probabilities: np.ndarray, observations: Sequence[str], rule: str = "mean") -> ObservationScores:
    """Group image rows by observation id (first-seen order) and fuse each group."""
    if not len(observations):
        return ObservationScores([], np.zeros((0, 0)))
    _, first, group = np.unique(np.asarray(observations), return_index=True, return_inverse=True)
    group = np.argsort(np.argsort(first))[group.ravel()]  # groups numbered in first-seen order
    order = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(group))[:-1]])
    return ObservationScores([observations[i] for i in np.sort(first)],
                             fuse_runs(np.asarray(probabilities)[order], starts, rule))


def ranked(scores: np.ndarray, labels: Sequence[str], top_k: int | None = None) -> list[tuple[str, float]]:
    """Labels sorted by score, best first, with their scores."""
    order = np.argsort(-scores, kind="stable")[: top_k or len(labels)]
    return [(labels[i], float(scores[i])) for i in order]
