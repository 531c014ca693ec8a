"""Head families: each is fitted on (features, label indices) and cross-fitted for out-of-fold logits.

  linear     multinomial logistic regression on standardised features - scikit-learn's objective, minimised by
             torch's L-BFGS (:func:`graft.training.streaming.fit_linear`) straight into the head's Linear, so it is
             saved and served like every other head; its setting is C (inverse L2 strength)
  prototype  class means of the standardised, normalised features; its setting is the logit scale
  mlp        the founding recipe's head trained by Lightning (:mod:`graft.training.head_training`); its setting is the epoch
             count: the K fold heads train side by side and are scored as training passes each count of the grid
             (:mod:`graft.training.fold_heads`)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.config import HeadConfig
from graft.device import CPU, Device
from graft.errors import ConfigError
from graft.model.head import build_head
from graft.rows import RowFile
from graft.training.fold_heads import Score, train_fold_heads
from graft.training.head_training import fit_head_epochs
from graft.training.streaming import LogitSink, Rows, fit_linear, fit_prototypes, fit_standardize, take_rows

ABSENT = -30.0  # logit of a class a fold's training part lacks: it can never be the answer there


@dataclass(frozen=True)
class Candidate:
    """One head family with one setting: ``value`` is C (linear), the epoch count (mlp) or the scale (prototype)."""

    kind: str
    value: float

    @property
    def name(self) -> str:
        setting = {"linear": "C", "mlp": "epochs", "prototype": "scale"}[self.kind]
        return f"{self.kind} {setting}={self.value:g}"

    def config(self, base: HeadConfig) -> HeadConfig:
        field = {"linear": "c", "mlp": "epochs", "prototype": "scale"}[self.kind]
        value = int(self.value) if self.kind == "mlp" else float(self.value)
        return base.model_copy(update={"kind": self.kind, field: value})


def candidates(config: HeadConfig, images_per_class: float) -> list[Candidate]:
    """The candidates cross-fitting compares: the linear head and the MLP for ``auto`` (the MLP only on data with
    enough images per class), else the configured family over its grid."""
    grids = {"linear": config.c_grid, "prototype": [config.scale],
             "mlp": [e for e in config.epoch_grid if e <= config.epochs] or [config.epochs]}
    if config.kind == "auto":
        kinds = ["linear"] + (["mlp"] if images_per_class >= config.mlp_min_images_per_class else [])
    else:
        kinds = [config.kind]
    return [Candidate(kind, float(value)) for kind in kinds for value in grids[kind]]


def fit_head_of(kind: str, features: Rows, labels: np.ndarray, num_classes: int, config: HeadConfig,
                weights: torch.Tensor | None, log_dir: Path, progress: bool = False,
                start: nn.Sequential | None = None, device: Device = CPU) -> tuple[nn.Sequential, Path | None]:
    """A head of ``kind`` with ``config``'s setting, trained on all of ``features``; with the MLP's epoch log.
    ``start``: a head of the same kind already fitted on the same rows at another setting (the grid's previous C),
    whose standardisation is reused and whose solution the linear head's L-BFGS starts from. ``device``: where it
    trains; the head it returns is on the host."""
    if kind == "mlp":
        return fit_head_epochs(features, labels, num_classes, config, weights, log_dir, "head", progress, device)
    head = build_head(features.shape[1], num_classes, config.model_copy(update={"kind": kind}))
    if start is not None:
        head[0].load_state_dict(start[0].state_dict())
    else:
        fit_standardize(head[0], features)
    if kind == "prototype":
        fit_prototypes(head[0], head[1], features, labels, device)
    else:
        fit_linear(head[1], features, labels, config.c, weights, ABSENT, head[0],
                   start=start[1] if start is not None else None, device=device)
    return head.eval(), None


def with_augmented(features: Rows, labels: np.ndarray, extra: np.ndarray | None,
                   rows: np.ndarray | slice = slice(None)) -> tuple[Rows, np.ndarray]:
    """The training rows ``rows`` and, when there are cached augmented copies (``extra``: ``[n, K, D]``), their K
    augmented copies with the same labels."""
    index = np.arange(len(labels))[rows]
    x, y = take_rows(features, index), labels[index]
    if extra is None or extra.shape[1] == 0:
        return x, y
    if isinstance(x, RowFile):
        raise ConfigError("features.train_views needs the training features in memory: raise head.memory_mb or set "
                          "features.train_views: 0")
    copies = extra[rows]
    return (np.concatenate([x, copies.reshape(-1, copies.shape[-1])]),
            np.concatenate([y, np.repeat(y, copies.shape[1])]))


@dataclass
class OutOfFold:
    """Per candidate of one family that was tried: its out-of-fold scores (when a ``score`` was given); the ``[n, C]``
    out-of-fold logits of every candidate (linear, prototype) or of the best one (MLP, whose grid stops early); (MLP)
    the R x K fold heads that made them, and the counts that were ties (scored, never kept)."""

    scores: dict[Candidate, dict[str, Any]]
    logits: dict[Candidate, Rows]
    fold_heads: dict[Candidate, list[nn.Module]]
    ties: set[Candidate] = field(default_factory=set)


def out_of_fold(family: list[Candidate], features: Rows, labels: np.ndarray, folds: np.ndarray,
                num_classes: int, config: HeadConfig, weights: torch.Tensor | None,
                log_dir: Path, extra: np.ndarray | None = None, scratch: Path | None = None,
                score: Score | None = None, leader: float = math.inf, device: Device = CPU) -> OutOfFold:
    """``[n, C]`` out-of-fold logits per candidate of one family: each row predicted by a head that never saw it
    (nor any augmented copy of it: ``extra`` rows train with their originals' fold), scored by ``score``. ``folds``
    is each row's fold, ``[n]``, or one row of folds per repeat, ``[R, n]``. The MLP, which ships its R x K fold heads
    as a bag, is cross-fitted in every repeat and a row's logits are the log of its R heads' mean probability; the
    other families ship one head refit on everything, so the first repeat's fold heads predict it (R x the cost
    bought nothing they ship). Features on disk get their logits on disk too, as row files in ``scratch``. The MLP's
    heads train side by side and stop at the first epoch count that does not beat the best before it by more than
    ``head.grid_min_gain`` while the MLP's best S is not above ``leader``, the other families' best
    (:mod:`graft.training.fold_heads`; without a ``score``, every count)."""
    folds = np.atleast_2d(folds)
    on_disk = scratch is not None and isinstance(features, RowFile)

    def sink(candidate: Candidate) -> LogitSink:
        path = scratch / f"oof-{candidate.kind}-{candidate.value:g}.npy" if on_disk else None
        return LogitSink(len(labels), num_classes, path, len(folds))

    if family[0].kind == "mlp":
        rows, row_labels, fold_of_row = features, labels, folds  # no copy: each fold's rows are drawn by index
        if extra is not None and extra.shape[1]:
            rows, row_labels = with_augmented(features, labels, extra)
            fold_of_row = np.concatenate([folds, np.repeat(folds, extra.shape[1], axis=1)], axis=1)
        grid = sorted(int(c.value) for c in family)
        found = train_fold_heads(rows, row_labels, fold_of_row, features, folds, num_classes, grid, config, weights,
                                 log_dir, lambda epochs: sink(Candidate("mlp", float(epochs))), score, leader, device)
        named = {epochs: Candidate("mlp", float(epochs)) for epochs in grid}
        return OutOfFold({named[e]: s for e, s in found.scores.items()}, {named[e]: z for e, z in found.logits.items()},
                         {named[e]: h for e, h in found.heads.items()}, {named[e] for e in found.ties})
    folds = folds[:1]  # a family that ships one head refit on everything: one pass of fold heads predicts that head
    sinks = {candidate: sink(candidate) for candidate in family}
    for fold in folds:
        for k in np.unique(fold):
            held, kept = fold == k, fold != k
            positions, held_rows = np.flatnonzero(held), take_rows(features, held)
            x, y = with_augmented(features, labels, extra, kept)
            head = None  # the grid's previous head on these rows: a linear head starts from its solution
            for candidate in family:
                head, _ = fit_head_of(candidate.kind, x, y, num_classes, candidate.config(config), weights, log_dir,
                                      start=head, device=device)
                sinks[candidate].put(head, held_rows, positions)
    logits = {candidate: sink.result() for candidate, sink in sinks.items()}
    scores = {candidate: score(z) for candidate, z in logits.items()} if score is not None else {}
    return OutOfFold(scores, logits, {})
