"""The stages wired into a run directory: manifest -> features -> head -> predictions -> report.

A run directory holds everything needed to reuse the model and to audit it::

    config.yaml      resolved configuration          head.safetensors  head weights (+ standardisation)
    labels.json      class names, index order        backbone.json     backbone name, weights identity, preprocessing
    manifest.csv     every image with its split      history.csv       one row per head epoch
    results.json     metrics on the evaluation split results.md        the same as a Markdown table
    curves.png       training curves                 problems.txt      skipped images / rows, and why
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save
from torch import nn

from graft.backbones import Backbone, create_backbone
from graft.calibrate import coverage_table, expected_calibration_error, fit_temperature, negative_log_likelihood
from graft.config import GraftConfig
from graft.errors import RunError
from graft.features import FeatureSet, extract_features
from graft.files import atomic_write, atomic_write_text
from graft.head import build_head, fit_head, predict_logits, resolve_class_weights
from graft.manifest import ImageRecord, Manifest, load_manifest
from graft.metrics import lifeclef_score, top_k, true_label_ranks
from graft.predict import FUSION_RULES, fuse_observations, ranked, softmax
from graft.report import merge_epoch_rows, plot_curves, results_table, write_results_json
from graft.splits import assign_splits, check_trainable

THROUGHPUT_SAMPLE = 64
REJECT_THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


@dataclass
class Identification:
    """One observation's answer: ranked (label, probability) pairs, each image's own top-3, and skipped files."""

    ranking: list[tuple[str, float]]
    per_image: dict[str, list[tuple[str, float]]]
    fusion: str
    failures: dict[str, str] = field(default_factory=dict)
    unknown: bool = False  # the fused top probability is below the configured reject threshold


@dataclass
class Classifier:
    """A trained model: backbone + head + labels, with the config it was trained under."""

    backbone: Backbone
    head: nn.Module
    labels: list[str]
    config: GraftConfig
    temperature: float = 1.0  # fitted on held-out logits; 1.0 = uncalibrated

    def features(
        self, paths: Sequence[Path], views: Sequence[str] | None = None, progress: bool = False,
        tta: Sequence[str] | None = None,
    ) -> FeatureSet:
        """Features of ``paths``; with test-time views (``tta``, default: the config's) shaped ``[n, 1 + k, D]``."""
        settings = self.config.features
        tta = self.config.predict.tta if tta is None else tta
        with _progress_bar("Extracting features", progress) as report:
            return extract_features(
                paths, self.backbone, settings.cache_dir, settings.batch_size, settings.num_workers,
                settings.chunk_size, report, views, self.config.views, tta,
            )

    def manifest_features(self, manifest: Manifest, progress: bool = False, tta: Sequence[str] | None = None):
        return self.features([r.path for r in manifest], [r.view for r in manifest], progress, tta)

    def image_probabilities(self, part: Manifest, progress: bool = False) -> tuple[Manifest, np.ndarray, dict]:
        """(the readable records, their class probabilities, failures) - the interface ensembles share."""
        feature_set = self.manifest_features(part, progress)
        kept = part.without(feature_set.failures)
        return kept, self.predict_proba(feature_set.rows_for([r.path for r in kept])), feature_set.failures

    def measure_throughput(self, part: Manifest) -> float:
        return measure_throughput(self, part)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities per image; test-time views (``[n, k, D]``) are averaged after the softmax."""
        if features.ndim == 3:
            n, k, dim = features.shape
            logits = predict_logits(self.head, features.reshape(n * k, dim)) / self.temperature
            return softmax(logits).reshape(n, k, -1).mean(axis=1)
        return softmax(predict_logits(self.head, features) / self.temperature)

    def identify(
        self, paths: Sequence[str | Path], views: Sequence[str] | None = None, fusion: str | None = None,
        top: int | None = None,
    ) -> Identification:
        """Rank the labels for one observation photographed in ``paths`` (``views``: Flower, Leaf, ... per photo)."""
        return identify_observation(self, paths, views, fusion, top)


def identify_observation(model, paths, views=None, fusion=None, top=None) -> Identification:
    """One observation -> fused ranking, per-image top-3, 'unknown' below the reject threshold; bad images skipped.

    ``model`` is anything with ``image_probabilities``, ``labels`` and ``config``: a run or an ensemble.
    """
    settings = model.config.predict
    fusion = fusion or settings.fusion
    views = list(views) if views else [model.config.data.default_view or ""] * len(paths)
    records = [ImageRecord(Path(p), "", "observation", view=v) for p, v in zip(paths, views, strict=True)]
    kept, probabilities, failures = model.image_probabilities(Manifest(records))
    failures = {str(path): reason for path, reason in failures.items()}
    if not kept.records:
        return Identification([], {}, fusion, failures)
    fused = fuse_observations(probabilities, ["observation"] * len(probabilities), fusion).scores[0]
    per_image = {str(r.path): ranked(row, model.labels, 3) for r, row in zip(kept, probabilities, strict=True)}
    unknown = settings.reject_threshold is not None and float(fused.max()) < settings.reject_threshold
    return Identification(ranked(fused, model.labels, top or settings.top_k), per_image, fusion, failures, unknown)


@dataclass
class RunResult:
    run_dir: Path
    results: dict[str, Any]
    warnings: list[str]
    problems: list[str]


def prepare_manifest(data: str | Path | Manifest, config: GraftConfig) -> tuple[Manifest, list[str]]:
    """Read and split the data; stop before any work if it cannot be trained on."""
    is_manifest = isinstance(data, Manifest)
    manifest = data if is_manifest else load_manifest(data, config.data.format, config.data.columns)
    manifest = manifest.with_default_view(config.data.default_view)
    manifest = assign_splits(manifest, config.data.val_fraction, config.data.seed)
    return manifest, check_trainable(manifest)


def fit(
    data: str | Path | Manifest, out: str | Path, config: GraftConfig | None = None, progress: bool = False
) -> RunResult:
    """Extract (or reuse) features, train the head, evaluate, and write the run directory ``out``.

    Example:
        >>> result = fit("flowers/", "runs/flowers")
        >>> result.results["S"], result.results["top1"]
    """
    config = config or GraftConfig()
    out = Path(out)
    manifest, warnings = prepare_manifest(data, config)
    backbone = create_backbone(**config.backbone.model_dump())
    out.mkdir(parents=True, exist_ok=True)
    classifier = Classifier(backbone, nn.Identity(), [], config)
    feature_set = classifier.manifest_features(manifest, progress)
    manifest = manifest.without(feature_set.failures)
    warnings += [w for w in check_trainable(manifest) if w not in warnings]  # only what skipped images changed
    classifier.labels = sorted({r.label for r in manifest.where("train")})
    train = _arrays(manifest.where("train"), feature_set, classifier.labels)
    head_fit = fit_head(
        train, _arrays(manifest.where("val"), feature_set, classifier.labels), len(classifier.labels), config.head,
        out, progress, refit=config.head.refit and bool(manifest.where("test").records),
        weights=resolve_class_weights(config.head.class_weights, classifier.labels, train[1]),
    )
    classifier.head = head_fit.head
    split = "test" if manifest.where("test").records else "val"
    evaluated = manifest.where(split)
    plain = feature_set.rows_for([r.path for r in evaluated])  # single view: what calibration is measured on
    calibration: dict[str, Any] = {"calibration": "off"}
    if config.predict.calibrate and head_fit.refit_epochs:
        # the final head trained on the validation part: no held-out data is left to fit a temperature on
        calibration = {"calibration": "skipped: the head was refit on train+val, so no held-out data is left"}
    elif config.predict.calibrate:
        val = _arrays(manifest.where("val"), feature_set, classifier.labels)
        calibration = calibrate(classifier, head_fit.holdout_head, val, (plain, _label_indices(evaluated, classifier)))
    scored = classifier.manifest_features(evaluated).rows_for([r.path for r in evaluated]) if config.predict.tta \
        else plain
    results = score(classifier, evaluated.records, scored)
    val_part = manifest.where("val")  # scored by the head that never trained on it
    val_logits = predict_logits(head_fit.holdout_head, feature_set.rows_for([r.path for r in val_part]))
    val_probabilities = softmax(val_logits)
    results |= {
        "fusion_rules_on_val": fusion_rule_rows(val_probabilities, val_part.records, classifier.labels),
        "evaluated_on": split,
        "tta": list(config.predict.tta),
        **calibration,
        "images_per_second": measure_throughput(classifier, evaluated),
        "backbone": backbone.name,
        "features_extracted": feature_set.extracted,
        "extraction_seconds": round(feature_set.seconds, 3),
        "head_seconds": round(head_fit.seconds, 3),
        "head_epochs": head_fit.epochs_run,
        "head_best_epoch": head_fit.best_epoch + 1,
        "head_refit_epochs": head_fit.refit_epochs,
        "n_train_images": len(manifest.where("train")),
        "n_val_images": len(manifest.where("val")),
        "skipped_images": len(feature_set.failures),
        "views_preprocessed": config.views.enabled,
        "view_fallbacks": dict(feature_set.view_fallbacks),
    }
    results["ms_per_observation"] = ms_per_observation(results)
    problems = manifest.problems + sorted(feature_set.failures.values())
    _write_run(out, classifier, manifest, results, problems, head_fit)
    return RunResult(out, results, warnings, problems)


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


def _label_indices(part: Manifest, classifier: Classifier) -> np.ndarray:
    index = {label: i for i, label in enumerate(classifier.labels)}
    return np.array([index.get(r.label, -1) for r in part], dtype=np.int64)


def _arrays(part: Manifest, feature_set: FeatureSet, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    index = {label: i for i, label in enumerate(labels)}
    known = [r for r in part if r.label in index]
    return feature_set.rows_for([r.path for r in known]), np.array([index[r.label] for r in known], dtype=np.int64)


def score(classifier: Classifier, records: Sequence[ImageRecord], features: np.ndarray) -> dict[str, Any]:
    """S and top-k per observation, top-1 per image, for ``features`` of ``records``."""
    probabilities = classifier.predict_proba(features)
    return score_probabilities(probabilities, records, classifier.labels, classifier.config.predict.fusion)


def score_probabilities(
    probabilities: np.ndarray, records: Sequence[ImageRecord], labels: Sequence[str], fusion: str
) -> dict[str, Any]:
    """S and top-k per observation, top-1 per image. A label the model never saw counts as a miss (1/rank = 0)."""
    index = {label: i for i, label in enumerate(labels)}
    image_truth = np.array([index.get(r.label, -1) for r in records])
    fused = fuse_observations(probabilities, [r.observation for r in records], fusion)
    first = {}
    for record in records:
        first.setdefault(record.observation, record)
    truth = np.array([index.get(first[o].label, -1) for o in fused.observations])
    ranks = np.full(len(truth), np.inf)
    known = truth >= 0
    if known.any():
        ranks[known] = true_label_ranks(fused.scores[known], truth[known])
    coverage = coverage_table(fused.scores, truth, REJECT_THRESHOLDS) if len(truth) else []
    return {
        "coverage": coverage,
        "S": lifeclef_score(ranks, [first[o].user for o in fused.observations]),
        "top1": top_k(ranks, 1),
        "top3": top_k(ranks, 3),
        "top5": top_k(ranks, 5),
        "image_top1": float((probabilities.argmax(1) == image_truth).mean()) if len(records) else float("nan"),
        "n_observations": len(fused.observations),
        "n_images": len(records),
        "n_users": len({first[o].user for o in fused.observations}),
        "fusion": fusion,
    }


def fusion_rule_rows(probabilities: np.ndarray, records: Sequence[ImageRecord], labels: Sequence[str]) -> dict:
    """The same predictions scored under every fusion rule, so a user can pick the rule on validation data."""
    keys = ("S", "top1", "top3", "top5")
    return {rule: {k: score_probabilities(probabilities, records, labels, rule)[k] for k in keys}
            for rule in FUSION_RULES}


def measure_throughput(classifier: Classifier, part: Manifest) -> float:
    """Images/s of the whole uncached path (read, decode, per-view preprocessing, resize, backbone, head)."""
    sample = part.records[:THROUGHPUT_SAMPLE]
    if not sample:
        return float("nan")
    with tempfile.TemporaryDirectory() as empty_cache:
        start = time.perf_counter()
        settings = classifier.config.features
        feature_set = extract_features(
            [r.path for r in sample], classifier.backbone, empty_cache, settings.batch_size, settings.num_workers,
            settings.chunk_size, views=[r.view for r in sample], view_config=classifier.config.views,
            tta=classifier.config.predict.tta,
        )
        classifier.predict_proba(feature_set.features)
        return round(len(sample) / (time.perf_counter() - start), 2)


def _write_run(out: Path, classifier: Classifier, manifest: Manifest, results: dict, problems: list[str], head_fit):
    atomic_write_text(out / "config.yaml", classifier.config.to_yaml())
    atomic_write_text(out / "labels.json", json.dumps(classifier.labels, indent=1) + "\n")
    atomic_write_text(out / "calibration.json", json.dumps({"temperature": classifier.temperature}) + "\n")
    atomic_write_text(out / "backbone.json", json.dumps(classifier.backbone.describe(), indent=2, default=str) + "\n")
    state = {key: tensor.contiguous() for key, tensor in classifier.head.state_dict().items()}
    atomic_write(out / "head.safetensors", lambda handle: handle.write(save(state)))
    manifest.write_csv(out / "manifest.csv")
    atomic_write_text(out / "problems.txt", "".join(f"{line}\n" for line in problems))
    history = merge_epoch_rows(head_fit.metrics_csv, out / "history.csv")
    plot_curves([("head", history, head_fit.best_epoch)], out / "curves.png", f"{classifier.backbone.name} + head")
    write_results_json(out / "results.json", results)
    note = f"Evaluated on the {results['evaluated_on']} split; observation fusion: {results['fusion']}.\n\n"
    table = results_table([(f"{classifier.backbone.name} + head", results)])
    atomic_write_text(out / "results.md", f"# {out.name}\n\n{note}{table}")


def load_run(run_dir: str | Path) -> Classifier:
    """Rebuild the trained classifier of a run directory (backbone weights are checked against the run's)."""
    run_dir = Path(run_dir)
    needed = ["config.yaml", "labels.json", "backbone.json", "head.safetensors"]
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise RunError(f"{run_dir}: not a complete graft run (missing {', '.join(missing)}); run `graft fit` first")
    config = GraftConfig.from_yaml(run_dir / "config.yaml")
    labels = json.loads((run_dir / "labels.json").read_text())
    settings = config.backbone.model_dump()
    if settings["weights"] and not Path(settings["weights"]).is_absolute():  # fine-tuned weights live in the run
        settings["weights"] = str(run_dir / settings["weights"])
    backbone = create_backbone(**settings)
    expected = json.loads((run_dir / "backbone.json").read_text())["identity"]
    if backbone.identity != expected:
        raise RunError(
            f"{run_dir}: backbone {backbone.name} now loads different weights (identity {backbone.identity}, "
            f"trained with {expected}); restore the original weights file or retrain"
        )
    state = load_file(run_dir / "head.safetensors")
    head = build_head(backbone.num_features, len(labels), config.head)
    head.load_state_dict(state)
    head.eval()
    calibration = run_dir / "calibration.json"
    temperature = json.loads(calibration.read_text())["temperature"] if calibration.is_file() else 1.0
    return Classifier(backbone, head, labels, config, temperature)


def evaluate(
    run_dir: str | Path, data: str | Path, progress: bool = False, tta: Sequence[str] | None = None,
    fusion: str | None = None,
) -> dict[str, Any]:
    """Score a run on a dataset: its test part when it names one, otherwise every image.

    ``tta`` (test-time views) and ``fusion`` override the run's settings for this evaluation.
    """
    from graft.ensemble import load_model

    model = load_model(run_dir)
    overrides = {"predict.tta": list(tta) if tta is not None else None, "predict.fusion": fusion}
    model.config = model.config.updated(overrides)
    config = model.config
    manifest = load_manifest(data, config.data.format, config.data.columns).with_default_view(config.data.default_view)
    part = manifest.where("test") if manifest.where("test").records else manifest
    kept, probabilities, failures = model.image_probabilities(part, progress)
    results = score_probabilities(probabilities, kept.records, model.labels, config.predict.fusion)
    results |= {
        "evaluated_on": "test" if kept.records and kept.records[0].split == "test" else "all",
        "images_per_second": model.measure_throughput(kept),
        "skipped_images": len(failures),
        "tta": list(config.predict.tta),
        "data": str(data),
    }
    results["ms_per_observation"] = ms_per_observation(results)
    return results


def ms_per_observation(results: dict[str, Any]) -> float:
    """Milliseconds to answer one observation at the measured images/s (an observation has several images)."""
    images_per_observation = results["n_images"] / max(1, results["n_observations"])
    return round(1000 * images_per_observation / results["images_per_second"], 1)


@contextmanager
def _progress_bar(description: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report
