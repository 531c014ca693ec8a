"""What both trainers (the head on cached features, fine-tuning) share: one Lightning trainer factory and quiet logs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from graft.device import Device


def make_trainer(log_dir: Path, version: str, max_epochs: int, callbacks: list[Callback], progress: bool,
                 device: Device, devices: int = 1, **options: Any) -> L.Trainer:
    """A trainer on ``device`` (``devices`` of them: DDP processes when more than one) logging one CSV row per epoch to
    ``log_dir/version/metrics.csv``; ``options`` go to Lightning."""
    return L.Trainer(
        max_epochs=max_epochs, accelerator=device.accelerator, devices=device.lightning_devices(devices),
        callbacks=callbacks, logger=CSVLogger(str(log_dir), name="", version=version), enable_progress_bar=progress,
        enable_model_summary=False, log_every_n_steps=1, num_sanity_val_steps=0, **options,
    )


class quiet_lightning:
    """Silence Lightning's banner lines and its few-workers hint (features are in memory; workers would slow it)."""

    def __enter__(self):
        self._logger = logging.getLogger("lightning.pytorch")
        self._level = self._logger.level
        self._logger.setLevel(logging.WARNING)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")  # Lightning's own deprecation noise
        warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")  # the refit trains without validation
        warnings.filterwarnings("ignore", ".*in eval mode at the start of training.*")  # frozen BatchNorm, on purpose
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        warnings.filterwarnings("ignore", ".*`IterableDataset` has `__len__` defined.*")  # one process reads it

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)
        self._logger.setLevel(self._level)
