"""Training the dense head on cached bottleneck features (seed: softmax + cross-entropy, Adam).

Training runs through Lightning: early stopping on validation loss, the best checkpoint restored, one CSV row per
epoch. On cached features this takes seconds. The network itself is :mod:`graft.model.head`.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, SubsetRandomSampler, TensorDataset

from graft.config import HeadConfig
from graft.device import CPU, Device
from graft.errors import ConfigError
from graft.model.head import build_head
from graft.rows import RowFile
from graft.training.lightning import make_trainer, quiet_lightning
from graft.training.streaming import MinibatchStream, Rows, fit_standardize


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled so the mean weight over present classes is 1 (absent classes get 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def resolve_class_weights(setting: str, labels: list[str], train_labels: np.ndarray) -> torch.Tensor | None:
    """``none``, ``auto`` (inverse frequency) or a CSV (``label,weight`` rows) / JSON (``{label: weight}``) file.

    Labels missing from a file get weight 1; a label the model does not know is an error naming it.
    """
    if setting == "none":
        return None
    if setting == "auto":
        return class_weights(train_labels, len(labels))
    path = Path(setting)
    if not path.is_file():
        raise ConfigError(f"class weights {setting!r}: expected none, auto, or an existing .csv/.json file")
    if path.suffix.lower() == ".json":
        given = {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    else:
        rows = [line.split(",") for line in path.read_text().splitlines() if line.strip()]
        given = {row[0].strip(): float(row[1]) for row in rows if row[0].strip() != "label"}
    unknown = sorted(set(given) - set(labels))
    if unknown:
        raise ConfigError(f"{path}: unknown label(s) {unknown[:5]}; the run's labels are in labels.json")
    return torch.tensor([given.get(label, 1.0) for label in labels], dtype=torch.float32)


class HeadModule(L.LightningModule):
    """Cross-entropy on logits (= the founding recipe's softmax + categorical cross-entropy), Adam."""

    def __init__(self, head: nn.Module, config: HeadConfig, weights: torch.Tensor | None = None):
        super().__init__()
        self.head, self.lr, self.weight_decay = head, config.lr, config.weight_decay
        self.loss = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.head(x)
        loss = self.loss(logits, y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}_acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        # fused: one kernel for the whole step instead of ~10 per tensor; the for-loop Adam was 40% of an MLP fold's
        # time on CPU (bench/head.py), the fused one gives the same weights within float rounding
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=True)


@dataclass
class HeadFit:
    head: nn.Sequential
    metrics_csv: Path
    best_epoch: int  # 0-based epoch whose validation loss was lowest
    epochs_run: int
    seconds: float
    refit_epochs: int = 0  # epochs of the final retraining on train+val (0 = no refit)
    holdout_head: nn.Sequential | None = None  # the head that never saw the validation part (for calibration)


