"""Organ-aware features, measured and not taken: does standardising each view's (organ's) features apart help S?

On leafsnap-dev one species is photographed as flower, fruit, leaf, bark and branch; the features' largest
differences are between organs, not species. Standardising within each view (its own mean, or its own mean and
std; statistics from the training part) or giving the head the view as a one-hot input would let a linear head
spend itself on species. A probe, not graft's head: scikit-learn's logistic regression on graft's cached features
(power-normalised as graft's heads do), folds grouped by observation as cross-fitting's, scored with the LifeCLEF S
out of fold (three fold seeds) and on the evaluation part.

    python bench/organs.py [--datasets leafsnap-dev] [--image-size 320] [--c 0.1] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
from accuracy import DATA, cached_parts
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from graft.config import GraftConfig
from graft.evaluation.metrics import score_probabilities
from graft.training.fit import labelled_features
from record import record

MODES = ("one standardisation", "per-view centring", "per-view standardisation", "view one-hot")


def prepared(mode: str, train: np.ndarray, train_views: np.ndarray, other: np.ndarray,
             other_views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both parts power-normalised, then per ``mode``; every statistic from ``train``."""
    a, b = (np.sign(x) * np.abs(x) ** 0.5 for x in (train, other))
    if mode.startswith("per-view"):
        for view in np.unique(train_views):
            rows = a[train_views == view]
            mean, std = rows.mean(0), (rows.std(0) + 1e-6 if mode.endswith("standardisation") else 1.0)
            a[train_views == view] = (rows - mean) / std
            b[other_views == view] = (b[other_views == view] - mean) / std
    mean, std = a.mean(0), a.std(0) + 1e-6
    a, b = (a - mean) / std, (b - mean) / std
    if mode == "view one-hot":
        views = np.unique(train_views)
        a, b = (np.hstack([x, 3.0 * (v[:, None] == views[None])]) for x, v in ((a, train_views), (b, other_views)))
    return a, b


def probabilities(mode: str, c: float, x: np.ndarray, y: np.ndarray, views: np.ndarray, x_other: np.ndarray,
                  other_views: np.ndarray, n_labels: int) -> np.ndarray:
    a, b = prepared(mode, x, views, x_other, other_views)
    model = LogisticRegression(C=c, max_iter=3000).fit(a, y)
    out = np.full((len(b), n_labels), 1e-9)
    out[:, model.classes_] = model.predict_proba(b)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=["leafsnap-dev"])
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--c", type=float, nargs="*", default=[0.1])
    parser.add_argument("--fold-seeds", type=int, default=3)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        config = GraftConfig().updated({"features.cache_dir": args.cache_dir, "backbone.image_size": args.image_size})
        features, training, evaluated, labels = cached_parts(DATA[dataset], config)
        x, y = labelled_features(training, features, labels)
        x_eval = features.rows_for([r.path for r in evaluated])
        views, eval_views = (np.array([r.view for r in part]) for part in (training, evaluated))
        groups = [r.observation for r in training]
        print(f"\n{dataset}, Lite0 at {args.image_size} px, training images per view {dict(Counter(views.tolist()))}\n")
        print("| features | C | out-of-fold S | evaluation S | evaluation Top-1 |\n|---|---|---|---|---|")
        for mode in MODES:
            for c in args.c:
                oof = []
                for seed in range(args.fold_seeds):
                    z = np.zeros((len(x), len(labels)))
                    for kept, held in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(x, y, groups):
                        z[held] = probabilities(mode, c, x[kept], y[kept], views[kept], x[held], views[held],
                                                len(labels))
                    oof.append(score_probabilities(z, training.records, labels, "mean")["S"])
                scores = score_probabilities(probabilities(mode, c, x, y, views, x_eval, eval_views, len(labels)),
                                             evaluated.records, labels, "mean")
                print(f"| {mode} | {c:g} | {np.mean(oof):.3f} ± {np.std(oof):.3f} | {scores['S']:.3f} | "
                      f"{scores['top1']:.3f} |", flush=True)
                rows += [{"dataset": dataset, "image_size": args.image_size, "features": mode, "C": c,
                          "fold_seed": seed, "out_of_fold_S": value, "evaluation_S": scores["S"],
                          "evaluation_top1": scores["top1"]} for seed, value in enumerate(oof)]
    print(f"rows appended to {record('organs', rows)}")


if __name__ == "__main__":
    main()
