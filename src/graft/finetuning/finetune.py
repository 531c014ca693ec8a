"""``graft finetune``: train the whole network of a run in place, then keep the better of it and the head-only model
(:mod:`graft.finetuning.keep`). The Lightning module is :mod:`graft.finetuning.module`; the head it starts from and
the temperature it gets are :mod:`graft.finetuning.start`'s. Files (:class:`~graft.run.RunFiles`):
a checkpoint every epoch and the best one (``--resume`` continues from the last), the merged epoch history, and -
only when the fine-tuned model is kept - the fine-tuned backbone (the config then points at it) and a copy of the
head-only weights.
"""

from __future__ import annotations

import copy
import pickle
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from graft.config import GraftConfig
from graft.data.manifest import ImageRecord, Manifest
from graft.device import Device, resolve_device
from graft.errors import ConfigError, DataError, RunError, first_line
from graft.features.augment import training_transform
from graft.features.backbones import ConcatBackbone
from graft.features.preparation import Preparation, decode_side
from graft.finetuning.keep import FineTuneResult, TrainedModel, keep_better
from graft.finetuning.module import (
    IGNORE,
    EpochLines,
    FineTuneModule,
    ImageDataset,
    ValidationInfo,
    default_workers,
)
from graft.finetuning.optimizers import WarmUp
from graft.finetuning.start import starting_head
from graft.model.classifier import Classifier
from graft.run import (
    RunFiles,
    fine_tuning,
    load_run,
    read_manifest,
    read_results,
    writing,
)
from graft.training.head_training import resolve_class_weights
from graft.training.history import merge_epoch_rows
from graft.training.lightning import make_trainer, quiet_lightning
from graft.views.decisions import DecisionCache


def finetune(
    run_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[Callback] = (),
) -> FineTuneResult | None:
    """Fine-tune the run's backbone + head. Returns None on non-zero DDP ranks.

    Example:
        >>> finetune("runs/plants", {"finetune.epochs": 5, "finetune.lr": 1e-3})
    """
    files = RunFiles(run_dir)
    start = time.perf_counter()
    asked = (overrides or {}).get("device")
    device = resolve_device(asked) if asked else None  # a GPU asked for and absent: an error before any work
    classifier = load_run(files.root, "cpu")  # weights on the host; Lightning moves them to the device
    if isinstance(classifier.backbone, ConcatBackbone):
        raise ConfigError(f"{files.root} concatenates {classifier.backbone.name}; fine-tuning trains one backbone: "
                          "fine-tune a run of each and combine them with `graft ensemble`")
    config = classifier.config.updated(overrides or {})
    classifier.device = device or resolve_device(config.device)  # the override's, else the run's setting
    settings = config.finetune
    manifest = read_manifest(files.root)
    train, val = _training_records(manifest, settings.min_vote), manifest.where("val").records
    label_index = {label: i for i, label in enumerate(classifier.labels)}
    L.seed_everything(settings.seed, workers=True, verbose=False)  # a resume then restores the saved streams
    previous = read_results(files.root)  # the head-only model's results (fine-tuning only writes at the end)
    head, origin = starting_head(classifier, manifest, previous)
    module = _module(classifier, config, train, val, label_index, head)
    if resume and not files.last_checkpoint.is_file():
        raise RunError(f"{files.last_checkpoint} not found: nothing to resume; "
                       f"run `graft finetune {files.root}` without --resume")
    if resume:
        files.keep_finetune_log()
    else:  # an earlier fine-tuning's best epoch must never be taken for this one's (a budget can end before any)
        files.best_checkpoint.unlink(missing_ok=True)
    with quiet_lightning(), fine_tuning(files):
        trainer = _trainer(files, config, progress, list(callbacks), classifier.device, module.plan.warmup_epochs)
        try:  # weights_only: a checkpoint is data; one that needs unpickling code is refused, never run
            trainer.fit(module, *_loaders(classifier, config, train, val, label_index),
                        ckpt_path=str(files.last_checkpoint) if resume else None, weights_only=True)
        except pickle.UnpicklingError as error:
            raise RunError(f"{files.last_checkpoint}: not a weights-only checkpoint graft wrote ({first_line(error)}); "
                           f"delete it and run `graft finetune {files.root}` without --resume") from error
    if not trainer.is_global_zero:
        return None
    history = merge_epoch_rows(files.finetune_logs(), files.finetune_history)
    if trainer.interrupted:
        return FineTuneResult(files.root, "head-only", {}, {}, trainer.current_epoch, time.perf_counter() - start, True)
    best = _best_checkpoint(files)
    module.load_state_dict(best["state_dict"])
    trained = TrainedModel(classifier, module, config, int(best["epoch"]), trainer.current_epoch, origin,
                            trainer.world_size)
    # rank 0 only: the run stays complete throughout, and becomes fully fine-tuned in one staged commit or stays as it was
    with writing(files, mark_incomplete=False):
        return keep_better(files, trained, manifest, history, previous, time.perf_counter() - start)