def fit_head(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    config: HeadConfig,
    log_dir: Path,
    progress: bool = False,
    refit: bool = False,
    weights: torch.Tensor | None = None,
    device: Device = CPU,
) -> HeadFit:
    """Train a head on (features, label indices) pairs; return it with the best validation-loss weights restored.

    With ``refit``, a fresh head is then trained on train+val for ``max(best epoch, min_epochs)`` epochs: the
    validation part chose the length of training, and then also teaches the model (only sound when the
    evaluation uses a separate test part). ``weights``: per-class loss weights (see ``resolve_class_weights``).
    """
    start = time.perf_counter()
    module = _module(train, num_classes, config, weights)
    checkpoint = ModelCheckpoint(dirpath=log_dir / "checkpoints", filename="head-best", monitor="val_loss",
                                 save_weights_only=True)  # the optimizer state is never resumed here
    callbacks = [checkpoint, EarlyStopping(monitor="val_loss", patience=config.patience)]
    trainer = _train(module, train, val, config.epochs, config, log_dir, "head", callbacks, progress, device)
    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    module.cpu().load_state_dict(best["state_dict"])
    best_epoch, refit_epochs = int(best["epoch"]), 0
    holdout_head = copy.deepcopy(module.head).eval()
    if refit:
        refit_epochs = max(best_epoch + 1, config.min_epochs)
        both = (np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
        module = _module(both, num_classes, config, weights)
        _train(module, both, None, refit_epochs, config, log_dir, "head-refit", [], progress, device)
    module.head.cpu().eval()
    seconds = time.perf_counter() - start
    csv_path = Path(trainer.logger.log_dir) / "metrics.csv"
    return HeadFit(module.head, csv_path, best_epoch, trainer.current_epoch, seconds, refit_epochs, holdout_head)


def fit_head_epochs(features: Rows, labels: np.ndarray, num_classes: int, config: HeadConfig,
                    weights: torch.Tensor | None, log_dir: Path, version: str,
                    progress: bool = False, device: Device = CPU) -> tuple[nn.Sequential, Path]:
    """The MLP trained for exactly ``config.epochs`` epochs on all of (features, labels), no validation: the
    cross-fitting chose the count. Returns the head (on the host) and its CSV log (one row per epoch)."""
    module = _module((features, labels), num_classes, config.model_copy(update={"kind": "mlp"}), weights)
    trainer = _train(module, (features, labels), None, config.epochs, config, log_dir, version, [], progress, device)
    return module.head.cpu().eval(), Path(trainer.logger.log_dir) / "metrics.csv"


def _module(train: tuple[np.ndarray, np.ndarray], num_classes: int, config: HeadConfig,
            weights: torch.Tensor | None) -> HeadModule:
    L.seed_everything(config.seed, verbose=False)
    head = build_head(train[0].shape[1], num_classes, config.model_copy(update={"members": 1}))  # one is trained
    fit_standardize(head[0], train[0])
    return HeadModule(head, config, weights)


def _tensors(part: tuple[np.ndarray, np.ndarray]) -> TensorDataset:
    return TensorDataset(torch.as_tensor(part[0], dtype=torch.float32), torch.as_tensor(part[1], dtype=torch.long))


def train_loader(rows: Rows, labels: np.ndarray, batch_size: int, seed: int,
                 index: np.ndarray | None = None) -> DataLoader:
    """Minibatches of the rows ``index`` (all by default) in a new random order each epoch: whole batches sliced out
    of the tensors at once in memory (no per-row indexing + collate: ~2x faster epochs), block by block on disk."""
    if isinstance(rows, RowFile):
        if index is not None:
            rows, labels = rows.subset(index), labels[index]
        return DataLoader(MinibatchStream(rows, labels, batch_size, seed), batch_size=None)
    data = _tensors((rows, labels))
    order = RandomSampler(data) if index is None else SubsetRandomSampler(index)
    return DataLoader(data, batch_size=None, sampler=BatchSampler(order, batch_size, drop_last=False))


def _train(module, train, val, epochs, config, log_dir, version, callbacks, progress, device) -> L.Trainer:
    val_loader = DataLoader(_tensors(val), batch_size=None, sampler=BatchSampler(SequentialSampler(range(len(val[1]))),
                            1024, drop_last=False)) if val is not None else None
    return fit_module(module, train_loader(*train, config.batch_size, config.seed), val_loader, epochs, log_dir,
                      version, callbacks, progress, training_precision(config, device), device)


def training_precision(config: HeadConfig, device: Device = CPU) -> str:
    """Lightning's precision for ``config.precision`` (auto: bf16 matmuls where the device multiplies bfloat16
    natively: a GPU that does, a CPU with AVX512-BF16 or AMX)."""
    if config.precision != "auto" or device.is_gpu:
        return device.precision(config.precision)
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16-mixed" if native else "32-true"


def fit_module(module: L.LightningModule, train: DataLoader | CombinedLoader, val: DataLoader | None, epochs: int,
               log_dir: Path, version: str, callbacks: list, progress: bool, precision: str = "32-true",
               device: Device = CPU) -> L.Trainer:
    """``module`` trained on ``device`` for at most ``epochs`` epochs, logged to ``log_dir/version/metrics.csv``."""
    with quiet_lightning():
        # Lightning's default checkpoint writes the head after every epoch; only the held-out run keeps one (~9% of
        # a 40-epoch fold here)
        trainer = make_trainer(log_dir, version, epochs, callbacks, progress, device,
                               limit_val_batches=1.0 if val is not None else 0,
                               enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                               precision=precision)
        trainer.fit(module, train, val)
    return trainer
