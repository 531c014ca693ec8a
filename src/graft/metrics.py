"""LifeCLEF's primary score S and top-k accuracy, computed from the rank of the true label.

S = (1/U) * sum_u (1/P_u) * sum_p 1/rank(u, p): every user counts equally, however many plants they observed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


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
