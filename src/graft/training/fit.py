"""``graft fit``: read and split the data, extract (or reuse) features, choose and train the head, calibrate,
evaluate, and write the run directory (:mod:`graft.run`).

The run is evaluated on the data's own test part when it has one, else on the validation split; the head learns
from everything else (the *training part*). By default cross-fitting (:mod:`graft.training.crossfit`) chooses the
head on that part by out-of-fold S, and the out-of-fold predictions fit the temperature, the reject table and the
fusion rule; ``head.selection: holdout`` keeps the previous early stopping on the validation split.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.config import GraftConfig
from graft.data.conflicts import without_conflicting_copies
from graft.data.manifest import Manifest, load_manifest
from graft.data.splits import assign_splits, check_trainable
from graft.data.taxonomy import taxonomy_of
from graft.device import Device, resolve_device
from graft.errors import ConfigError
from graft.evaluation.evaluate import ms_per_observation, score
from graft.evaluation.metrics import (
    fusion_rule_rows,
    label_indices,
    photographer_regimes,
    score_logits,
    seen_photographers,
)
from graft.features.augment import augmented_names
from graft.features.backbones import create_backbone
from graft.features.extract import FeatureSet, extract_features
from graft.model.calibration import calibrate
from graft.model.classifier import Classifier
from graft.model.head import predict_logits, with_genus_prior
from graft.model.numpy_head import genus_matrix
from graft.model.numpy_head import genus_prior as apply_genus_prior
from graft.progress import progress_bar
from graft.rows import RowFile
from graft.run import RunFiles, evaluation_part, write_data, write_model, write_out_of_fold, write_results, writing
from graft.store import cache_root
from graft.training.crossfit import cross_fit, final_head
from graft.training.head_training import fit_head, resolve_class_weights
from graft.training.history import merge_epoch_rows, plot_curves, write_rows
from graft.training.streaming import Rows, blocks_of, map_rows

CALIBRATION_ROWS = 200_000  # out-of-fold rows the temperature is fitted on, at most
FUSION_MARGIN = 0.01  # out-of-fold S a fusion rule must gain over mean for predict.fusion: auto to pick it


@dataclass
class RunResult:
    run_dir: Path
    results: dict[str, Any]
    warnings: list[str]
    problems: list[str]


@dataclass
class TrainedHead:
    """What either selection path produced for ``fit`` to score and write."""

    head: nn.Module
    config: GraftConfig  # with the head's resolved settings (kind, C / epochs / scale)
    temperature_logits: tuple[np.ndarray, np.ndarray] | None  # held-out (logits, labels) to fit T on, if any
    history: list[dict[str, str]]
    best_epoch: int | None
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def prepare_manifest(data: str | Path | Manifest, config: GraftConfig) -> tuple[Manifest, list[str]]:
    """Read and split the data; stop before any work if it cannot be trained on."""
    manifest = data if isinstance(data, Manifest) else load_manifest(data, config.data.format, config.data.columns)
    manifest = without_conflicting_copies(manifest.with_default_view(config.data.default_view))
    manifest = assign_splits(manifest, config.data.val_fraction, config.data.seed, config.data.split_by)
    return manifest, check_trainable(manifest)


def labelled_features(part: Manifest, feature_set: FeatureSet, labels: list[str]) -> tuple[Rows, np.ndarray]:
    """(features, label indices) of the images of ``part`` whose label the model knows (on disk if they are)."""
    index = {label: i for i, label in enumerate(labels)}
    known = [r for r in part if r.label in index]
    return feature_set.rows_subset([r.path for r in known]), np.array([index[r.label] for r in known], dtype=np.int64)


def fit(
    data: str | Path | Manifest, out: str | Path, config: GraftConfig | None = None, progress: bool = False
) -> RunResult:
    """Extract (or reuse) features, choose and train the head, evaluate, and write the run directory ``out``.

    Example:
        >>> result = fit("flowers/", "runs/flowers")
        >>> result.results["S"], result.results["top1"]
    """
    config = (config or GraftConfig()).without_resolved()  # another run's config.yaml: its settings, not its choices
    device = resolve_device(config.device)  # before any work: a GPU asked for and absent is a one-line error
    files = RunFiles(out)
    manifest, warnings = prepare_manifest(data, config)
    backbone = create_backbone(**config.backbone.model_dump())
    with writing(files):
        results, problems, later = _fit_into(files, manifest, backbone, config, progress, device)
    return RunResult(files.root, results, warnings + [w for w in later if w not in warnings], problems)


def _fit_into(files: RunFiles, manifest: Manifest, backbone, config: GraftConfig, progress: bool,
              device: Device) -> tuple[dict[str, Any], list[str], list[str]]:
    """Extraction, head, calibration, scoring and writing, while ``fit`` holds the run directory."""
    classifier = Classifier(backbone, nn.Identity(), [], config, taxonomy=taxonomy_of(manifest, config.data.taxonomy),
                            device=device)
    with _feature_rows(manifest, backbone, config) as rows_to:
        feature_set = classifier.manifest_features(manifest, progress, tta=(), rows_to=rows_to)
        return _fit_on(files, manifest, classifier, feature_set, config, progress)


@contextmanager
def _feature_rows(manifest: Manifest, backbone, config: GraftConfig) -> Iterator[Path | None]:
    """Where the training features go when they are too large for memory (``head.memory_mb``; cross-fitting only):
    a row file in a temporary directory of the cache root - the disk the user gave the features - removed after."""
    size_mb = len(manifest) * backbone.num_features * 4 / 2**20
    if config.head.selection != "crossfit" or size_mb <= config.head.memory_mb:
        yield None
        return
    if config.features.train_views:
        raise ConfigError(f"features.train_views needs the training features in memory ({size_mb:.0f} MB > "
                          f"head.memory_mb {config.head.memory_mb:g}): raise head.memory_mb or set train_views 0")
    root = cache_root(config.features.cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix="rows-") as directory:
        yield Path(directory) / "features.npy"


def _fit_on(files: RunFiles, manifest: Manifest, classifier: Classifier, feature_set: FeatureSet, config: GraftConfig,
            progress: bool) -> tuple[dict[str, Any], list[str], list[str]]:
    backbone = classifier.backbone
    manifest = manifest.without(feature_set.failures)
    warnings_after = check_trainable(manifest)  # stops here if skipped images leave too little
    evaluated = evaluation_part(manifest)
    if config.head.selection == "holdout":
        classifier.labels = sorted({r.label for r in manifest.where("train")})
        trained = _holdout(manifest, feature_set, classifier.labels, config, files, progress, classifier.device,
                           genus_prior(classifier, config))
    else:
        training = manifest.without([r.path for r in evaluated])
        classifier.labels = sorted({r.label for r in training})
        augmented = _augmented_views(classifier, training, config, progress) if config.features.train_views else None
        trained = _crossfit(training, feature_set, classifier.labels, config, files, progress, classifier.device,
                            genus_prior(classifier, config), augmented)
    genera = [classifier.taxonomy.of(label).genus for label in classifier.labels]
    classifier.head = with_genus_prior(trained.head, genera, config.head.genus_weight)
    classifier.config = trained.config
    plain = feature_set.rows_for([r.path for r in evaluated])  # single view: what calibration is measured on
    calibration: dict[str, Any] = {"calibration": "off"}
    if config.predict.calibrate and trained.temperature_logits is None:
        calibration = {"calibration": "skipped: the head was refit on train+val, so no held-out data is left"}
    elif config.predict.calibrate:
        calibration = calibrate(classifier, trained.temperature_logits,
                                (plain, label_indices(evaluated.records, classifier.labels)))
    scored = classifier.manifest_features(evaluated).rows_for([r.path for r in evaluated]) if config.predict.tta \
        else plain
    results = score(classifier, evaluated.records, scored)
    training_part = manifest.without([r.path for r in evaluated])
    results |= photographer_regimes(classifier.predict_proba(scored), evaluated.records, classifier.labels,
                                    results["fusion"], seen_photographers(training_part.records))
    results |= trained.results | {
        "evaluated_on": evaluated.records[0].split,
        "tta": list(config.predict.tta),
        **calibration,
        "images_per_second": classifier.measure_throughput(evaluated),
        "backbone": backbone.name,
        **classifier.device.describe(),
        "head": trained.config.head.kind,
        "head_members": trained.config.head.members,  # > 1: the MLP is its R x K fold heads, averaged (head.bag)
        "head_repeats": trained.config.head.repeats,  # cross-fitting's repeats (head.repeats, resolved)
        "features_extracted": feature_set.extracted,
        "features_streamed": isinstance(feature_set.features, RowFile),  # head.memory_mb exceeded: read from disk
        "extraction_seconds": round(feature_set.seconds, 3),
        "head_epochs": len(trained.history),
        "n_train_images": len(manifest) - len(evaluated),
        "n_val_images": len(manifest.where("val")),
        "skipped_images": len(feature_set.failures),
        "views_preprocessed": config.views.enabled,
        "view_fallbacks": dict(feature_set.view_fallbacks),
    }
    results["ms_per_observation"] = ms_per_observation(results)
    problems = manifest.problems + sorted(feature_set.failures.values())
    write_model(files, classifier, given=config)  # config.yaml: the settings as given + resolved choices
    write_data(files, manifest, problems)
    plot_curves([("head", trained.history, trained.best_epoch)], files.curves, f"{backbone.name} + {results['head']} head")
    note = "\n\n".join([f"Evaluated on the {results['evaluated_on']} split; observation fusion: {results['fusion']}.",
                        *trained.notes])
    write_results(files, results, [(f"{backbone.name} + {results['head']} head", results)], note)
    return results, problems, warnings_after


def _augmented_views(classifier: Classifier, training: Manifest, config: GraftConfig, progress: bool) -> FeatureSet:
    """``features.train_views`` augmented copies of every training image (the one-group augmentation), cached like
    any feature: ``[n, 1 + K, D]`` with the original first."""
    names = augmented_names(config.finetune.augment, config.features.train_views)
    with progress_bar("Augmented views", progress) as report:
        return extract_features([r.path for r in training], classifier.backbone, config.features,
                                views=[r.view for r in training], view_config=config.views, tta=names,
                                progress=report, augment=config.finetune.augment, device=classifier.device)


def genus_prior(classifier: Classifier, config: GraftConfig) -> Callable[[np.ndarray], np.ndarray] | None:
    """What the shipped head's genus prior does to logits (``head.genus_weight``; None when off or no genus holds two
    of the classifier's labels): applied to held-out logits, so they are the shipped model's."""
    matrix = genus_matrix([classifier.taxonomy.of(label).genus for label in classifier.labels])
    weight = config.head.genus_weight
    return None if matrix is None or weight == 0 else lambda logits: apply_genus_prior(logits, matrix, weight)


def _crossfit(training: Manifest, feature_set: FeatureSet, labels: list[str], config: GraftConfig, files: RunFiles,
              progress: bool, device: Device, prior: Callable[[np.ndarray], np.ndarray] | None,
              augmented: FeatureSet | None = None) -> TrainedHead:
    start = time.perf_counter()
    known = set(labels)
    records = [r for r in training if r.label in known]
    x, y = labelled_features(Manifest(records), feature_set, labels)
    extra = augmented.rows_for([r.path for r in records])[:, 1:] if augmented is not None else None
    weights = resolve_class_weights(config.head.class_weights, labels, y)
    fusion = "mean" if config.predict.fusion == "auto" else config.predict.fusion  # candidates are scored with it
    scratch = x.path.parent if isinstance(x, RowFile) else None  # streaming: logits go beside the features
    selection = cross_fit(x, y, records, labels, config.head, weights, fusion, extra, scratch, device, prior)
    head, resolved, log = final_head(selection, x, y, len(labels), config.head, weights, files.root, progress, extra,
                                     device)
    held_out = selection.logits if prior is None else map_rows(selection.logits, prior, (scratch or files.root) /
                                                                 "oof-prior.npy")  # what the shipped head says
    write_out_of_fold(files, [r.path for r in records], held_out, selection.fold)
    rules = fusion_rule_rows(held_out, records, labels)
    config = _resolved_fusion(config, rules)
    out_of_fold = score_logits(held_out, records, labels, config.predict.fusion)
    results = {
        "head_selection": selection.rows,
        "out_of_fold": {k: out_of_fold[k] for k in ("S", "top1", "top3", "top5", "image_top1", "n_images")},
        "coverage_out_of_fold": out_of_fold["coverage"],
        "fusion_rules_out_of_fold": rules,
        "head_seconds": round(time.perf_counter() - start, 3),
        "head_choice": {"grouped_by": selection.grouped_by, "unscorable_images": selection.unscorable,
                        "within_se": config.head.within_se, "robustness": list(config.head.robustness)},
    }
    history = _history(files, head, log, x, y)
    repeated = f", repeated {selection.repeats} times" if selection.repeats > 1 else ""
    grouped = "photographer of each label (new photographers out of fold)" if selection.grouped_by == "user" \
        else "observation"
    left_out = (f" {selection.unscorable} image(s) whose class had no example in their fold's training part were left "
                "out of the choice." if selection.unscorable else "")
    notes = [f"Head chosen out of fold over {config.head.folds} folds of the training part ({len(records)} images)"
             f"{repeated}, grouped by {grouped}; candidates within {config.head.within_se:g} standard error(s) of the "
             f"best S count as level, and the most robust family among them ships ({', '.join(config.head.robustness)})"
             f".{left_out}\n\n{selection.table()}"]
    return TrainedHead(head, config.model_copy(update={"head": resolved}), _calibration_sample(held_out, y),
                       history, None, results, notes)


def chosen_fusion(rules: dict[str, dict[str, float]], margin: float = FUSION_MARGIN) -> str:
    """``predict.fusion: auto``: the rule with the best out-of-fold S, if it beats mean by ``margin``; else mean
    (the rules' S differ by little, and a small out-of-fold edge did not carry over to Test on leafsnap-dev)."""
    best = max(rules, key=lambda rule: rules[rule]["S"])
    return best if rules[best]["S"] >= rules["mean"]["S"] + margin else "mean"


def _resolved_fusion(config: GraftConfig, rules: dict[str, dict[str, float]]) -> GraftConfig:
    """``config`` with ``predict.fusion: auto`` replaced by the rule :func:`chosen_fusion` picks from held-out rows."""
    if config.predict.fusion != "auto":
        return config
    return config.model_copy(update={"predict": config.predict.model_copy(update={"fusion": chosen_fusion(rules)})})


def _calibration_sample(logits: Rows, labels: np.ndarray, limit: int = CALIBRATION_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The out-of-fold (logits, labels) the temperature is fitted on: all of them in memory; from disk, a seeded
    sample of ``limit`` rows (one scalar needs far fewer, and n x C logits need not fit in memory)."""
    if not isinstance(logits, RowFile):
        return logits, labels
    if len(labels) <= limit:
        return logits.take(), labels
    rows = np.sort(np.random.default_rng(0).choice(len(labels), limit, replace=False))
    return logits.take(rows), labels[rows]


def _history(files: RunFiles, head: nn.Module, log: Path | None, x: Rows, y: np.ndarray) -> list[dict[str, str]]:
    """The final head's epochs (MLP: Lightning's log); one row of its training loss for the other kinds, fitted in one
    go, and for a bag of fold heads (their epoch logs went with the folds)."""
    if log is not None:
        return merge_epoch_rows(log, files.history)
    loss = correct = 0.0
    for index, block in blocks_of(x):  # a block at a time: the logits of a large training part are n x C floats
        logits = torch.as_tensor(predict_logits(head, block))
        loss += float(nn.functional.cross_entropy(logits, torch.as_tensor(y[index]), reduction="sum"))
        correct += float((logits.argmax(1).numpy() == y[index]).sum())
    loss, accuracy = loss / max(len(y), 1), correct / max(len(y), 1)
    return write_rows([{"epoch": "0", "train_loss": f"{loss:.6f}", "train_acc": f"{accuracy:.6f}"}], files.history)


def _holdout(manifest: Manifest, feature_set: FeatureSet, labels: list[str], config: GraftConfig, files: RunFiles,
             progress: bool, device: Device, prior: Callable[[np.ndarray], np.ndarray] | None) -> TrainedHead:
    """The previous default: early stopping on the validation split, then a refit on train+val with a test part."""
    config = config.model_copy(update={"head": config.head.model_copy(update={"kind": "mlp", "members": 1})})
    train = labelled_features(manifest.where("train"), feature_set, labels)
    val_part = manifest.where("val")
    val = labelled_features(val_part, feature_set, labels)
    head_fit = fit_head(train, val, len(labels), config.head, files.root, progress,
                        refit=config.head.refit and bool(manifest.where("test").records),
                        weights=resolve_class_weights(config.head.class_weights, labels, train[1]), device=device)
    shipped = prior or (lambda logits: logits)  # the head ships with its genus prior
    val_logits = shipped(predict_logits(head_fit.holdout_head, feature_set.rows_for([r.path for r in val_part])))
    held_out = None if head_fit.refit_epochs else (shipped(predict_logits(head_fit.holdout_head, val[0])), val[1])
    results = {"fusion_rules_on_val": fusion_rule_rows(val_logits, val_part.records, labels),
               "head_seconds": round(head_fit.seconds, 3), "head_best_epoch": head_fit.best_epoch + 1,
               "head_refit_epochs": head_fit.refit_epochs}
    history = merge_epoch_rows(head_fit.metrics_csv, files.history)
    config = _resolved_fusion(config, results["fusion_rules_on_val"])  # the only held-out part this path has
    return TrainedHead(head_fit.head, config, held_out, history, head_fit.best_epoch, results)
