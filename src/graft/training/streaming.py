"""Head training on features that stay on disk: the same heads as in memory, fed one block of a row file at a time.

``graft fit`` streams when the training features exceed ``head.memory_mb`` (:mod:`graft.rows` says why the reads are
``pread``, not a memory map). What changes against the in-memory path, and why it is the same model:
  standardisation  mean and std accumulated block by block in float64 (equal to the in-memory ones within 1e-6)
  prototype        per-class sums of the normalised rows, in memory as on disk (:func:`fit_prototypes`)
  linear           the same function fits both: full-batch L-BFGS whose every loss/gradient evaluation is one pass
                   over the blocks (:func:`fit_linear`)
  mlp              minibatches drawn block by block, blocks in a new random order each epoch and rows shuffled
                   within each ("shuffled by chunk"); with one block it is an ordinary shuffle
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset

from graft.device import CPU, Device
from graft.model.fusion import softmax
from graft.model.head import Prototypes, Standardize, predict_logits
from graft.rows import RowFile, RowWriter

Rows = np.ndarray | RowFile  # [n, D] features: in memory, or a row file (or a subset of one) on disk


def take_rows(rows: Rows, index: np.ndarray) -> Rows:
    """Rows ``index`` (positions or a boolean mask): a copy in memory, a view (nothing read) on disk."""
    index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
    return rows.subset(index) if isinstance(rows, RowFile) else rows[index]


def discard(rows: Rows | None) -> None:
    """Delete logits no longer wanted: a row file's file goes now; an array is left to the garbage collector."""
    if isinstance(rows, RowFile):
        rows.path.unlink()


def blocks_of(rows: Rows) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(indices, rows)`` in file order: a row file's blocks; an array in one piece (it is in memory already)."""
    if isinstance(rows, RowFile):
        yield from rows.blocks()
    else:
        yield np.arange(len(rows)), rows


def fit_standardize(layer: Standardize, rows: Rows) -> None:
    """The head's standardisation statistics (of the power-normalised rows), from memory (torch) or block by block
    (float64)."""
    if isinstance(rows, RowFile):
        mean, std = rows.moments(transform=lambda block: layer.normalise(torch.from_numpy(block)).numpy())
        layer.set_statistics(torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32),
                             len(rows))
    else:
        layer.fit(torch.as_tensor(rows, dtype=torch.float32))


def fit_prototypes(standardize: Standardize, prototypes: Prototypes, rows: Rows, labels: np.ndarray,
                   device: Device = CPU) -> None:
    """Each class's prototype: the normalised sum of its normalised, standardised rows - the normalised mean; a class
    without rows gets none. A block at a time (summed on ``device``), so rows on disk and in memory give the same
    prototypes."""
    on = device.torch()
    sums = torch.zeros_like(prototypes.prototypes, device=on)
    scaler = copy.deepcopy(standardize).to(on)
    with torch.no_grad():
        for index, block in blocks_of(rows):
            unit = nn.functional.normalize(scaler(torch.as_tensor(block).to(on)), dim=1)
            sums.index_add_(0, torch.as_tensor(labels[index], device=on), unit)
        present = sums.norm(dim=1) > 0
        prototypes.prototypes.copy_(torch.where(present[:, None], nn.functional.normalize(sums, dim=1), 0.0).cpu())