def _best_checkpoint(files: RunFiles) -> dict[str, Any]:
    """The best epoch's weights, from the path graft names (never a path read out of a checkpoint), as data only."""
    if not files.best_checkpoint.is_file():
        raise RunError(f"fine-tuning ended before any epoch was validated: {files.root} stays head-only")
    try:
        return torch.load(files.best_checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # a tampered or foreign file: refuse it, never unpickle it
        raise RunError(f"{files.best_checkpoint}: not a weights-only checkpoint graft wrote ({type(error).__name__}); "
                       f"delete {files.finetune} and fine-tune again") from error


def _training_records(manifest: Manifest, min_vote: float | None) -> list[ImageRecord]:
    train = [r for r in manifest.where("train") if min_vote is None or r.vote is None or r.vote >= min_vote]
    if not train:
        raise DataError(f"no training images left with --min-vote {min_vote}; lower it")
    return train


def _module(classifier: Classifier, config: GraftConfig, train, val, label_index, head: nn.Module) -> FineTuneModule:
    info = ValidationInfo(np.array([label_index.get(r.label, IGNORE) for r in val]), [r.observation for r in val],
                          [r.user for r in val], config.predict.fusion)
    train_labels = np.array([label_index[r.label] for r in train if r.label in label_index])
    weights = resolve_class_weights(config.head.class_weights, classifier.labels, train_labels)
    return FineTuneModule(copy.deepcopy(classifier.backbone.model), head, config.finetune, info, weights)


def _loaders(classifier: Classifier, config: GraftConfig, train, val, label_index) -> tuple[DataLoader, DataLoader]:
    """Decoding and augmentation in worker processes (on a GPU host, the cores' whole job), into page-locked batches
    for a CUDA device."""
    settings, data_config, device = config.finetune, classifier.backbone.data_config, classifier.device
    decisions = DecisionCache(config.views, config.features.cache_dir) if config.views.enabled else None
    training = Preparation(training_transform(data_config, settings.augment), data_config, config.views,
                           decode_side(data_config, config.features.decode))
    train_set = ImageDataset(train, label_index, training, decisions)
    val_set = ImageDataset(val, label_index, classifier.preparations[0][1], decisions)
    workers = default_workers(device, settings.devices) if settings.num_workers is None else settings.num_workers
    common = {"batch_size": settings.batch_size, "num_workers": workers, "persistent_workers": workers > 0,
              "pin_memory": device.type == "cuda"}
    return DataLoader(train_set, shuffle=True, **common), DataLoader(val_set, shuffle=False, **common)


def _trainer(files: RunFiles, config: GraftConfig, progress: bool | None, extra: list[Callback],
             device: Device, warmup_epochs: float = 0.0) -> L.Trainer:
    settings = config.finetune
    bar = sys.stdout.isatty() if progress is None else progress
    callbacks = [
        ModelCheckpoint(dirpath=files.checkpoints, filename=files.best_checkpoint.stem, monitor="val_loss",
                        enable_version_counter=False),
        # save_last=True would refresh the last checkpoint only when "best" improves; resuming needs every epoch
        ModelCheckpoint(dirpath=files.checkpoints, filename=files.last_checkpoint.stem, monitor=None,
                        enable_version_counter=False),
        EarlyStopping(monitor="val_loss", patience=settings.patience),
        LearningRateMonitor(logging_interval="epoch"),
        WarmUp(warmup_epochs),
        *([] if bar else [EpochLines()]),
        *extra,
    ]
    distributed = settings.devices * settings.num_nodes > 1
    budget = timedelta(minutes=settings.max_minutes) if settings.max_minutes else None
    return make_trainer(files.root, files.finetune.name, settings.epochs, callbacks, bar, device,
                        devices=settings.devices, num_nodes=settings.num_nodes,
                        strategy="ddp" if distributed else "auto", precision=device.precision(settings.precision),
                        max_time=budget)
