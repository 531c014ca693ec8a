"""Accuracy of graft's heads against simple baselines on the same features, splits and scoring (mean ± std over
seeds). The seed moves the 3:1 split (data without a test part), the folds and the heads.

Rows: logistic regression and k-NN (scikit-learn on the training part's standardised / normalised features), the
previous default (MLP, early stopping on the validation split), cross-fitting with one head refit on everything
(``head.bag: false``), cross-fitting not repeated (``head.repeats: 1``), the new default (cross-fitted head choice,
repeated on few-shot data; a chosen MLP is its fold heads averaged), Lite0 and Lite2 features concatenated (repeated
and not), a Lite0 + Lite2 ensemble with out-of-fold weights, and that ensemble with test-time augmentation; the recipe
the README recommends (the default on Lite0 features extracted at 320 px, the size ``bench/resolution.py`` chose out of
fold) on every dataset.
``--backbones`` adds a new-default row per backbone (``mobilenetv2_100``, ``a+b`` concatenations...);
``--train-views K`` a new-default row trained with K cached augmented views per training image; ``--rows`` picks
graft's rows. ``--hold-out users`` evaluates the way a flora app is used: per seed, everything one photographer took of
each species (of those with two or more) is Test and never trained on (data with users: leafsnap-dev's Author).
The table gives each seed's S minus logistic regression's, and the head's seconds against one uncached extraction
pass of the same images; its rows are appended to bench/results/accuracy.csv.

    python bench/accuracy.py [--seeds 3] [--datasets leafsnap-dev flavia seedlings] [--ensemble leafsnap-dev flavia]
                             [--backbones mobilenetv2_100 tf_efficientnet_lite2+mobilenetv2_100] [--train-views 4]
                             [--hold-out users] [--rows default recipe]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from graft.config import GraftConfig
from graft.data.manifest import Manifest, load_manifest
from graft.data.splits import hold_out_users
from graft.evaluation.evaluate import evaluate_model
from graft.evaluation.metrics import score_probabilities
from graft.features.backbones import create_backbone
from graft.features.feature_set import FeatureSet
from graft.features.tta import DEFAULT_TTA
from graft.model.classifier import Classifier
from graft.run import evaluation_part, load_model
from graft.training.ensembling import make_ensemble
from graft.training.fit import fit, labelled_features, prepare_manifest
from record import record

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATA = {"leafsnap-dev": SHARED / "leafsnap-dev", "flavia": SHARED / "flavia",
        "seedlings": SHARED / "seedlings" / "split.csv"}
KEYS = ("S", "top1", "top5")
RECIPE = {"backbone.image_size": 320}


def cached_parts(data: Path, config: GraftConfig) -> tuple[FeatureSet, Manifest, Manifest, list[str]]:
    """The data's cached features, the part a run trains on, the part it is evaluated on, and the training labels."""
    manifest, _ = prepare_manifest(data, config)
    classifier = Classifier(create_backbone(**config.backbone.model_dump()), None, [], config)
    feature_set = classifier.manifest_features(manifest)
    manifest = manifest.without(feature_set.failures)
    evaluated = evaluation_part(manifest)
    training = manifest.without([r.path for r in evaluated])
    return feature_set, training, evaluated, sorted({r.label for r in training})


def sklearn_baselines(data: Path, config: GraftConfig) -> dict[str, dict]:
    """Logistic regression (C=1, standardised) and 5-NN (cosine, distance-weighted) on the training part.

    graft's rank rule resolves ties in the true label's favour; k-NN gives most classes probability 0, so its classes
    without votes are ordered by their nearest member's similarity instead of tying."""
    feature_set, training, evaluated, labels = cached_parts(data, config)
    x, y = labelled_features(training, feature_set, labels)
    x_eval = feature_set.rows_for([r.path for r in evaluated])
    rows = {}
    for name, model, prepare in (
        ("logistic regression C=1", LogisticRegression(C=1.0, max_iter=3000), StandardScaler().fit(x).transform),
        ("k-NN k=5 cosine", KNeighborsClassifier(5, metric="cosine", weights="distance"), lambda a: a),
    ):
        start = time.perf_counter()
        model.fit(prepare(x), y)
        probabilities = np.zeros((len(x_eval), len(labels)))
        probabilities[:, model.classes_] = model.predict_proba(prepare(x_eval))
        if name.startswith("k-NN"):  # rank the classes without votes too (by their nearest member), or they all tie
            probabilities += 1e-6 * nearest_member_similarity(x, y, x_eval, len(labels))
        rows[name] = score_probabilities(probabilities, evaluated.records, labels, config.predict.fusion) | {
            "seconds": time.perf_counter() - start}
    return rows


