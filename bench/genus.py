"""Genus-aware ranking, measured and not taken: does ranking a species higher when its genus is likely help S?

For each seed a run is fitted as ``graft fit`` fits it (cross-fitting, the chosen head); then its out-of-fold logits
(other photographers' photos of a species, each predicted by a head that never saw its observation) and its
evaluation part's logits are re-ranked by

    score(s) = log p(s) + weight * log( mean over the species s' of s's genus of p(s') )

with p the softmax of the head's logits (temperature 1: the head's own ranking) and the genus's mean (not its sum, which
would favour genera with many species). Weight 0 is graft's ranking; a large weight ranks genera first, then species
within them. Both parts are scored with the LifeCLEF S; the weight is what out of fold would choose. Needs data whose
labels have genera (LifeCLEF ``Genus``, binomial labels or ``--taxonomy``).

    python bench/genus.py [--datasets leafsnap-dev] [--seeds 3] [--image-size 320] [--weights 0 0.5 1 2 4 16]
                          [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from accuracy import DATA

from graft.config import GraftConfig
from graft.data.manifest import read_csv
from graft.evaluation.metrics import score_probabilities
from graft.model.fusion import softmax
from graft.model.head import predict_logits
from graft.run import RunFiles, evaluation_part, load_model, read_out_of_fold, read_run_taxonomy
from graft.training.fit import fit
from record import record


def genus_matrix(labels: list[str], genus_of: dict[str, str]) -> np.ndarray:
    """``[species, genera]`` with each row one-hot on the species' genus, each column divided by its species count."""
    genera = sorted(set(genus_of[label] for label in labels))
    member = np.zeros((len(labels), len(genera)))
    member[np.arange(len(labels)), [genera.index(genus_of[label]) for label in labels]] = 1.0
    return member / member.sum(axis=0)


def reranked(logits: np.ndarray, mean_of_genus: np.ndarray, weight: float) -> np.ndarray:
    """Scores whose per-image order is the genus-aware ranking (a softmax keeps them probabilities for fusion)."""
    log_p = np.log(np.clip(softmax(logits), 1e-12, None))
    log_genus = np.log(np.clip(np.exp(log_p) @ mean_of_genus, 1e-12, None))
    return softmax(log_p + weight * log_genus @ (mean_of_genus > 0).T)


def run_logits(run: Path) -> tuple[list, np.ndarray, list, np.ndarray, list[str], dict[str, str]]:
    """(out-of-fold records, their logits, evaluation records, their logits, labels, genus per label) of a run."""
    files = RunFiles(run)
    model = load_model(run)
    manifest = read_csv(files.manifest)
    paths, oof_logits = read_out_of_fold(run)
    by_path = {str(r.path.resolve()): r for r in manifest}
    evaluated = evaluation_part(manifest)
    feature_set = model.manifest_features(evaluated, tta=())
    evaluated = evaluated.without(feature_set.failures)
    eval_logits = predict_logits(model.head, feature_set.rows_for([r.path for r in evaluated]))
    taxonomy = read_run_taxonomy(files)
    return ([by_path[str(p)] for p in paths], oof_logits, evaluated.records, eval_logits, model.labels,
            {label: taxonomy.of(label).genus for label in model.labels})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=["leafsnap-dev"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=None, help="backbone.image_size (the recipe: 320)")
    parser.add_argument("--weights", type=float, nargs="*", default=[0, 0.5, 1, 2, 4, 16])
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        scores = {part: {w: [] for w in args.weights} for part in ("out of fold", "evaluation")}
        for seed in range(args.seeds):
            config = GraftConfig().updated({"data.seed": seed, "head.seed": seed, "features.cache_dir": args.cache_dir,
                                            "backbone.image_size": args.image_size})
            with tempfile.TemporaryDirectory() as work:
                fit(DATA[dataset], Path(work) / "run", config)
                oof_records, oof_logits, eval_records, eval_logits, labels, genus_of = run_logits(Path(work) / "run")
            if "" in genus_of.values():
                raise SystemExit(f"{dataset}: {sum(g == '' for g in genus_of.values())} labels have no genus")
            mean_of_genus = genus_matrix(labels, genus_of)
            for part, records, logits in (("out of fold", oof_records, oof_logits),
                                          ("evaluation", eval_records, eval_logits)):
                for weight in args.weights:
                    probabilities = reranked(logits, mean_of_genus, weight)
                    scores[part][weight].append(score_probabilities(probabilities, records, labels, "mean")["S"])
                    rows.append({"dataset": dataset, "image_size": args.image_size or "own", "seed": seed,
                                 "part": part, "genus_weight": weight, "S": scores[part][weight][-1]})
            print(f"{dataset} seed {seed}: " + "; ".join(
                f"{part} " + " ".join(f"{w:g}:{s[-1]:.4f}" for w, s in by_weight.items())
                for part, by_weight in scores.items()), flush=True)
        print(f"\n{dataset} ({mean_of_genus.shape[1]} genera, {len(labels)} species), mean ± std over {args.seeds} "
              "seeds\n\n| genus weight | out-of-fold S | evaluation S |\n|---|---|---|")
        for weight in args.weights:
            print(f"| {weight:g} | " + " | ".join(f"{np.mean(scores[part][weight]):.4f} ± "
                                                  f"{np.std(scores[part][weight]):.4f}" for part in scores) + " |")
        print(flush=True)
    print(f"rows appended to {record('genus', rows)}")


if __name__ == "__main__":
    main()
