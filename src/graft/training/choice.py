"""How cross-fitting chooses a head from out-of-fold predictions when they can barely tell candidates apart.

On few-shot data seen through new photographers' photos, every candidate's out-of-fold S is low and close to the
others'; the best of them is often best by noise. Two rules keep the choice honest:
  scorable rows  a row whose class has no example in its fold's training part cannot be predicted by any head (its
                 class gets the ABSENT logit); such rows add the same near-zero to every candidate and only dilute
                 the differences, so they are left out of the choice (and counted in the run's results)
  robust choice  candidates within ``head.within_se`` standard errors of the best - the spread of their per-fold S
                 differences from the best, paired fold by fold - are level with it, and among them the most robust
                 family (``head.robustness``) is taken, its best setting. Measured on leafsnap-dev with one
                 photographer per species held out as Test (docs/decisions.md): the MLP bag - the R x K fold heads
                 averaged - was the family at or above logistic regression in every seed and size, the linear head at
                 its level, the prototype head below it; ensembles are what holds up under dataset shift.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from graft.data.manifest import ImageRecord
from graft.evaluation.metrics import score_logits
from graft.training.streaming import Rows, take_rows


def scorable_rows(folds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rows whose class has a training example in its fold's complement in every repeat (``folds``: ``[R, n]``)."""
    keep = np.ones(len(labels), bool)
    for fold in np.atleast_2d(folds):
        for k in np.unique(fold):
            held = fold == k
            keep &= ~held | np.isin(labels, np.unique(labels[~held]))
    return keep


def out_of_fold_scorer(records: Sequence[ImageRecord], label_names: list[str], fusion: str, folds: np.ndarray,
                       keep: np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                       ) -> Callable[[Rows], dict[str, Any]]:
    """``score(logits)``: S, top-k on the scorable rows ``keep``, and ``fold_S``, S per fold of the first repeat (what
    the noise between candidates is measured on); ``transform``: the shipped head's last step (its genus prior)."""
    fold = np.atleast_2d(folds)[0]
    parts = [(np.flatnonzero(keep), "all")] + [(np.flatnonzero(keep & (fold == k)), k) for k in np.unique(fold)]
    subsets = [(index, [records[i] for i in index]) for index, _ in parts]

    def score(logits: Rows) -> dict[str, Any]:
        whole = len(subsets[0][0]) == len(records)
        results = score_logits(logits if whole else take_rows(logits, subsets[0][0]), subsets[0][1], label_names,
                               fusion, transform=transform)
        results["fold_S"] = [round(score_logits(take_rows(logits, index), kept, label_names, fusion,
                                                transform=transform)["S"], 6)
                             for index, kept in subsets[1:] if len(index)]
        return results

    return score


def standard_error(best: Sequence[float], other: Sequence[float]) -> float:
    """The standard error of the mean per-fold difference between two candidates (0 with fewer than two folds)."""
    difference = np.asarray(best) - np.asarray(other)
    return float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else 0.0


def robust_choice(rows: Sequence[dict[str, Any]], within_se: float, robustness: Sequence[str]) -> dict[str, Any]:
    """The row to ship among ``rows`` (those that kept their logits): the best S, unless candidates within ``within_se``
    standard errors of it include a family earlier in ``robustness`` - then that family's best row."""
    best = max(rows, key=lambda row: row["S"])
    level = [row for row in rows
             if best["S"] - row["S"] <= within_se * standard_error(best["fold_S"], row["fold_S"])]
    for family in robustness:
        members = [row for row in level if row["kind"] == family]
        if members:
            return max(members, key=lambda row: row["S"])
    return best
