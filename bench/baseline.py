"""graft's default head vs a plain logistic regression on the same Lite0 features, splits and scoring.

leafsnap-dev has its own Train/Test: graft refits on train+val (its default), so the baseline trains on train+val
too. flavia has no test part: both train on train and are scored on the 3:1 validation split.

    python bench/baseline.py [--seeds 3] [DATA ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from graft.config import GraftConfig
from graft.evaluation.evaluate import score
from graft.model.classifier import Classifier
from graft.run import load_run, results_table
from graft.training.fit import fit, labelled_features, prepare_manifest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


class LogisticHead(nn.Module):
    """Wrap a fitted scikit-learn model so graft's own scoring (fusion, S, top-k) applies unchanged."""

    def __init__(self, scaler, model, num_classes: int):
        super().__init__()
        self.scaler, self.model, self.num_classes = scaler, model, num_classes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        log_probabilities = np.full((len(features), self.num_classes), -1e9)
        log_probabilities[:, self.model.classes_] = self.model.predict_log_proba(self.scaler.transform(features.numpy()))
        return torch.tensor(log_probabilities, dtype=torch.float32)


def logistic_baseline(data: Path, run_dir: Path) -> dict:
    classifier = load_run(run_dir)
    manifest, _ = prepare_manifest(data, classifier.config)
    feature_set = classifier.manifest_features(manifest)
    manifest = manifest.without(feature_set.failures)
    has_test = bool(manifest.where("test").records)
    parts = [labelled_features(manifest.where("train"), feature_set, classifier.labels)]
    if has_test:
        parts.append(labelled_features(manifest.where("val"), feature_set, classifier.labels))
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=1.0, max_iter=3000).fit(scaler.transform(x), y)
    baseline = Classifier(classifier.backbone, LogisticHead(scaler, model, len(classifier.labels)),
                          classifier.labels, classifier.config)
    evaluated = manifest.where("test" if has_test else "val")
    return score(baseline, evaluated.records, feature_set.rows_for([r.path for r in evaluated]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="*", type=Path, default=[SHARED / "leafsnap-dev", SHARED / "flavia"])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for data in args.data:
            runs = []
            for seed in range(args.seeds):
                config = GraftConfig().updated({"head.seed": seed})
                runs.append(fit(data, Path(work) / f"{data.name}-{seed}", config).results)
                rows.append((f"{data.name}: graft head, seed {seed}", runs[-1]))
            mean = {key: float(np.mean([r[key] for r in runs])) for key in ("S", "top1", "top3", "top5", "image_top1")}
            rows.append((f"{data.name}: graft head, mean of {args.seeds}", mean | {"n_images": runs[0]["n_images"]}))
            baseline = logistic_baseline(data, Path(work) / f"{data.name}-0")
            rows.append((f"{data.name}: logistic regression", baseline))
            print(f"{data.name}: evaluated on {runs[0]['evaluated_on']}, {runs[0]['n_observations']} observations",
                  flush=True)
    print(results_table(rows))


if __name__ == "__main__":
    main()
