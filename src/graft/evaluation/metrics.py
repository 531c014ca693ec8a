"""LifeCLEF's primary score S and top-k accuracy, computed from the rank of the true label, per observation.

S = (1/U) * sum_u (1/P_u) * sum_p 1/rank(u, p): every user counts equally, however many plants they observed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graft.data.manifest import ImageRecord
from graft.model.calibration import coverage_rows
from graft.model.fusion import FUSION_RULES, fuse_observations, softmax
from graft.rows import BLOCK_ROWS, RowFile

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


@dataclass
class Outcomes:
    """What the scores need from each observation - its rank, user, fused top score and whether that was right - so
    a large set can be scored a chunk of whole observations at a time and the chunks' outcomes joined."""

    ranks: np.ndarray  # 1-based rank of the true label; inf for a label the model never saw
    users: list[str]
    top: np.ndarray  # fused top score
    correct: np.ndarray  # fused top-1 is the true label
    image_correct: int = 0  # images whose own top-1 is right
    images: int = 0

    @staticmethod
    def join(parts: Sequence[Outcomes]) -> Outcomes:
        return Outcomes(np.concatenate([p.ranks for p in parts]), [u for p in parts for u in p.users],
                        np.concatenate([p.top for p in parts]), np.concatenate([p.correct for p in parts]),
                        sum(p.image_correct for p in parts), sum(p.images for p in parts))


def observation_outcomes(probabilities: np.ndarray, truth: np.ndarray, observations: Sequence[str],
                         users: Sequence[str], fusion: str) -> Outcomes:
    """Per-observation outcomes of per-image probabilities; an observation's truth and user are its first image's."""
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
    empty = not len(observed_truth)
    return Outcomes(ranks, [users[first[o]] for o in fused.observations],
                    np.zeros(0) if empty else fused.scores.max(axis=1),
                    np.zeros(0, bool) if empty else fused.scores.argmax(axis=1) == observed_truth,
                    int((probabilities.argmax(1) == truth).sum()) if len(truth) else 0, len(truth))


def summarise(outcomes: Outcomes, fusion: str) -> dict[str, Any]:
    """S, top-k, the coverage table and counts from per-observation outcomes."""
    ranks = outcomes.ranks
    return {
        "coverage": coverage_rows(outcomes.top, outcomes.correct, REJECT_THRESHOLDS) if len(ranks) else [],
        "S": lifeclef_score(ranks, outcomes.users),
        "top1": top_k(ranks, 1), "top3": top_k(ranks, 3), "top5": top_k(ranks, 5),
        "image_top1": outcomes.image_correct / outcomes.images if outcomes.images else float("nan"),
        "n_observations": len(ranks),
        "n_images": outcomes.images,
        "n_users": len(set(outcomes.users)),
        "fusion": fusion,
    }


def observation_scores(probabilities: np.ndarray, truth: np.ndarray, observations: Sequence[str],
                       users: Sequence[str], fusion: str) -> dict[str, Any]:
    """S and top-k per observation, top-1 per image, from per-image probabilities and true label indices.

    An observation's truth and user are its first image's; a label index of ``UNKNOWN`` counts as a miss.
    """
    return summarise(observation_outcomes(probabilities, truth, observations, users, fusion), fusion)


def label_indices(records: Sequence[ImageRecord], labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index.get(r.label, UNKNOWN) for r in records], dtype=np.int64)


def score_probabilities(probabilities: np.ndarray, records: Sequence[ImageRecord], labels: Sequence[str],
                        fusion: str) -> dict[str, Any]:
    """:func:`observation_scores` for manifest records."""
    return observation_scores(probabilities, label_indices(records, labels), [r.observation for r in records],
                              [r.user for r in records], fusion)


def score_logits(logits: np.ndarray | RowFile, records: Sequence[ImageRecord], labels: Sequence[str],
                 fusion: str, rows_per_chunk: int = BLOCK_ROWS,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """:func:`score_probabilities` of ``softmax(transform(logits))`` (``transform``: what a head's last step does to
    its logits, e.g. the genus prior). Logits in a row file (out-of-fold logits of a large training part: images x
    classes floats) are read a chunk of whole observations at a time; the scores are the same as in memory, since
    every score is a function of per-observation outcomes."""
    transform = transform or (lambda block: block)
    if not isinstance(logits, RowFile):
        return score_probabilities(softmax(transform(logits)), records, labels, fusion)
    truth = label_indices(records, labels)
    groups: dict[str, list[int]] = {}
    for row, record in enumerate(records):
        groups.setdefault(record.observation, []).append(row)
    parts, chunk = [], []
    for rows in [*groups.values(), None]:
        if chunk and (rows is None or len(chunk) + len(rows) > rows_per_chunk):
            index = np.array(chunk)
            parts.append(observation_outcomes(softmax(transform(logits.take(index))), truth[index],
                                              [records[i].observation for i in chunk],
                                              [records[i].user for i in chunk], fusion))
            chunk = []
        chunk += rows or []
    return summarise(Outcomes.join(parts) if parts else Outcomes(np.zeros(0), [], np.zeros(0), np.zeros(0, bool)),
                     fusion)


def fusion_rule_rows(logits: np.ndarray | RowFile, records: Sequence[ImageRecord], labels: Sequence[str]) -> dict:
    """The same predictions (logits) scored under every fusion rule, so a user can pick the rule on held-out data."""
    keys = ("S", "top1", "top3", "top5")
    return {rule: {k: score_logits(logits, records, labels, rule)[k] for k in keys} for rule in FUSION_RULES}


def photographer_regimes(probabilities: np.ndarray, records: Sequence[ImageRecord], labels: Sequence[str],
                         fusion: str, seen: set[tuple[str, str]]) -> dict[str, Any]:
    """S on the photos whose photographer the training part already had for that label (``known``: their other
    plant taught the model their camera, background and framing) and on the others (``new``: what a flora app meets),
    from images with a user; ``{}`` when none has one. ``seen``: the training part's (label, user) pairs."""
    with_user = [i for i, r in enumerate(records) if r.user]
    if not with_user:
        return {}
    regimes = {}
    for name, wanted in (("new", False), ("known", True)):
        rows = [i for i in with_user if ((records[i].label, records[i].user) in seen) == wanted]
        if rows:
            found = score_probabilities(probabilities[rows], [records[i] for i in rows], labels, fusion)
            regimes[name] = {key: found[key] for key in ("S", "top1", "top5", "n_observations", "n_users")}
    return {"photographers": regimes}


def seen_photographers(records: Sequence[ImageRecord]) -> set[tuple[str, str]]:
    """The (label, user) pairs of ``records`` (a training part): whose photos of what a model has learnt from."""
    return {(r.label, r.user) for r in records if r.user}
