"""Input resolution of the cached features, chosen out of fold: the default head on features extracted at each size.

ImageNet backbones are trained on random-resized crops, so at test time they see objects smaller than in training
(Touvron et al., "Fixing the train-test resolution discrepancy", 2019), and plant species differ in details (venation,
margins, hairs, bark) that a 224 px centre crop blurs. This bench measures, per size and seed, the cross-fitted
head's out-of-fold S (what a size is chosen by: other people's photos of the species), the evaluation part's S and
Top-1 (reported, never chosen on) and the model's prediction throughput (decode + prepare + forward + head, images/s),
side by side in one process. Features are cached per size (``--cache-dir`` shares them across runs).

``--framings`` does the same for how an image is framed to the square input (``backbone.crop_mode`` and
``crop_pct``, timm's names): ``own`` is the weights' (a centre crop keeping 0.875 of the shorter side, which cuts a
portrait photo's top and bottom), ``center:1`` crops less, ``squash:1`` and ``border:1`` keep the whole image.

    python bench/resolution.py [--datasets leafsnap-dev seedlings] [--sizes 224 256 288 320 384 448]
                               [--backbone tf_efficientnet_lite0] [--seeds 6] [--first-seed 10]
                               [--framings own center:1 squash:1 border:1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from accuracy import DATA

from graft.config import GraftConfig
from graft.training.fit import fit
from record import record  # bench/ is on sys.path when run as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=["leafsnap-dev", "seedlings"])
    parser.add_argument("--sizes", nargs="*", type=int, default=[224, 256, 288, 320, 384, 448])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--first-seed", type=int, default=10, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--repeats", default="1", help="head.repeats (1 measures resolution, not repeats)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--framings", nargs="*", default=["own"], help="MODE[:CROP_PCT] per row, own = the weights'")
    args = parser.parse_args()
    repeats = args.repeats if args.repeats == "auto" else int(args.repeats)
    rows = []
    for dataset in args.datasets:
        print(f"\n{dataset}, {args.backbone}, head.repeats {repeats}, seeds {args.first_seed}-"
              f"{args.first_seed + args.seeds - 1} (mean ± std)\n")
        print("| image size | framing | out-of-fold S | evaluation S | Top-1 | Top-5 | prediction img/s | heads chosen |")
        print("|---|---|---|---|---|---|---|---|")
        best: tuple[float, int, str] = (-1.0, 0, "")
        for size, framing in [(size, framing) for size in args.sizes for framing in args.framings]:
            mode, _, pct = framing.partition(":")
            runs = []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                config = GraftConfig().updated({
                    "data.seed": seed, "head.seed": seed, "head.repeats": repeats, "features.cache_dir": args.cache_dir,
                    "backbone.name": args.backbone, "backbone.image_size": size,
                    "backbone.crop_mode": None if mode == "own" else mode, "backbone.crop_pct": float(pct) if pct else None})
                with tempfile.TemporaryDirectory() as work:
                    runs.append(fit(DATA[dataset], Path(work) / "run", config).results)
            oof = [r["out_of_fold"]["S"] for r in runs]
            best = max(best, (float(np.mean(oof)), size, framing))
            cells = [f"{np.mean(v):.3f} ± {np.std(v):.3f}" for v in (
                oof, [r["S"] for r in runs], [r["top1"] for r in runs], [r["top5"] for r in runs])]
            speed = np.mean([r["images_per_second"] for r in runs])
            chosen = ", ".join(sorted({r["head"].split(" ")[0] for r in runs}))
            print(f"| {size} | {framing} | {' | '.join(cells)} | {speed:.1f} | {chosen} |", flush=True)
            rows += [{"dataset": dataset, "backbone": args.backbone, "image_size": size, "framing": framing,
                      "seed": seed, "out_of_fold_S": r["out_of_fold"]["S"], "S": r["S"], "top1": r["top1"],
                      "top5": r["top5"], "images_per_second": r["images_per_second"], "head": r["head"]}
                     for seed, r in zip(range(args.first_seed, args.first_seed + args.seeds), runs, strict=True)]
        print(f"\nbest out-of-fold S: {best[1]} px, framing {best[2]} ({best[0]:.3f})")
    print(f"rows appended to {record('resolution', rows)}")


if __name__ == "__main__":
    main()
