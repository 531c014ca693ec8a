"""Per-view preprocessing: its cost (ms/image per view) and, with --ablation, S and Top-k with and without it.

    python bench/views.py [DATA] [--per-view 20] [--default-view LeafScan]
    python bench/views.py ../shared/datasets/leafsnap-dev --ablation [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from graft.config import GraftConfig, ViewsConfig
from graft.data.images import load_rgb
from graft.data.manifest import load_manifest
from graft.tables import results_table
from graft.training.fit import fit
from graft.views.preprocess import apply, decide
from graft.views.sheet import sample_per_view

sys.path.insert(0, str(Path(__file__).parent))
from record import record

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def cost(data: Path, per_view: int, default_view: str | None) -> None:
    manifest = load_manifest(data).with_default_view(default_view)
    config = ViewsConfig(enabled=True)
    print(f"{data.name}: ms/image, decode alone vs the view's preprocessing (decide + apply), {per_view} per view")
    rows = []
    for view, records in sample_per_view(manifest, per_view).items():
        images, decode = [], time.perf_counter()
        images = [load_rgb(r.path) for r in records]
        decode = (time.perf_counter() - decode) / len(images) * 1000
        start = time.perf_counter()
        decisions = [decide(image, view, config) for image in images]
        for image, decision in zip(images, decisions, strict=True):
            apply(image, decision)
        per_image = (time.perf_counter() - start) / len(images) * 1000
        fallbacks = sum(bool(decision.fallback) for decision in decisions)
        print(f"  {view:10s} decode {decode:6.1f} ms   preprocessing {per_image:6.1f} ms   "
              f"fallbacks {fallbacks}/{len(images)}")
        rows.append({"dataset": data.name, "view": view, "images": len(images), "decode_ms": round(decode, 1),
                     "preprocessing_ms": round(per_image, 1), "fallbacks": fallbacks})
    print(f"rows appended to {record('views_cost', rows)}")


def ablation(data: Path, seeds: int, default_view: str | None) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for enabled in (False, True):
            runs = []
            for seed in range(seeds):
                config = GraftConfig().updated({"views.enabled": enabled, "head.seed": seed,
                                                "data.default_view": default_view})
                runs.append(fit(data, Path(work) / f"{enabled}-{seed}", config).results)
            mean = {key: float(np.mean([r[key] for r in runs])) for key in ("S", "top1", "top3", "top5", "image_top1")}
            name = f"{data.name}: {'with' if enabled else 'without'} per-view preprocessing, mean of {seeds} seeds"
            rows.append((name, mean | {"n_observations": runs[0]["n_observations"], "n_images": runs[0]["n_images"],
                                       "images_per_second": runs[0]["images_per_second"]}))
            if enabled:
                print(f"fallbacks (uncropped): {runs[0]['view_fallbacks']}; extraction {runs[0]['extraction_seconds']} s")
    print(results_table(rows))
    print(f"rows appended to {record('views_ablation', [{'model': name, **values} for name, values in rows])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", type=Path, default=SHARED / "leafsnap-dev")
    parser.add_argument("--per-view", type=int, default=20)
    parser.add_argument("--default-view", default=None)
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    cost(args.data, args.per_view, args.default_view)
    if args.ablation:
        ablation(args.data, args.seeds, args.default_view)


if __name__ == "__main__":
    main()
