"""Does the bag of cross-fitting's K fold heads beat one head refit on everything? Nested cross-fitting on the
training part only (a test split is never read): outer folds hold out observations; inside each outer-training part
graft's own cross-fitting chooses the setting (``cross_fit``), then ``final_head`` builds the final head twice, with
``head.bag`` on and off, and both predict the held-out outer fold. Mean ± std of out-of-outer-fold S over seeds.
Only the MLP is bagged (the linear head's fold heads, averaged, moved mean S by 0.003 at most); ``--kinds auto`` measures
the default, where the two differ only when the MLP is chosen.

    python bench/bagging.py [--datasets leafsnap-dev seedlings flavia] [--kinds mlp auto] [--seeds 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from accuracy import DATA, cached_parts  # bench/ is on sys.path when run as a script

from graft.config import GraftConfig
from graft.evaluation.metrics import score_logits
from graft.model.head import predict_logits
from graft.training.crossfit import cross_fit, final_head, fold_of
from graft.training.fit import labelled_features
from record import record


def training_features(data: Path, config: GraftConfig):
    """Cached features, labels and records of the part of the data a run trains on (never its evaluation part)."""
    feature_set, training, _, labels = cached_parts(data, config)
    x, y = labelled_features(training, feature_set, labels)
    return x, y, training.records, labels


def nested(x, y, records, labels, config: GraftConfig, outer_folds: int = 5) -> dict[str, float]:
    """Out-of-outer-fold S of the final head with and without the bag (the same inner choice for both)."""
    outer = fold_of(records, outer_folds, 100 + config.head.seed)
    logits = {bag: np.zeros((len(y), len(labels)), np.float32) for bag in (True, False)}
    for k in range(outer.max() + 1):
        train, held = np.flatnonzero(outer != k), np.flatnonzero(outer == k)
        part = [records[i] for i in train]
        selection = cross_fit(x[train], y[train], part, labels, config.head, None, "mean")
        for bag in (True, False):
            head_config = config.head.model_copy(update={"bag": bag})
            with tempfile.TemporaryDirectory() as logs:
                head, _, _ = final_head(selection, x[train], y[train], len(labels), head_config, None, Path(logs))
            logits[bag][held] = predict_logits(head, x[held])
    return {("bag" if bag else "refit"): score_logits(z, records, labels, "mean")["S"] for bag, z in logits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=list(DATA))
    parser.add_argument("--kinds", nargs="*", default=["mlp"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    print("| dataset | head | bag of fold heads S | one head refit S |\n|---|---|---|---|")
    rows = []
    for dataset in args.datasets:
        base = GraftConfig().updated({"features.cache_dir": args.cache_dir})
        x, y, records, labels = training_features(DATA[dataset], base)
        for kind in args.kinds:
            runs = [nested(x, y, records, labels, base.updated({"head.kind": kind, "head.seed": seed}))
                    for seed in range(args.seeds)]
            cells = [f"{np.mean([r[k] for r in runs]):.3f} ± {np.std([r[k] for r in runs]):.3f}" for k in ("bag", "refit")]
            print(f"| {dataset} | {kind} | {' | '.join(cells)} |", flush=True)
            rows += [{"dataset": dataset, "head": kind, "seed": seed, "bag_S": r["bag"], "refit_S": r["refit"]}
                     for seed, r in enumerate(runs)]
    print(f"rows appended to {record('bagging', rows)}")


if __name__ == "__main__":
    main()
