"""LifeCLEF's primary score S and top-k accuracy, computed from the rank of the true label, per observation.

S = (1/U) * sum_u (1/P_u) * sum_p 1/rank(u, p): every user counts equally, however many plants they observed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from graft.data.manifest import ImageRecord
from graft.model.calibration import coverage_table
from graft.model.fusion import FUSION_RULES, fuse_observations

REJECT_THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
UNKNOWN = -1  # index of a label the model never saw: it can never be ranked (1/rank = 0)


def true_label_ranks(scores: np.ndarray, true_labels: Sequence[int]) -> np.ndarray:
    """1-based rank of the true label in each row of ``scores`` (ties resolved in the true label's favour)."""
    scores = np.asarray(scores)
    truth = scores[np.arange(len(scores)), np.asarray(true_labels, dtype=int)]
    return 1 + (scores > truth[:, None]).sum(axis=1)


def lifeclef_score(ranks: Sequence[int], users: Sequence[str]) -> float:
    """Mean over users of the mean over their observations of 1/rank."""
    per_user: dict[str, list[float]] = defaultdict(list)
    for rank, user in zip(ranks, users, strict=True):
        per_user[user].append(1.0 / rank)
    if not per_user:
        return float("nan")
    return float(np.mean([np.mean(values) for values in per_user.values()]))


def top_k(ranks: Sequence[int], k: int) -> float:
    ranks = np.asarray(ranks)
    return float((ranks <= k).mean()) if len(ranks) else float("nan")


def observation_scores(probabilities: np.ndarray, truth: np.ndarray, observations: Sequence[str],
                       users: Sequence[str], fusion: str) -> dict[str, Any]:
    """S and top-k per observation, top-1 per image, from per-image probabilities and true label indices.

    An observation's truth and user are its first image's; a label index of ``UNKNOWN`` counts as a miss.
    """
    truth = np.asarray(truth, dtype=np.int64)
    fused = fuse_observations(probabilities, observations, fusion)
    first: dict[str, int] = {}
    for row, observation in enumerate(observations):
        first.setdefault(observation, row)
    observed_truth = np.array([truth[first[o]] for o in fused.observations], dtype=np.int64)
    ranks = np.full(len(observed_truth), np.inf)
    known = observed_truth != UNKNOWN
    if known.any():
        ranks[known] = true_label_ranks(fused.scores[known], observed_truth[known])
    observed_users = [users[first[o]] for o in fused.observations]
    return {
        "coverage": coverage_table(fused.scores, observed_truth, REJECT_THRESHOLDS) if len(observed_truth) else [],
        "S": lifeclef_score(ranks, observed_users),
        "top1": top_k(ranks, 1), "top3": top_k(ranks, 3), "top5": top_k(ranks, 5),
        "image_top1": float((probabilities.argmax(1) == truth).mean()) if len(truth) else float("nan"),
        "n_observations": len(fused.observations),
        "n_images": len(truth),
        "n_users": len(set(observed_users)),
        "fusion": fusion,
    }


def label_indices(records: Sequence[ImageRecord], labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index.get(r.label, UNKNOWN) for r in records], dtype=np.int64)


def score_probabilities(probabilities: np.ndarray, records: Sequence[ImageRecord], labels: Sequence[str],
                        fusion: str) -> dict[str, Any]:
    """:func:`observation_scores` for manifest records."""
    return observation_scores(probabilities, label_indices(records, labels), [r.observation for r in records],
                              [r.user for r in records], fusion)


def fusion_rule_rows(probabilities: np.ndarray, records: Sequence[ImageRecord], labels: Sequence[str]) -> dict:
    """The same predictions scored under every fusion rule, so a user can pick the rule on held-out data."""
    keys = ("S", "top1", "top3", "top5")
    return {rule: {k: score_probabilities(probabilities, records, labels, rule)[k] for k in keys}
            for rule in FUSION_RULES}
