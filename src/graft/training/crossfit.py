"""Cross-fitting on cached features: the head is chosen by out-of-fold S, then trained on all the training part.

K folds over the part of the data a run does not evaluate on, grouped by observation (an observation's photos are
never split) and stratified by label. Every candidate (head family x setting) predicts each image from a head that
never saw its observation; the candidate with the best out-of-fold S - the task's metric, not a loss - is retrained on
everything, or (the MLP, ``head.bag``) its K fold heads become the final head, their probabilities averaged. Its
out-of-fold logits are what calibration, the reject table, fusion rules and ensemble weights are fitted on: unlike a
3:1 validation split on few-shot data, they cover every training image.

On few-shot data (``head.repeats``) the whole is repeated with other folds and heads: each image's out-of-fold
probability is then the mean of R heads that never saw it, and the bag holds R x K heads. There the fold heads
disagree most - on leafsnap-dev, 11 images per class, Test S moved by +-0.04 with the seed alone - and 3 repeats
raised its Test S by 0.017 with Lite0 features and by 0.020 with Lite0+Lite2 (10 seeds), for 3x a head that takes
seconds there.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.config import HeadConfig
from graft.data.manifest import ImageRecord
from graft.data.splits import group_of, has_users
from graft.device import CPU, Device
from graft.errors import ConfigError
from graft.model.head import HeadBag
from graft.rows import RowFile
from graft.tables import head_selection_table
from graft.training.choice import out_of_fold_scorer, robust_choice, scorable_rows
from graft.training.families import Candidate, candidates, fit_head_of, out_of_fold, with_augmented
from graft.training.head_training import training_precision
from graft.training.streaming import Rows, discard

REPEATS_AUTO = 3  # head.repeats: auto on few-shot data; see HeadConfig.repeats


def fold_of(records: Sequence[ImageRecord], k: int, seed: int, by: str = "observation") -> np.ndarray:
    """The fold (0..k-1) of each image: grouped by observation (``by="user"``: by photographer of the label, so every
    row is predicted by heads that never saw its photographer's photos of its species), stratified by label, seeded.

    K shrinks to what the data allows (no more folds than observations, nor than the largest label has images).
    Where every observation is one image (ELPV, folder data) there is nothing to group, and scikit-learn's
    ``StratifiedKFold`` does the same job as its ``StratifiedGroupKFold`` in 5 ms instead of 0.22 s (2,100 ELPV
    images: one greedy Python step per group).
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold

    observations = {o: i for i, o in enumerate(dict.fromkeys(group_of(r, by) for r in records))}
    groups = np.array([observations[group_of(r, by)] for r in records])
    labels = np.array([r.label for r in records])
    largest = max(np.unique(labels, return_counts=True)[1])
    k = max(2, min(k, len(observations), largest))
    if largest < k:
        splitter = GroupKFold(k)
    elif len(observations) == len(records):
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
    else:
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    fold = np.zeros(len(records), np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # labels with fewer observations than folds are spread as far as they go
        for index, (_, held) in enumerate(splitter.split(groups, labels, groups)):
            fold[held] = index
    return fold


def repeat_seed(seed: int, repeat: int) -> int:
    """The folds' seed of repeat ``repeat`` (the first is ``seed`` itself, so one repeat is plain cross-fitting)."""
    return seed if repeat == 0 else int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0] >> 1)


def repeats_for(config: HeadConfig, images_per_class: float, features: Rows) -> int:
    """How many times cross-fitting runs (:attr:`HeadConfig.repeats`): auto repeats it on few-shot data whose
    features are in memory (repeated out-of-fold probabilities are averaged there)."""
    on_disk = isinstance(features, RowFile)
    if config.repeats == "auto":
        return REPEATS_AUTO if images_per_class < config.repeat_below_images_per_class and not on_disk else 1
    if config.repeats > 1 and on_disk:
        raise ConfigError("head.repeats > 1 needs the training features in memory: raise head.memory_mb or set "
                          "head.repeats: 1")
    return config.repeats


@dataclass
class Selection:
    """What cross-fitting chose, and the evidence."""

    chosen: Candidate
    rows: list[dict[str, Any]]  # one per candidate: its out-of-fold scores and seconds
    logits: Rows  # [n, C] out-of-fold logits of the chosen candidate, rows as the training records
    fold: np.ndarray  # [R, n]: each image's fold in each repeat
    fold_heads: list[nn.Module]  # the chosen candidate's R x K fold heads (the MLP; empty for the other families)
    grouped_by: str = "observation"  # what the folds never cut in two (:func:`group_by`)
    unscorable: int = 0  # rows left out of the choice: their class had no example in their fold's training part

    @property
    def repeats(self) -> int:
        return len(self.fold)

    def table(self) -> str:
        return head_selection_table(self.rows)


