"""``graft fit``: read and split the data, extract (or reuse) features, train the head, calibrate, evaluate, and
write the run directory (:mod:`graft.run`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from graft.config import GraftConfig
from graft.data.manifest import Manifest, load_manifest
from graft.data.splits import assign_splits, check_trainable
from graft.evaluation.evaluate import ms_per_observation, score
from graft.evaluation.metrics import fusion_rule_rows, label_indices
from graft.features.backbones import create_backbone
from graft.features.extract import FeatureSet
from graft.model.calibration import expected_calibration_error, fit_temperature, negative_log_likelihood
from graft.model.classifier import Classifier
from graft.model.fusion import softmax
from graft.model.head import predict_logits
from graft.run import RunFiles, evaluation_part, write_data, write_model, write_results
from graft.training.head import HeadFit, fit_head, resolve_class_weights
from graft.training.history import merge_epoch_rows, plot_curves


@dataclass
class RunResult:
    run_dir: Path
    results: dict[str, Any]
    warnings: list[str]
    problems: list[str]


def prepare_manifest(data: str | Path | Manifest, config: GraftConfig) -> tuple[Manifest, list[str]]:
    """Read and split the data; stop before any work if it cannot be trained on."""
    manifest = data if isinstance(data, Manifest) else load_manifest(data, config.data.format, config.data.columns)
    manifest = manifest.with_default_view(config.data.default_view)
    manifest = assign_splits(manifest, config.data.val_fraction, config.data.seed)
    return manifest, check_trainable(manifest)


def labelled_features(part: Manifest, feature_set: FeatureSet, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(features, label indices) of the images of ``part`` whose label the model knows."""
    index = {label: i for i, label in enumerate(labels)}
    known = [r for r in part if r.label in index]
    return feature_set.rows_for([r.path for r in known]), np.array([index[r.label] for r in known], dtype=np.int64)


def fit(
    data: str | Path | Manifest, out: str | Path, config: GraftConfig | None = None, progress: bool = False
) -> RunResult:
    """Extract (or reuse) features, train the head, evaluate, and write the run directory ``out``.

    Example:
        >>> result = fit("flowers/", "runs/flowers")
        >>> result.results["S"], result.results["top1"]
    """
    config = config or GraftConfig()
    files = RunFiles(out)
    manifest, warnings = prepare_manifest(data, config)
    backbone = create_backbone(**config.backbone.model_dump())
    files.root.mkdir(parents=True, exist_ok=True)
    classifier = Classifier(backbone, nn.Identity(), [], config)
    feature_set = classifier.manifest_features(manifest, progress)
    manifest = manifest.without(feature_set.failures)
    warnings += [w for w in check_trainable(manifest) if w not in warnings]  # only what skipped images changed
    classifier.labels = sorted({r.label for r in manifest.where("train")})
    train = labelled_features(manifest.where("train"), feature_set, classifier.labels)
    val_part = manifest.where("val")
    val = labelled_features(val_part, feature_set, classifier.labels)
    head_fit = fit_head(
        train, val, len(classifier.labels), config.head, files.root, progress,
        refit=config.head.refit and bool(manifest.where("test").records),
        weights=resolve_class_weights(config.head.class_weights, classifier.labels, train[1]),
    )
    classifier.head = head_fit.head
    evaluated = evaluation_part(manifest)
    split = evaluated.records[0].split if evaluated.records else "val"
    plain = feature_set.rows_for([r.path for r in evaluated])  # single view: what calibration is measured on
    calibration: dict[str, Any] = {"calibration": "off"}
    if config.predict.calibrate and head_fit.refit_epochs:
        # the final head trained on the validation part: no held-out data is left to fit a temperature on
        calibration = {"calibration": "skipped: the head was refit on train+val, so no held-out data is left"}
    elif config.predict.calibrate:
        calibration = calibrate(classifier, head_fit.holdout_head, val,
                                (plain, label_indices(evaluated.records, classifier.labels)))
    scored = classifier.manifest_features(evaluated).rows_for([r.path for r in evaluated]) if config.predict.tta \
        else plain
    results = score(classifier, evaluated.records, scored)
    val_probabilities = softmax(predict_logits(head_fit.holdout_head, feature_set.rows_for([r.path for r in val_part])))
    results |= {
        "fusion_rules_on_val": fusion_rule_rows(val_probabilities, val_part.records, classifier.labels),
        "evaluated_on": split,
        "tta": list(config.predict.tta),
        **calibration,
        "images_per_second": classifier.measure_throughput(evaluated),
        "backbone": backbone.name,
        "features_extracted": feature_set.extracted,
        "extraction_seconds": round(feature_set.seconds, 3),
        "head_seconds": round(head_fit.seconds, 3),
        "head_epochs": head_fit.epochs_run,
        "head_best_epoch": head_fit.best_epoch + 1,
        "head_refit_epochs": head_fit.refit_epochs,
        "n_train_images": len(manifest.where("train")),
        "n_val_images": len(val_part),
        "skipped_images": len(feature_set.failures),
        "views_preprocessed": config.views.enabled,
        "view_fallbacks": dict(feature_set.view_fallbacks),
    }
    results["ms_per_observation"] = ms_per_observation(results)
    problems = manifest.problems + sorted(feature_set.failures.values())
    _write(files, classifier, manifest, results, problems, head_fit)
    return RunResult(files.root, results, warnings, problems)


def calibrate(classifier: Classifier, holdout_head: nn.Module, val, evaluation) -> dict[str, float]:
    """Fit the temperature on validation logits of a head that never trained on them; report ECE and NLL on the
    evaluation split before and after. Sets ``classifier.temperature``."""
    classifier.temperature = fit_temperature(predict_logits(holdout_head, val[0]), val[1]) if len(val[1]) else 1.0
    features, truth = evaluation
    known = truth >= 0
    logits = predict_logits(classifier.head, features[known])
    before, after = softmax(logits), softmax(logits / classifier.temperature)
    return {
        "calibration": "temperature scaling fitted on the validation split",
        "temperature": round(classifier.temperature, 4),
        "ece_before": expected_calibration_error(before, truth[known]),
        "ece_after": expected_calibration_error(after, truth[known]),
        "nll_before": negative_log_likelihood(before, truth[known]),
        "nll_after": negative_log_likelihood(after, truth[known]),
    }


def _write(files: RunFiles, classifier: Classifier, manifest: Manifest, results: dict, problems: list[str],
           head_fit: HeadFit) -> None:
    write_model(files, classifier)
    write_data(files, manifest, problems)
    history = merge_epoch_rows(head_fit.metrics_csv, files.history)
    plot_curves([("head", history, head_fit.best_epoch)], files.curves, f"{classifier.backbone.name} + head")
    note = f"Evaluated on the {results['evaluated_on']} split; observation fusion: {results['fusion']}."
    write_results(files, results, [(f"{classifier.backbone.name} + head", results)], note)