def nearest_member_similarity(x: np.ndarray, y: np.ndarray, x_eval: np.ndarray, n_classes: int) -> np.ndarray:
    unit, unit_eval = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (x, x_eval))
    similarity = unit_eval @ unit.T
    return np.stack([similarity[:, y == c].max(1) if (y == c).any() else np.full(len(x_eval), -1.0)
                     for c in range(n_classes)], axis=1) + 1.0


ROWS = {  # --rows names: (folder, row label, overrides)
    "previous": ("previous", "previous default (MLP, validation early stopping)", {"head.selection": "holdout"}),
    "refit": ("refit", "cross-fitted, one head refit on everything (head.bag false)", {"head.bag": False}),
    "once": ("once", "cross-fitted, not repeated (head.repeats 1)", {"head.repeats": 1}),
    "best": ("best", "the best out-of-fold S, no noise rule (head.within_se 0)", {"head.within_se": 0.0}),
    "default": ("new", "default (cross-fitted head)", {}),
    "recipe": ("recipe", "the recipe: Lite0 at 320 px (cross-fitted head)", RECIPE),
}


def graft_rows(data, config: GraftConfig, work: Path, ensemble: bool, backbones: list[str],
               train_views: int = 0, names: tuple[str, ...] = tuple(ROWS)) -> dict[str, dict]:
    rows = {}
    for key in names:
        folder, name, overrides = ROWS[key]
        results = fit(data, work / folder, config.updated(overrides)).results
        rows[name] = results | {"seconds": results["head_seconds"], "chosen": results["head"]}
    if ensemble:
        both = config.updated({"backbone.name": "tf_efficientnet_lite0+tf_efficientnet_lite2"})
        results = fit(data, work / "concat", both).results
        rows["Lite0+Lite2 concatenated (cross-fitted head)"] = results | {"seconds": results["head_seconds"],
                                                                          "chosen": results["head"]}
        results = fit(data, work / "concat-once", both.updated({"head.repeats": 1})).results
        rows["Lite0+Lite2 concatenated, not repeated"] = results | {"seconds": results["head_seconds"],
                                                                    "chosen": results["head"]}
        lite2 = work / "lite2"
        fit(data, lite2, config.updated({"backbone.name": "tf_efficientnet_lite2"}))
        results = make_ensemble([work / "new", lite2], work / "ens", fit_weights=True)
        rows["ensemble Lite0 + Lite2 (out-of-fold weights)"] = results | {"seconds": float("nan")}
        part = evaluation_part(prepare_manifest(data, config)[0])
        tta, _, _ = evaluate_model(load_model(work / "ens"), part, tta=DEFAULT_TTA)
        rows["ensemble + TTA"] = tta | {"seconds": float("nan")}
    if train_views:
        results = fit(data, work / "train-views", config.updated({"features.train_views": train_views})).results
        rows[f"default + {train_views} augmented views per training image"] = results | {
            "seconds": results["head_seconds"], "chosen": results["head"]}
    for i, backbone in enumerate(backbones):
        results = fit(data, work / f"backbone-{i}", config.updated({"backbone.name": backbone})).results
        rows[f"{backbone} (cross-fitted head)"] = results | {"seconds": results["head_seconds"], "chosen": results["head"]}
    return rows


def user_split(data: Path, seed: int) -> Manifest | None:
    """The data with deployment's Test: one photographer per label held out (its other splits dropped); None when
    the data has no labels with two photographers."""
    manifest = load_manifest(data)
    cleared = Manifest([dataclasses.replace(r, split="") for r in manifest.records], manifest.source,
                       manifest.problems, manifest.schema)
    held = hold_out_users(cleared, seed)
    return held if held.where("test").records else None