def cross_fit(features: Rows, labels: np.ndarray, records: Sequence[ImageRecord], label_names: list[str],
              config: HeadConfig, weights: torch.Tensor | None, fusion: str, extra: np.ndarray | None = None,
              scratch: Path | None = None, device: Device = CPU,
              prior: Callable[[np.ndarray], np.ndarray] | None = None) -> Selection:
    """Score every candidate out of fold over :func:`repeats_for` repeats of the folds (grouped as
    :func:`group_by` says) and choose one by :func:`~graft.training.choice.robust_choice` on the rows its fold could
    predict. ``extra``: cached augmented copies ``[n, K, D]`` of the rows, trained on with them, never scored.
    ``scratch``: where out-of-fold logits of features on disk go (row files; the chosen one's outlives the call).
    ``device``: where every candidate's heads train; ``prior``: the step every shipped head ends with (its genus
    prior, :func:`~graft.model.numpy_head.genus_prior`), applied before a candidate is scored."""
    images_per_class = len(labels) / max(1, len(np.unique(labels)))
    by = group_by(config, records)
    fold = np.stack([fold_of(records, config.folds, repeat_seed(config.seed, r), by)
                     for r in range(repeats_for(config, images_per_class, features))])
    families: dict[str, list[Candidate]] = {}
    for candidate in candidates(config, images_per_class):
        families.setdefault(candidate.kind, []).append(candidate)
    keep = scorable_rows(fold, labels)
    score = out_of_fold_scorer(records, label_names, fusion, fold, keep, prior)
    rows: list[dict[str, Any]] = []
    kept: dict[str, tuple[Candidate, Rows, list[nn.Module]]] = {}  # per family: its best candidate's logits, heads
    leader = -1.0
    for family in families.values():
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as fold_logs:  # the folds' logs go; only the MLP's heads are kept (bag)
            found = out_of_fold(family, features, labels, fold, len(label_names), config, weights, Path(fold_logs),
                                extra, scratch, score, leader=leader, device=device)  # leader: the S the MLP must beat
        seconds = (time.perf_counter() - start) / len(found.scores)
        for candidate, scores in found.scores.items():
            rows.append({"head": candidate.name, "kind": candidate.kind, "value": candidate.value,
                         **{k: scores[k] for k in ("S", "top1", "top3", "top5", "fold_S")},
                         "seconds": round(seconds, 2), "tie": candidate in found.ties})
            # an MLP count its grid called a tie (a gain under head.grid_min_gain) is scored but not kept
            oof = found.logits.get(candidate)
            best = kept.get(candidate.kind)
            if oof is not None and (best is None or scores["S"] > found.scores[best[0]]["S"]):
                oof, kept[candidate.kind] = (best[1] if best else None), (
                    candidate, oof, found.fold_heads.get(candidate, []))
            discard(oof)  # the one not kept
        leader = max([leader] + [s["S"] for s in found.scores.values()])
        del found  # one [n, C] logits (and heads) per family are kept: 7 candidates' would be 7 x n x C floats
    shippable = [row for row in rows if any(c.name == row["head"] for c, _, _ in kept.values())]
    chosen_row = robust_choice(shippable, config.within_se, config.robustness)
    chosen, chosen_logits, chosen_heads = kept.pop(chosen_row["kind"])
    for _, logits, _ in kept.values():
        discard(logits)
    for row in rows:
        row["chosen"] = row["head"] == chosen.name
    return Selection(chosen, rows, chosen_logits, fold, chosen_heads, by, int((~keep).sum()))


def group_by(config: HeadConfig, records: Sequence[ImageRecord]) -> str:
    """How the folds are grouped: ``head.group_by``, or for ``auto`` by photographer where some label has two or more
    (so out of fold is the new-photographer regime a flora app meets), else by observation."""
    if config.group_by != "auto":
        return config.group_by
    return "user" if has_users(records) else "observation"


def final_head(selection: Selection, features: Rows, labels: np.ndarray, num_classes: int, config: HeadConfig,
               weights: torch.Tensor | None, log_dir: Path, progress: bool = False,
               extra: np.ndarray | None = None, device: Device = CPU) -> tuple[nn.Module, HeadConfig, Path | None]:
    """The chosen candidate trained on all of the training part (and its augmented copies), the resolved head
    settings that rebuild it, and (MLP) its epoch log. A chosen MLP with ``head.bag`` is instead its K fold heads
    as one :class:`HeadBag`: nothing is retrained, and the bag has no epoch log of its own."""
    resolved = selection.chosen.config(config).model_copy(  # whatever a reused config said
        update={"members": 1, "repeats": selection.repeats, "precision": training_precision(config, device)})
    if resolved.kind == "mlp" and config.bag and len(selection.fold_heads) > 1:
        return HeadBag(selection.fold_heads), resolved.model_copy(update={"members": len(selection.fold_heads)}), None
    x, y = with_augmented(features, labels, extra)
    head, log = fit_head_of(resolved.kind, x, y, num_classes, resolved, weights, log_dir, progress, device=device)
    return head, resolved, log
