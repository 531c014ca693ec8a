"""The end of ``graft finetune``: score the fine-tuned model, keep it only if it beats the head-only model on the
validation split (never on the test part, which only reports both), and write what is kept into the run in one
staged commit (:func:`~graft.run.staged_commit`), so the run is never half one model and half the other."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from graft.config import GraftConfig
from graft.data.manifest import Manifest
from graft.evaluation.evaluate import score
from graft.evaluation.metrics import score_logits
from graft.features.backbones import Backbone, weights_identity
from graft.files import atomic_write
from graft.finetuning.module import FineTuneModule
from graft.finetuning.start import calibrate_finetuned
from graft.model.classifier import Classifier
from graft.model.head import members_of
from graft.run import (
    RunFiles,
    evaluation_part,
    read_out_of_fold,
    staged_commit,
    write_config,
    write_json,
    write_results,
    write_state,
)
from graft.training.history import plot_curves, read_rows


@dataclass
class FineTuneResult:
    run_dir: Path
    kept: str  # "finetuned" or "head-only"
    finetuned: dict[str, Any]
    head_only: dict[str, Any]
    epochs: int
    seconds: float
    interrupted: bool = False


CALIBRATION_KEYS = frozenset({"temperature", "ece_before", "ece_after", "nll_before", "nll_after"})


@dataclass
class TrainedModel:
    """What training produced: the module with its best weights, and the epochs."""

    start: Classifier
    module: FineTuneModule
    config: GraftConfig
    best_epoch: int  # 0-based
    epochs: int
    start_head: str  # where the head fine-tuning started from came from (:func:`starting_head`)
    processes: int = 1  # devices that trained it (DDP world size)

    def classifier(self) -> Classifier:
        """The fine-tuned model, its weights on the host (what is saved and identified), computing on the run's
        device."""
        model = self.module.backbone.cpu().to(memory_format=torch.contiguous_format).eval()
        layout = self.start.backbone.channels_last
        if layout:
            model = model.to(memory_format=torch.channels_last)
        original = self.start.backbone
        tuned = Backbone(original.name, model, original.pooling, weights_identity(model), original.data_config, layout)
        config = self.config.updated({"head.members": members_of(self.module.head)})  # a bag, or one start head
        return Classifier(tuned, self.module.head.cpu().eval(), self.start.labels, config, taxonomy=self.start.taxonomy,
                          device=self.start.device)


def keep_better(files: RunFiles, trained: TrainedModel, manifest: Manifest, history: list[dict[str, str]],
                 previous: dict[str, Any], seconds: float) -> FineTuneResult:
    tuned = trained.classifier()
    part = evaluation_part(manifest)
    feature_set = tuned.manifest_features(part)
    part = part.without(feature_set.failures)
    plain = feature_set.rows_for([r.path for r in part])
    calibration = calibrate_finetuned(tuned, manifest, part, plain)  # before scoring: the coverage table uses it
    tuned_results = score(tuned, part.records, plain) | calibration
    tuned_results |= {"evaluated_on": part.records[0].split, "images_per_second": tuned.measure_throughput(part),
                      "n_epochs": trained.epochs, "best_epoch": trained.best_epoch + 1, "seconds": round(seconds, 1),
                      "start_head": trained.start_head, "optimizer": asdict(trained.module.plan),
                      **tuned.device.describe(trained.processes)}
    head_only = previous.get("head_only", previous)
    choice = _validation_choice(files, manifest, trained, history, head_only, tuned_results)
    tuned_results |= choice
    kept = "finetuned" if choice["finetuned_val_S"] > choice["head_only_val_S"] else "head-only"
    chosen = tuned_results if kept == "finetuned" else head_only
    stale = CALIBRATION_KEYS - set(chosen)  # the head-only model's temperature and ECE say nothing of the other one
    results = {**{k: v for k, v in head_only.items() if k not in stale},
               **{k: chosen[k] for k in chosen if k in head_only}, "model": kept,
               "head_only": head_only, "finetuned": tuned_results}
    name = trained.start.backbone.name
    rows = [("head-only", head_only), (f"fine-tuned ({trained.epochs} ep.)", tuned_results)]
    note = (f"Backbone {name}. Kept: **{kept}** (higher S on the {choice['choice_basis']}: head-only "
            f"{choice['head_only_val_S']:.4f}, fine-tuned {choice['finetuned_val_S']:.4f}; ties keep head-only). "
            f"The {tuned_results['evaluated_on']} rows below report; they chose nothing.")
    with staged_commit(files) as stage:
        if kept == "finetuned":
            save_finetuned(files, tuned, tuned.config, into=stage)
        write_results(stage, results, rows, note, title=files.root.name)
        plot_curves([("head", read_rows(files.history), head_only.get("head_best_epoch", 1) - 1),
                     ("fine-tune", history, trained.best_epoch)], stage.curves, f"{name}: head, then fine-tuning")
    return FineTuneResult(files.root, kept, tuned_results, head_only, trained.epochs, seconds)


def _validation_choice(files: RunFiles, manifest: Manifest, trained: TrainedModel, history: list[dict[str, str]],
                       head_only: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """S of both models on the validation split, which decides which is kept - never the test part the run reports.
    The fine-tuned model's is its best epoch's (it never trained on validation images); head-only's comes from its
    out-of-fold predictions (the cross-fitted head trained on validation images too, so its own are not held out)."""
    if tuned["evaluated_on"] != "test":  # no test part: the run is evaluated on the validation split itself
        return {"choice_basis": "validation split", "head_only_val_S": head_only["S"], "finetuned_val_S": tuned["S"]}
    tuned_s = float(next(row["val_S"] for row in history if int(row["epoch"]) == trained.best_epoch))
    val = manifest.where("val")
    start = trained.start
    saved = read_out_of_fold(files.root)
    row = {path: i for i, path in enumerate(saved[0])} if saved is not None else {}
    records = [r for r in val if r.path in row and r.label in start.labels]
    if records:
        head_s = score_logits(saved[1][[row[r.path] for r in records]], records, start.labels,
                              start.config.predict.fusion)["S"]
        basis = "validation split (head-only: its out-of-fold predictions)"
    else:  # a holdout run's head may have been refit on the validation split: this favours head-only
        feature_set = start.manifest_features(val)
        kept = val.without(feature_set.failures)
        head_s = score(start, kept.records, feature_set.rows_for([r.path for r in kept]))["S"]
        basis = "validation split (head-only: the head itself, which may have seen it)"
    return {"choice_basis": basis, "head_only_val_S": head_s, "finetuned_val_S": tuned_s}


def save_finetuned(files: RunFiles, tuned: Classifier, config: GraftConfig, into: RunFiles | None = None) -> None:
    """Write the fine-tuned backbone and head for the run ``files`` (into ``into``, a staged commit's files, when
    given); config.yaml then points at the backbone file."""
    into = into or files
    if not files.head_only.exists():
        atomic_write(into.head_only, lambda handle: handle.write(files.head.read_bytes()))
    write_state(into.finetuned_backbone, tuned.backbone.model)
    write_state(into.head, tuned.head)
    write_json(into.calibration, {"temperature": tuned.temperature})  # its own (1.0 if it could not be fitted)
    given = GraftConfig.from_yaml(files.config).without_resolved()  # the user's settings stay apart from outcomes
    write_config(into, config.updated({"backbone.weights": files.finetuned_backbone.name}), given)
    described = tuned.backbone.describe() | {"identity": weights_identity(tuned.backbone.model)}  # what was saved
    write_json(into.backbone, described)