def fit_linear(linear: nn.Linear, rows: Rows, labels: np.ndarray, c: float, weights: torch.Tensor | None,
               absent: float, standardize: nn.Module, max_iter: int = 300, start: nn.Linear | None = None,
               device: Device = CPU) -> int:
    """Multinomial logistic regression over the classes present in ``labels`` on ``standardize``d rows; the absent
    classes get logit ``absent``. The objective is scikit-learn's (class-weighted mean cross-entropy +
    ``|W|^2 / 2Cn``), minimised by full-batch L-BFGS in float32 to scikit-learn's default gradient tolerance, 1e-4:
    each evaluation is one pass over the rows - one matrix product in memory, a block at a time on disk, where
    scikit-learn cannot go (it needs the whole matrix, in float64). The C grid (0.01, 0.1, 1) at that tolerance,
    warm-started: 5-8x faster than scikit-learn's lbfgs on leafsnap-dev, seedlings and flavia. graft stopped at 1e-3
    before; on few-shot data (more features than images, every class separable) a head started from zero then
    stopped far from the optimum: leafsnap-dev, Lite0 at 320 px, C=1, objective 0.077 against 0.063, Test S 0.58
    against scikit-learn's 0.64 - and the final head, fitted from zero, was not the head cross-fitting had scored.
    ``start``: a linear head fitted on the same rows at another C (the previous point of the C grid), whose solution
    L-BFGS starts from: the problem is convex, so the optimum is the same, reached in fewer evaluations.
    ``device``: where the products run (rows in memory are copied there once; blocks on disk one at a time).
    Returns the number of loss/gradient evaluations."""
    on = device.torch()
    standardize = copy.deepcopy(standardize).to(on)
    if not isinstance(rows, RowFile):  # in memory: standardised once, on the device, not at every evaluation
        with torch.no_grad():
            rows, standardize = standardize(torch.as_tensor(rows, dtype=torch.float32).to(on)), nn.Identity()
    present = np.unique(labels)
    remap = np.full(linear.out_features, -1)
    remap[present] = np.arange(len(present))
    if start is None:
        weight, bias = torch.zeros(len(present), rows.shape[1], device=on), torch.zeros(len(present), device=on)
    else:
        kept = torch.as_tensor(present)
        weight, bias = start.weight.detach()[kept].clone().to(on), start.bias.detach()[kept].clone().to(on)
    weight.requires_grad_()
    bias.requires_grad_()
    class_weight = weights[present].float().to(on) if weights is not None else None
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-4,
                                  tolerance_change=1e-9, history_size=10, line_search_fn="strong_wolfe")
    n = len(rows)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        total = (weight**2).sum() / (2 * c * n)
        total.backward()
        total = total.detach()
        for index, block in blocks_of(rows):
            with torch.no_grad():
                x = standardize(torch.as_tensor(block).to(on))
            target = torch.as_tensor(remap[labels[index]], device=on)
            loss = nn.functional.cross_entropy(x @ weight.T + bias, target, weight=class_weight, reduction="sum") / n
            loss.backward()
            total = total + loss.detach()
        return total

    optimizer.step(closure)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(absent)
        linear.weight[torch.as_tensor(present)] = weight.detach().cpu()
        linear.bias[torch.as_tensor(present)] = bias.detach().cpu()
    return optimizer.state[weight]["func_evals"]


def map_rows(rows: Rows, transform: Callable[[np.ndarray], np.ndarray], path: Path) -> Rows:
    """``transform`` applied to every row: at once in memory; block by block into a new row file at ``path`` on disk."""
    if not isinstance(rows, RowFile):
        return transform(rows)
    writer = None
    for index, block in rows.blocks():
        done = transform(block)
        writer = writer or RowWriter(path, len(rows), done.shape[1])
        writer.write(index, done)
    return writer.close()


class LogitSink:
    """``[n, C]`` logits filled a block of rows at a time: an array, or (``path``) a row file, since out-of-fold
    logits of a large training part - images x classes floats - can outgrow memory as surely as its features.
    With ``repeats`` R > 1 (repeated cross-fitting, in memory) every row is put R times and the result is the log
    of the R heads' mean probability, a log-probability graft treats as logits, as :class:`HeadBag`'s output."""

    def __init__(self, rows: int, classes: int, path: Path | None = None, repeats: int = 1):
        if repeats > 1 and path is not None:
            raise ValueError("repeated cross-fitting averages its out-of-fold probabilities in memory")
        self.repeats = repeats
        self.array = np.zeros((rows, classes), np.float32) if path is None else None
        self.writer = RowWriter(path, rows, classes) if path is not None else None

    def put(self, head: nn.Module, features: Rows, positions: np.ndarray) -> None:
        """``head``'s logits for ``features``, which are the rows ``positions`` of the whole table."""
        for index, block in blocks_of(features):
            logits = predict_logits(head, block)
            if self.repeats > 1:
                self.array[positions[index]] += softmax(logits) / self.repeats
            elif self.writer is None:
                self.array[positions[index]] = logits
            else:
                self.writer.write(positions[index], logits)

    def result(self) -> Rows:
        if self.repeats > 1:
            return np.log(np.maximum(self.array, np.finfo(np.float32).tiny))
        return self.array if self.writer is None else self.writer.close()


class MinibatchStream(IterableDataset):
    """``(features, labels)`` minibatches of a row file for Lightning: a fresh block order each epoch (seeded by the
    head's seed and the epoch), minibatches cut within blocks."""

    def __init__(self, rows: RowFile, labels: np.ndarray, batch_size: int, seed: int):
        self.rows, self.labels, self.batch_size, self.seed, self.epoch = rows, labels, batch_size, seed, 0
        self.batches = sum(-(-size // batch_size) for size in rows.block_sizes())

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        self.epoch += 1
        for index, block in self.rows.blocks(seed=self.seed * 100_003 + self.epoch):
            for start in range(0, len(index), self.batch_size):
                part = slice(start, start + self.batch_size)
                yield torch.from_numpy(block[part]), torch.as_tensor(self.labels[index[part]])  # a view, no copy
