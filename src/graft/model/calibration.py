"""Calibration: temperature scaling (Guo et al. 2017) fitted on held-out logits, expected calibration error, and
the coverage / accuracy trade-off of answering "unknown" below a confidence threshold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from graft.model.fusion import softmax
from graft.model.head import predict_logits

if TYPE_CHECKING:
    from graft.model.classifier import Classifier


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on held-out data (a single scalar: accuracy unchanged)."""
    if len(labels) == 0:
        return 1.0
    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp(), labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the share of samples per bin."""
    if len(labels) == 0:
        return float("nan")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def coverage_table(scores: np.ndarray, truth: np.ndarray, thresholds: Sequence[float]) -> list[dict[str, float]]:
    """For each threshold: the share of observations answered (top score >= threshold) and their top-1 accuracy."""
    return coverage_rows(scores.max(axis=1), scores.argmax(axis=1) == truth, thresholds)


def coverage_rows(top: np.ndarray, correct: np.ndarray, thresholds: Sequence[float]) -> list[dict[str, float]]:
    """:func:`coverage_table` from each observation's top score and whether its top-1 was right."""
    rows = []
    for threshold in thresholds:
        answered = top >= threshold
        rows.append({"threshold": float(threshold), "coverage": float(answered.mean()) if len(top) else float("nan"),
                     "accuracy": float(correct[answered].mean()) if answered.any() else float("nan")})
    return rows


def calibrate(classifier: Classifier, held_out: tuple[np.ndarray, np.ndarray], evaluation,
              source: str | None = None) -> dict[str, float]:
    """Fit the temperature on held-out logits (out-of-fold, or of a head that never saw the validation part; named by
    ``source``); report ECE and NLL on the evaluation split before and after. Sets ``classifier.temperature``."""
    logits, labels = held_out
    classifier.temperature = fit_temperature(logits, labels) if len(labels) else 1.0
    features, truth = evaluation
    known = truth >= 0
    evaluated = predict_logits(classifier.head, features[known])
    before, after = softmax(evaluated), softmax(evaluated / classifier.temperature)
    source = source or ("out-of-fold predictions" if classifier.config.head.selection == "crossfit" else
                        "the validation split")
    return {
        "calibration": f"temperature scaling fitted on {source}",
        "temperature": round(classifier.temperature, 4),
        "ece_before": expected_calibration_error(before, truth[known]),
        "ece_after": expected_calibration_error(after, truth[known]),
        "nll_before": negative_log_likelihood(before, truth[known]),
        "nll_after": negative_log_likelihood(after, truth[known]),
    }
