"""Ensembles: the per-image probabilities of several runs (other backbones, other seeds) averaged, optionally with
weights - given, or fitted on the shared validation split. An ensemble directory is a run like any other:
``graft evaluate``, ``graft predict`` and ``load_model`` accept it."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graft.config import GraftConfig
from graft.errors import ConfigError, RunError
from graft.files import atomic_write_text
from graft.manifest import Manifest, read_csv
from graft.pipeline import Classifier, Identification, identify_observation, load_run, score_probabilities
from graft.report import results_table, write_results_json

ENSEMBLE_FILE = "ensemble.json"


@dataclass
class Ensemble:
    members: list[Classifier]
    weights: list[float]
    config: GraftConfig  # prediction settings of the ensemble (fusion, test-time views, reject threshold)

    @property
    def labels(self) -> list[str]:
        return self.members[0].labels

    def image_probabilities(self, part: Manifest, progress: bool = False) -> tuple[Manifest, np.ndarray, dict]:
        failures: dict = {}
        per_member = []
        for member in self.members:
            member.config = member.config.updated({"predict.tta": self.config.predict.tta})
            kept, probabilities, failed = member.image_probabilities(part, progress)
            failures |= failed
            per_member.append(dict(zip((r.path for r in kept), probabilities, strict=True)))
        kept = part.without(failures)
        if not kept.records:
            return kept, np.zeros((0, len(self.labels))), failures
        total = sum(w * np.stack([rows[r.path] for r in kept]) for w, rows in zip(self.weights, per_member, strict=True))
        return kept, total / sum(self.weights), failures

    def measure_throughput(self, part: Manifest) -> float:
        """Every member runs on every image: the ensemble's rate is the harmonic combination of theirs."""
        return round(1.0 / sum(1.0 / member.measure_throughput(part) for member in self.members), 2)

    def identify(self, paths, views=None, fusion=None, top=None) -> Identification:
        return identify_observation(self, paths, views, fusion, top)


def load_model(run_dir: str | Path) -> Classifier | Ensemble:
    """A run directory or an ensemble directory, whichever ``run_dir`` is."""
    run_dir = Path(run_dir)
    if not (run_dir / ENSEMBLE_FILE).is_file():
        return load_run(run_dir)
    spec = json.loads((run_dir / ENSEMBLE_FILE).read_text())
    members = [load_run(path) for path in spec["runs"]]
    return Ensemble(members, spec["weights"], GraftConfig.from_yaml(run_dir / "config.yaml"))


def make_ensemble(
    runs: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None, fit_weights: bool = False
) -> dict:
    """Write an ensemble of ``runs`` to ``out``, score it and its members on their evaluation split, return results."""
    runs, out = [Path(r).resolve() for r in runs], Path(out)
    members = [load_run(run) for run in runs]
    for run, member in zip(runs[1:], members[1:], strict=True):
        if member.labels != members[0].labels:
            raise RunError(f"{run}: its labels differ from {runs[0]}'s; an ensemble needs runs of the same classes")
    if weights is not None and len(weights) != len(runs):
        raise ConfigError(f"{len(weights)} weights for {len(runs)} runs; give one per run")
    manifest = read_csv(runs[0] / "manifest.csv")
    ensemble = Ensemble(members, list(weights or [1.0] * len(runs)), members[0].config)
    if fit_weights:
        ensemble.weights = _fit_weights(ensemble, manifest.where("val"))
    part = manifest.where("test") if manifest.where("test").records else manifest.where("val")
    rows, results = [], {}
    for run, member in zip(runs, members, strict=True):
        kept, probabilities, _ = member.image_probabilities(part)
        rows.append((f"{run.name} ({member.backbone.name})",
                     score_probabilities(probabilities, kept.records, member.labels, member.config.predict.fusion)))
    kept, probabilities, failures = ensemble.image_probabilities(part)
    results = score_probabilities(probabilities, kept.records, ensemble.labels, ensemble.config.predict.fusion)
    results |= {"evaluated_on": "test" if part.records[0].split == "test" else "val", "weights": ensemble.weights,
                "images_per_second": ensemble.measure_throughput(kept), "runs": [str(r) for r in runs],
                "skipped_images": len(failures)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / ENSEMBLE_FILE, json.dumps({"runs": [str(r) for r in runs], "weights": ensemble.weights},
                                                      indent=2) + "\n")
    atomic_write_text(out / "config.yaml", ensemble.config.to_yaml())
    atomic_write_text(out / "labels.json", json.dumps(ensemble.labels, indent=1) + "\n")
    write_results_json(out / "results.json", results)
    table = results_table([*rows, (f"ensemble, weights {[round(w, 2) for w in ensemble.weights]}", results)])
    atomic_write_text(out / "results.md", f"# {out.name}\n\nEvaluated on the {results['evaluated_on']} split.\n\n{table}")
    return results


def _fit_weights(ensemble: Ensemble, val: Manifest, step: float = 0.1) -> list[float]:
    """Grid search over the weight simplex for the highest validation S (members' probabilities computed once)."""
    if not val.records:
        raise RunError("no validation split to fit weights on")
    per_member = []
    for member in ensemble.members:
        kept, probabilities, _ = member.image_probabilities(val)
        per_member.append(dict(zip((r.path for r in kept), probabilities, strict=True)))
    kept = [r for r in val if all(r.path in rows for rows in per_member)]
    stacks = [np.stack([rows[r.path] for r in kept]) for rows in per_member]
    grid = np.round(np.arange(0, 1 + 1e-9, step), 6)
    best, best_score = None, -1.0
    for combination in itertools.product(grid, repeat=len(stacks)):
        if abs(sum(combination) - 1.0) > 1e-6:
            continue
        mixed = sum(w * s for w, s in zip(combination, stacks, strict=True))
        value = score_probabilities(mixed, kept, ensemble.labels, ensemble.config.predict.fusion)["S"]
        if value > best_score + 1e-12:
            best, best_score = list(combination), value
    return [float(w) for w in best]