def extraction_pass(data, config: GraftConfig) -> float:
    """Seconds of one uncached extraction of every image of ``data`` (what the head's seconds are compared with)."""
    manifest, _ = prepare_manifest(data, config)
    with tempfile.TemporaryDirectory() as cache:
        settings = config.updated({"features.cache_dir": cache})
        classifier = Classifier(create_backbone(**settings.backbone.model_dump()), None, [], settings)
        return classifier.manifest_features(manifest).seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="*", default=list(DATA))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--ensemble", nargs="*", default=["leafsnap-dev", "flavia"],
                        help="datasets that also get the Lite0+Lite2 rows (Lite2 extraction is slow on seedlings)")
    parser.add_argument("--backbones", nargs="*", default=[], help="more backbones, one default row each")
    parser.add_argument("--train-views", type=int, default=0, help="a row with this many augmented views")
    parser.add_argument("--hold-out", choices=["own", "users"], default="own",
                        help="users: one photographer per label held out as Test (data with users; the rest skip)")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS), help="graft rows to run")
    args = parser.parse_args()
    for dataset in args.datasets:
        per_row: dict[str, list[dict]] = {}
        base = GraftConfig().updated({"features.cache_dir": args.cache_dir})
        for seed in range(args.seeds):
            config = base.updated({"data.seed": seed, "head.seed": seed})
            data = DATA[dataset] if args.hold_out == "own" else user_split(DATA[dataset], seed)
            if data is None:
                print(f"{dataset}: no label has two photographers; --hold-out users skips it")
                break
            with tempfile.TemporaryDirectory() as work:
                rows = sklearn_baselines(data, config) | graft_rows(
                    data, config, Path(work), dataset in args.ensemble, args.backbones, args.train_views,
                    tuple(args.rows))
            for name, results in rows.items():
                per_row.setdefault(name, []).append(results)
            print(f"{dataset} seed {seed}: " + ", ".join(f"{n.split(' (')[0]} S={r['S']:.3f}" for n, r in rows.items()),
                  flush=True)
        if per_row:
            extraction = {size: extraction_pass(DATA[dataset], base.updated({"backbone.image_size": size}))
                          for size in (None, 320)}
            report(dataset, per_row, args.hold_out, extraction)


def report(dataset: str, per_row: dict[str, list[dict]], hold_out: str, extraction: dict) -> None:
    """The table (mean ± std over seeds; each seed's S minus logistic regression's), and its rows appended to
    bench/results/accuracy.csv."""
    first = next(iter(per_row.values()))
    regime = "one photographer per label held out as Test" if hold_out == "users" else "the data's own split"
    print(f"\n{dataset} ({regime}): evaluated on {first[0].get('evaluated_on', 'the evaluation part')} "
          f"({first[0]['n_observations']} observations), mean ± std over {len(first)} seeds; one uncached extraction "
          f"pass {extraction[None]:.1f} s at the weights' size, {extraction[320]:.1f} s at 320 px\n")
    print("| model | S | Top-1 | Top-5 | S - LR per seed | head s | head / extraction | chosen |")
    print("|---|---|---|---|---|---|---|---|")
    baseline = [r["S"] for r in per_row["logistic regression C=1"]]
    csv_rows = []
    for name, runs in per_row.items():
        cells = [f"{np.mean([r[k] for r in runs]):.3f} ± {np.std([r[k] for r in runs]):.3f}" for k in KEYS]
        margins = " ".join(f"{r['S'] - b:+.3f}" for r, b in zip(runs, baseline, strict=True))
        chosen = ", ".join(sorted({str(r.get("chosen", "")) for r in runs})) or "-"
        seconds = [r["seconds"] for r in runs if np.isfinite(r["seconds"])]
        spent = float(np.mean(seconds)) if seconds else float("nan")
        pass_seconds = extraction[320] if "320" in name else extraction[None]
        print(f"| {name} | {' | '.join(cells)} | {margins} | {spent:.1f} | {spent / pass_seconds:.2f} | {chosen} |")
        csv_rows += [{"dataset": dataset, "split": hold_out, "model": name, "seed": seed, "S": round(r["S"], 4),
                      "top1": round(r["top1"], 4), "top5": round(r["top5"], 4), "head_seconds": round(r["seconds"], 2),
                      "extraction_pass_seconds": round(pass_seconds, 2), "chosen": r.get("chosen", "")}
                     for seed, r in enumerate(runs)]
    record("accuracy", csv_rows)
    print(flush=True)


if __name__ == "__main__":
    main()
