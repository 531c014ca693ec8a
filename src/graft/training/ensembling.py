"""``graft ensemble``: several runs (other backbones, other seeds) averaged, with weights given or fitted on the
validation split; written as an ensemble directory that ``evaluate``, ``predict`` and ``serve`` accept like a run."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from graft.data.manifest import ImageRecord, Manifest
from graft.errors import ConfigError, RunError
from graft.evaluation.metrics import score_probabilities
from graft.model.ensemble import Ensemble, combine, weighted_average
from graft.model.fusion import softmax
from graft.run import (
    RunFiles,
    evaluation_part,
    load_run,
    model_out_of_fold,
    read_manifest,
    read_results,
    write_ensemble,
    write_results,
)


def make_ensemble(
    runs: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None, fit_weights: bool = False
) -> dict:
    """Write an ensemble of ``runs`` to ``out``, score it and its members on their evaluation split, return results."""
    runs = [Path(r).resolve() for r in runs]
    members = [load_run(run) for run in runs]
    for run, member in zip(runs[1:], members[1:], strict=True):
        if member.labels != members[0].labels:
            raise RunError(f"{run}: its labels differ from {runs[0]}'s; an ensemble needs runs of the same classes")
    if weights is not None and len(weights) != len(runs):
        raise ConfigError(f"{len(weights)} weights for {len(runs)} runs; give one per run")
    manifest = read_manifest(runs[0])
    ensemble = Ensemble(members, list(weights or [1.0] * len(runs)), members[0].config)
    fitted_on = "given" if weights else "equal"
    if fit_weights:
        stacks, records, fitted_on = _held_out_predictions(runs, ensemble, manifest)
        ensemble.weights = _fit_weights(stacks, records, ensemble)
    part = evaluation_part(manifest)
    fusion = ensemble.config.predict.fusion
    answers = [member.image_probabilities(part) for member in members]  # each member's pass, used twice below
    rows = [(f"{run.name} ({member.backbone.name})", score_probabilities(probabilities, kept.records, member.labels,
                                                                         fusion))
            for run, member, (kept, probabilities, _) in zip(runs, members, answers, strict=True)]
    kept, probabilities, failures = combine(part, answers, ensemble.weights, len(ensemble.labels))
    results = score_probabilities(probabilities, kept.records, ensemble.labels, fusion)
    results |= {"evaluated_on": part.records[0].split, "weights": ensemble.weights, "weights_fitted_on": fitted_on,
                "images_per_second": ensemble.measure_throughput(kept), "runs": [str(r) for r in runs],
                "skipped_images": len(failures)}
    files = RunFiles(out)
    write_ensemble(files, ensemble, runs)
    rows.append((f"ensemble, weights {[round(w, 2) for w in ensemble.weights]}", results))
    write_results(files, results, rows, f"Evaluated on the {results['evaluated_on']} split; weights: {fitted_on}.")
    return results


def _held_out_predictions(runs: list[Path], ensemble: Ensemble,
                          manifest: Manifest) -> tuple[list[np.ndarray], list[ImageRecord], str]:
    """Each member's probabilities on images it never trained on, on the images every member has them for: a
    cross-fitted member's out-of-fold predictions (every training image); any other member's predictions on the
    validation split - a fine-tuned model never trained on it (its out-of-fold file is the head-only model's), a
    ``head.selection: holdout`` head without a refit only chose its epochs on it. With any such member the weights
    are fitted on the validation split, with the cross-fitted members' out-of-fold rows for its images - and only
    when the data has a test part to score the ensemble on: weights fitted on the split that scores them would
    flatter them. A holdout head refit on train + validation has no held-out predictions at all."""
    val, scored_on_val = manifest.where("val"), not manifest.where("test").records
    per_member, own = [], []
    for run, member in zip(runs, ensemble.members, strict=True):
        saved = model_out_of_fold(run)
        if saved is None and not RunFiles(run).serves_finetuned() and read_results(run).get("head_refit_epochs"):
            raise RunError(f"{run}: its head was refit on the validation split (head.selection: holdout), so it has "
                           "no held-out predictions to fit ensemble weights on; give --weights, leave them equal, or "
                           "fit it with cross-fitting (the default)")
        if saved is None and scored_on_val:
            raise RunError(f"{run}: no held-out predictions of its model to fit ensemble weights on (it is fine-tuned "
                           "or a holdout run, and without a test part the validation split is what the ensemble is "
                           "scored on); give --weights, or leave them equal")
        if saved is not None:
            paths, logits = saved
            per_member.append(dict(zip(paths, softmax(logits / member.temperature), strict=True)))
        else:
            kept, probabilities, _ = member.image_probabilities(val)
            per_member.append(dict(zip((r.path for r in kept), probabilities, strict=True)))
        own.append(saved is not None)
    source = manifest if all(own) else val
    what = "out-of-fold predictions" if all(own) else "the validation split" if not any(own) else \
        "the validation split (out-of-fold predictions of the cross-fitted members)"
    records = [r for r in source if all(r.path in rows for rows in per_member)]
    if not records:
        raise RunError("no held-out predictions shared by every member to fit weights on")
    return [np.stack([rows[r.path] for r in records]) for rows in per_member], records, what


def _fit_weights(stacks: list[np.ndarray], kept: list[ImageRecord], ensemble: Ensemble, step: float = 0.1) -> list[float]:
    """Grid search over the weight simplex for the highest S on held-out predictions."""
    grid = np.round(np.arange(0, 1 + 1e-9, step), 6)
    best, best_score = None, -1.0
    for combination in itertools.product(grid, repeat=len(stacks)):
        if abs(sum(combination) - 1.0) > 1e-6:
            continue
        mixed = weighted_average(stacks, combination)
        value = score_probabilities(mixed, kept, ensemble.labels, ensemble.config.predict.fusion)["S"]
        if value > best_score + 1e-12:
            best, best_score = list(combination), value
    return [float(w) for w in best]
