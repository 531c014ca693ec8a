"""The MLP's K fold heads trained side by side, scored out of fold as training passes each epoch count of the grid.

Cross-fitting wants, per MLP setting (an epoch count), its out-of-fold S: every fold's head at that count predicting
its held-out fold. Trained one fold after another, every fold had to run to the grid's largest count before any S
was known. Trained side by side - one Lightning run whose every step is one minibatch of each fold's training rows,
each head its own loss (the sum's gradient is each head's own, and Adam is elementwise, so one optimizer is K) - the
out-of-fold S of a count is known as soon as training passes it, and training stops at the first count whose S does
not beat the best before it by more than ``head.grid_min_gain`` (0.005; a tie) while the MLP trails the families
scored before it. Where the MLP's S is flat after a few epochs and the linear head is ahead (ELPV, seedlings, flavia)
that halves its cost or more. Where the MLP leads (leafsnap-dev), the count it keeps is the head cross-fitting will
ship, and a tie does not stop the grid: its S moves by +-0.01 from one epoch to the next there and still climbed
after a tie in 2 seeds of 3 (``bench/epochs.py``). Only the best count's logits and heads are kept.
Repeated cross-fitting (``head.repeats``) trains every repeat's K heads in the same run, and a count's S is that of
each row's R out-of-fold predictions averaged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import CombinedLoader
from torch import nn

from graft.config import HeadConfig
from graft.device import CPU, Device
from graft.model.head import build_head
from graft.training.head_training import HeadModule, fit_module, train_loader, training_precision
from graft.training.lightning import quiet_lightning
from graft.training.streaming import LogitSink, Rows, discard, fit_standardize, take_rows

Score = Callable[[Rows], dict[str, Any]]  # out-of-fold logits [n, C] -> {"S": ..., "top1": ...}


class FoldHeads(HeadModule):
    """One head per fold (of every repeat); a training batch holds one minibatch per fold (``None`` once a fold's
    epoch is done)."""

    def __init__(self, heads: list[nn.Module], config: HeadConfig, weights: torch.Tensor | None):
        super().__init__(nn.ModuleList(heads), config, weights)

    def training_step(self, batch: list[tuple[torch.Tensor, torch.Tensor] | None], batch_idx):
        losses = [self.loss(self.head[k](part[0]), part[1]) for k, part in enumerate(batch) if part is not None]
        loss = torch.stack(losses).sum()
        self.log("train_loss", loss / len(losses), on_step=False, on_epoch=True, prog_bar=True, batch_size=1)
        return loss


@dataclass
class GridResult:
    """Per epoch count reached: its out-of-fold scores; for the kept counts, their ``[n, C]`` logits and R x K heads;
    the counts that were ties (not better than the best before them by the grid's min_gain: scored, never kept)."""

    scores: dict[int, dict[str, Any]] = field(default_factory=dict)
    ties: set[int] = field(default_factory=set)
    logits: dict[int, Rows] = field(default_factory=dict)
    heads: dict[int, list[nn.Module]] = field(default_factory=dict)


class _GridScores(Callback):
    """At each count of the grid: every fold's head predicts its held-out rows and the count is scored. A count
    whose S does not beat the best count's by more than ``min_gain`` is a tie (ties keep the earlier, shorter one),
    and stops training unless the best count's S is above ``leader`` (the best S of the other families). Without a
    ``score`` every count is kept and training runs to the end."""

    def __init__(self, features: Rows, folds: np.ndarray, grid: list[int], sink: Callable[[int], LogitSink],
                 score: Score | None, result: GridResult, min_gain: float = 0.0, leader: float = math.inf):
        self.features, self.held = features, [np.flatnonzero(fold == k) for fold in folds for k in np.unique(fold)]
        self.grid, self.sink, self.score, self.result, self.min_gain = grid, sink, score, result, min_gain
        self.leader = leader

    def on_train_epoch_end(self, trainer, module: FoldHeads):
        epochs = trainer.current_epoch + 1
        if epochs not in self.grid:
            return
        sink = self.sink(epochs)
        for head, positions in zip(module.head, self.held, strict=True):  # one fold's rows in memory at a time
            sink.put(head, take_rows(self.features, positions), positions)
        module.head.train()  # predicting put them in eval mode
        logits = sink.result()
        if self.score is not None:
            scores = self.result.scores[epochs] = self.score(logits)
            module.log("oof_S", float(scores["S"]), on_step=False, on_epoch=True)
            best = next(iter(self.result.logits), None)
            if best is not None and scores["S"] <= self.result.scores[best]["S"] + self.min_gain:
                self.result.ties.add(epochs)
                if self.result.scores[best]["S"] <= self.leader:  # trailing: more epochs would not be shipped
                    trainer.should_stop = True
                discard(logits)
                return
            if best is not None:
                discard(self.result.logits.pop(best))
                self.result.heads.pop(best)
        self.result.logits[epochs] = logits
        self.result.heads[epochs] = [copy.deepcopy(head).cpu().eval() for head in module.head]  # kept on the host


def train_fold_heads(rows: Rows, labels: np.ndarray, fold_of_row: np.ndarray, held: Rows, folds: np.ndarray,
                     num_classes: int, grid: list[int], config: HeadConfig, weights: torch.Tensor | None,
                     log_dir: Path, sink: Callable[[int], LogitSink], score: Score | None = None,
                     leader: float = math.inf, device: Device = CPU) -> GridResult:
    """Per repeat r (a row of ``folds`` ``[R, n]`` and ``fold_of_row``), fold k's head trains on the ``rows`` whose
    ``fold_of_row`` is not k (augmented copies carry their original's fold) and predicts the ``held`` rows whose
    fold is k: the out-of-fold logits of each count in ``grid`` (ascending), into ``sink(count)``, which averages
    a row's R predictions. ``leader``: the best out-of-fold S of the other families (a tie stops the grid only
    while the MLP's best is not above it)."""
    L.seed_everything(config.seed, verbose=False)
    single = config.model_copy(update={"kind": "mlp", "members": 1})
    heads, loaders = [], []
    for repeat in fold_of_row:
        for k in np.unique(repeat):
            kept = np.flatnonzero(repeat != k)
            head = build_head(rows.shape[1], num_classes, single)
            fit_standardize(head[0], take_rows(rows, kept))
            heads.append(head)
            loaders.append(train_loader(rows, labels, config.batch_size, config.seed + len(loaders), kept))
    result = GridResult()
    scores = _GridScores(held, folds, grid, sink, score, result, config.grid_min_gain, leader)
    with quiet_lightning():  # its pytree deprecation chatter
        combined = CombinedLoader(loaders, mode="max_size")
    fit_module(FoldHeads(heads, config, weights), combined, None, max(grid), log_dir, "folds", [scores], False,
               training_precision(config, device), device)
    return result
