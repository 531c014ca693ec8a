"""Fine-tune a run in place: train the whole network, compare with head-only on the evaluation split, keep the better.

Files added to the run directory::

    finetune/checkpoints/last.ckpt   every epoch (``--resume`` continues from it: optimizer, scheduler, epoch, RNG)
    finetune/checkpoints/best.ckpt   lowest validation loss
    finetune/metrics.csv             Lightning's log; finetune-history.csv: one row per epoch (losses, S, top-k, LR)
    finetuned-backbone.safetensors   only when the fine-tuned model is kept (config.yaml then points at it)
    head-only.safetensors            the head before fine-tuning, kept for comparison
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import save
from torch.utils.data import DataLoader

from graft.augment import training_transform
from graft.backbones import Backbone, weights_identity
from graft.config import GraftConfig
from graft.errors import DataError, RunError
from graft.features import ViewPreparer, default_workers
from graft.files import atomic_write, atomic_write_text
from graft.finetune import IGNORE, FineTuneModule, ImageDataset, ValidationInfo
from graft.head import _quiet_lightning, resolve_class_weights
from graft.manifest import Manifest, read_csv
from graft.pipeline import Classifier, load_run, measure_throughput, score
from graft.report import merge_epoch_rows, plot_curves, results_table, write_results_json

BACKBONE_FILE = "finetuned-backbone.safetensors"


@dataclass
class FineTuneResult:
    run_dir: Path
    kept: str  # "finetuned" or "head-only"
    finetuned: dict[str, Any]
    head_only: dict[str, Any]
    epochs: int
    seconds: float
    interrupted: bool = False


class EpochLines(Callback):
    """One plain line per epoch when output is not a terminal (logs, CI), instead of a progress bar."""

    def on_train_epoch_end(self, trainer, module):  # validation of this epoch has run and logged by now
        if trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            shown = " ".join(f"{k}={metrics[k]:.4f}" for k in ("train_loss", "val_loss", "val_S", "val_top1")
                             if k in metrics)
            print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {shown}", flush=True)


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
    run_dir = Path(run_dir)
    start = time.perf_counter()
    classifier = load_run(run_dir)
    config = classifier.config.updated(overrides or {})
    settings = config.finetune
    manifest = read_csv(run_dir / "manifest.csv")
    train, val = _training_records(manifest, settings.min_vote), manifest.where("val").records
    label_index = {label: i for i, label in enumerate(classifier.labels)}
    L.seed_everything(settings.seed, workers=True, verbose=False)  # a resume then restores the saved streams
    module = _module(classifier, config, train, val, label_index)
    last = run_dir / "finetune" / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise RunError(f"{last} not found: nothing to resume; run `graft finetune {run_dir}` without --resume")
    with _quiet_lightning():
        trainer = _trainer(run_dir, config, progress, list(callbacks))
        trainer.fit(module, *_loaders(classifier, config, train, val, label_index),
                    ckpt_path=str(last) if resume else None)
    if not trainer.is_global_zero:
        return None
    history = merge_epoch_rows(Path(trainer.logger.log_dir) / "metrics.csv", run_dir / "finetune-history.csv")
    if trainer.interrupted:
        return FineTuneResult(run_dir, "head-only", {}, {}, trainer.current_epoch, time.perf_counter() - start, True)
    best_path = trainer.checkpoint_callback.best_model_path
    best = torch.load(best_path, map_location="cpu", weights_only=False)
    module.load_state_dict(best["state_dict"])
    return _keep_better(run_dir, classifier, module, config, manifest, history, int(best["epoch"]),
                        trainer.current_epoch, time.perf_counter() - start)


def _training_records(manifest: Manifest, min_vote: float | None):
    train = [r for r in manifest.where("train") if min_vote is None or r.vote is None or r.vote >= min_vote]
    if not train:
        raise DataError(f"no training images left with --min-vote {min_vote}; lower it")
    return train


def _module(classifier: Classifier, config: GraftConfig, train, val, label_index) -> FineTuneModule:
    info = ValidationInfo(np.array([label_index.get(r.label, IGNORE) for r in val]), [r.observation for r in val],
                          [r.user for r in val], config.predict.fusion)
    train_labels = np.array([label_index[r.label] for r in train if r.label in label_index])
    weights = resolve_class_weights(config.head.class_weights, classifier.labels, train_labels)
    backbone, head = copy.deepcopy(classifier.backbone.model), copy.deepcopy(classifier.head)
    return FineTuneModule(backbone, head, config.finetune, info, weights)


def _loaders(classifier: Classifier, config: GraftConfig, train, val, label_index) -> tuple[DataLoader, DataLoader]:
    settings, data_config = config.finetune, classifier.backbone.data_config
    prepare = ViewPreparer(config.views, config.features.cache_dir) if config.views.enabled else None
    size = data_config["input_size"]
    train_set = ImageDataset(train, label_index, training_transform(data_config, settings.augment), size, prepare)
    val_set = ImageDataset(val, label_index, classifier.backbone.transform(), size, prepare)
    workers = default_workers() if settings.num_workers is None else settings.num_workers
    common = {"batch_size": settings.batch_size, "num_workers": workers, "persistent_workers": workers > 0}
    return DataLoader(train_set, shuffle=True, **common), DataLoader(val_set, shuffle=False, **common)


def _trainer(run_dir: Path, config: GraftConfig, progress: bool | None, extra: list[Callback]) -> L.Trainer:
    settings = config.finetune
    bar = sys.stdout.isatty() if progress is None else progress
    checkpoints = run_dir / "finetune" / "checkpoints"
    callbacks = [
        ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val_loss", enable_version_counter=False),
        # save_last=True would refresh last.ckpt only when "best" improves; resuming needs every epoch
        ModelCheckpoint(dirpath=checkpoints, filename="last", monitor=None, enable_version_counter=False),
        EarlyStopping(monitor="val_loss", patience=settings.patience),
        LearningRateMonitor(logging_interval="epoch"),
        *([] if bar else [EpochLines()]),
        *extra,
    ]
    distributed = settings.devices * settings.num_nodes > 1
    return L.Trainer(
        max_epochs=settings.epochs, accelerator="cpu", devices=settings.devices, num_nodes=settings.num_nodes,
        strategy="ddp" if distributed else "auto", precision=settings.precision, callbacks=callbacks,
        logger=CSVLogger(str(run_dir), name="", version="finetune"), enable_progress_bar=bar,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
    )


def _keep_better(run_dir, classifier, module, config, manifest, history, best_epoch, epochs, seconds) -> FineTuneResult:
    backbone_model = module.backbone.to(memory_format=torch.contiguous_format).eval()
    layout = classifier.backbone.channels_last
    if layout:
        backbone_model = backbone_model.to(memory_format=torch.channels_last)
    tuned_backbone = Backbone(classifier.backbone.name, backbone_model, classifier.backbone.pooling,
                              weights_identity(backbone_model), classifier.backbone.data_config, layout)
    tuned = Classifier(tuned_backbone, module.head.eval(), classifier.labels, config)
    part = manifest.where("test") if manifest.where("test").records else manifest.where("val")
    feature_set = tuned.manifest_features(part)
    part = part.without(feature_set.failures)
    tuned_results = score(tuned, part.records, feature_set.rows_for([r.path for r in part]))
    tuned_results |= {"evaluated_on": "test" if part.records[0].split == "test" else "val",
                      "images_per_second": measure_throughput(tuned, part), "n_epochs": epochs,
                      "best_epoch": best_epoch + 1, "seconds": round(seconds, 1)}
    previous = json.loads((run_dir / "results.json").read_text())
    head_only = previous.get("head_only", previous)
    kept = "finetuned" if tuned_results["S"] > head_only["S"] else "head-only"
    if kept == "finetuned":
        _save_finetuned(run_dir, tuned, config)
    chosen = tuned_results if kept == "finetuned" else head_only
    results = {**head_only, **{k: chosen[k] for k in chosen if k in head_only}, "model": kept,
               "head_only": head_only, "finetuned": tuned_results}
    write_results_json(run_dir / "results.json", results)
    rows = [("head-only", head_only), (f"fine-tuned ({epochs} ep.)", tuned_results)]
    note = (f"Backbone {classifier.backbone.name}. Kept: **{kept}** (higher S on the "
            f"{tuned_results['evaluated_on']} split; fine-tuned ties keep head-only).\n\n")
    atomic_write_text(run_dir / "results.md", f"# {run_dir.name}\n\n{note}{results_table(rows)}")
    head_history = [row for row in _read_rows(run_dir / "history.csv")]
    plot_curves([("head", head_history, head_only.get("head_best_epoch", 1) - 1), ("fine-tune", history, best_epoch)],
                run_dir / "curves.png", f"{classifier.backbone.name}: head, then fine-tuning")
    return FineTuneResult(run_dir, kept, tuned_results, head_only, epochs, seconds)


def _save_finetuned(run_dir: Path, tuned: Classifier, config: GraftConfig) -> None:
    if not (run_dir / "head-only.safetensors").exists():
        (run_dir / "head-only.safetensors").write_bytes((run_dir / "head.safetensors").read_bytes())
    backbone_state = {k: v.contiguous() for k, v in tuned.backbone.model.state_dict().items()}
    atomic_write(run_dir / BACKBONE_FILE, lambda handle: handle.write(save(backbone_state)))
    head_state = {k: v.contiguous() for k, v in tuned.head.state_dict().items()}
    atomic_write(run_dir / "head.safetensors", lambda handle: handle.write(save(head_state)))
    # the temperature was fitted for the head-only model; the fine-tuned one is left uncalibrated rather than wrong
    atomic_write_text(run_dir / "calibration.json", json.dumps({"temperature": 1.0}) + "\n")
    saved = config.updated({"backbone.weights": BACKBONE_FILE})
    atomic_write_text(run_dir / "config.yaml", saved.to_yaml())
    described = tuned.backbone.describe() | {"identity": weights_identity(tuned.backbone.model)}  # what was saved
    atomic_write_text(run_dir / "backbone.json", json.dumps(described, indent=2, default=str) + "\n")


def _read_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open() as handle:
        return list(csv.DictReader(handle))
