"""The MLP's out-of-fold S at every epoch count beside the other families', per dataset and seed: the evidence for
``head.epoch_grid`` and ``head.grid_min_gain``, and what a grid that starts earlier would save or lose.

Per dataset and seed, graft's own folds (and repeats) score the linear and prototype families as cross-fitting does,
and the MLP's fold heads at every epoch 1..``--epochs``: the grid's early stop is off, so every count is scored. A
count's heads are the same whatever grid is used (scoring draws no random numbers), so each grid in ``--grids`` can
be replayed on the same curve: where its stop rule stops (a count that does not beat the best before it by more than
``head.grid_min_gain`` is a tie, and a tie stops the grid while the MLP trails the other families), the count it
keeps, and the family cross-fitting then chooses. Nothing here looks at a test part.

    python bench/epochs.py [--datasets elpv flavia seedlings leafsnap-dev] [--seeds 3] [--epochs 20]
                           [--grids 5,10,15,20 3,5,10,15,20 2,5,10,15,20] [--image-size 320] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from accuracy import DATA, cached_parts

from graft.config import GraftConfig, HeadConfig
from graft.data.demo import elpv_manifest
from graft.data.manifest import Manifest
from graft.evaluation.metrics import score_logits
from graft.training.crossfit import cross_fit, fold_of, repeat_seed, repeats_for
from graft.training.families import Candidate, out_of_fold
from graft.training.fit import labelled_features
from record import record


def replay(grid: list[int], curve: dict[int, float], min_gain: float, leader: float) -> tuple[int, int]:
    """(the count a grid keeps, the count it trains to) under the fold heads' stop rule, on a scored curve;
    ``leader``: the other families' best S."""
    best = grid[0]
    for epochs in grid[1:]:
        if curve[epochs] > curve[best] + min_gain:
            best = epochs
        elif curve[best] <= leader:
            return best, epochs
    return best, grid[-1]


def curves(data, config: GraftConfig, epochs: int) -> tuple[dict[int, float], dict[str, float]]:
    """The MLP's out-of-fold S per epoch count, and the best S of the linear and prototype families."""
    feature_set, training, _, labels = cached_parts(data, config)
    records = [r for r in training if r.label in set(labels)]
    x, y = labelled_features(Manifest(records), feature_set, labels)
    others = {kind: max(row["S"] for row in cross_fit(x, y, records, labels, config.head.model_copy(
        update={"kind": kind}), None, "mean").rows) for kind in ("linear", "prototype")}
    head = config.head.model_copy(update={"kind": "mlp", "epochs": epochs})
    repeats = repeats_for(head, len(y) / len(np.unique(y)), x)
    folds = np.stack([fold_of(records, head.folds, repeat_seed(head.seed, r)) for r in range(repeats)])
    grid = [Candidate("mlp", float(e)) for e in range(1, epochs + 1)]
    with tempfile.TemporaryDirectory() as logs:  # no score: every count is kept and training runs to the end
        found = out_of_fold(grid, x, y, folds, len(labels), head, None, Path(logs))
    return {int(c.value): score_logits(z, records, labels, "mean")["S"] for c, z in found.logits.items()}, others


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=["elpv", "flavia", "seedlings", "leafsnap-dev"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--grids", nargs="*", default=["5,10,15,20", "3,5,10,15,20", "2,5,10,15,20"])
    parser.add_argument("--image-size", type=int, default=None, help="backbone.image_size (the recipe: 320)")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    grids = {name: [int(e) for e in name.split(",")] for name in args.grids}
    min_gain = HeadConfig().grid_min_gain
    rows = []
    for dataset in args.datasets:
        runs = []
        for seed in range(args.seeds):
            config = GraftConfig().updated({"data.seed": seed, "head.seed": seed, "features.cache_dir": args.cache_dir,
                                            "backbone.image_size": args.image_size})
            runs.append(curves(elpv_manifest() if dataset == "elpv" else DATA[dataset], config, args.epochs))
            curve, others = runs[-1]
            print(f"{dataset} seed {seed}: linear {others['linear']:.4f}, prototype {others['prototype']:.4f}, mlp "
                  + " ".join(f"{e}:{s:.4f}" for e, s in curve.items()), flush=True)
            rows += [{"dataset": dataset, "image_size": args.image_size or "own", "seed": seed, "head": family,
                      "epochs": "", "out_of_fold_S": value} for family, value in others.items()]
            rows += [{"dataset": dataset, "image_size": args.image_size or "own", "seed": seed, "head": "mlp",
                      "epochs": epochs, "out_of_fold_S": value} for epochs, value in curve.items()]
        print(f"\n{dataset}, mean ± std over {args.seeds} seeds: linear {np.mean([o['linear'] for _, o in runs]):.4f}, "
              f"prototype {np.mean([o['prototype'] for _, o in runs]):.4f}\n\n| MLP epochs | out-of-fold S |\n|---|---|")
        for epochs in range(1, args.epochs + 1):
            values = [curve[epochs] for curve, _ in runs]
            print(f"| {epochs} | {np.mean(values):.4f} ± {np.std(values):.4f} |")
        print("\n| grid | MLP kept (epochs) | MLP trained to | chosen family |\n|---|---|---|---|")
        for name, grid in grids.items():
            replays = [replay(grid, curve, min_gain, max(others.values())) for curve, others in runs]
            chosen = ["mlp" if curve[kept] > max(others.values()) else max(others, key=others.get)
                      for (kept, _), (curve, others) in zip(replays, runs, strict=True)]
            print(f"| {name} | {', '.join(str(kept) for kept, _ in replays)} | "
                  f"{', '.join(str(trained) for _, trained in replays)} | {', '.join(chosen)} |")
        print(flush=True)
    print(f"rows appended to {record('epochs', rows)}")


if __name__ == "__main__":
    main()
