"""Scaling out: (1) the head's peak memory on a synthetic feature store of 20k vs 200k rows, features streamed from a
row file vs held in memory, each in a fresh process; (2) Ray extraction (1 and 2 actors) against the in-process
extractor on the same images, fresh caches. Side by side in one run; prints the ratios.

    python bench/scale.py [--rows 20000 200000] [--skip-ray] [--data ../shared/datasets/leafsnap-dev] [--images 1200]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import record  # bench/ is on sys.path when run as a script

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "leafsnap-dev"
DIM, CLASSES = 1280, 100


def head_worker(rows: int, streamed: bool, directory: Path) -> dict:
    """Cross-fit and train the final head on ``rows`` synthetic Lite0-sized rows; report peak RSS and seconds."""
    import numpy as np

    from graft.config import HeadConfig
    from graft.data.manifest import ImageRecord
    from graft.rows import RowFile, RowWriter
    from graft.training.crossfit import cross_fit, final_head

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLASSES, DIM)).astype(np.float32)
    labels = rng.integers(0, CLASSES, rows)
    with RowWriter(directory / "features.npy", rows, DIM) as writer:  # written block by block: never all in memory
        for start in range(0, rows, 8192):
            part = labels[start : start + 8192]
            writer.write(start, np.abs(centres[part] * 0.5 + rng.normal(size=(len(part), DIM)).astype(np.float32)))
    features = RowFile(directory / "features.npy")
    features = features if streamed else features.take()
    records = [ImageRecord(Path(f"{i}.jpg"), f"L{labels[i]}", f"o{i}", user=f"u{i % 50}") for i in range(rows)]
    names = [f"L{k}" for k in range(CLASSES)]
    # one setting per family and 3 folds: the memory question does not need the full grid, which takes hours here
    config = HeadConfig(folds=3, c_grid=[0.1], epoch_grid=[3], epochs=3, batch_size=512)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    selection = cross_fit(features, labels, records, names, config, None, "mean", scratch=directory if streamed else None)
    final_head(selection, features, labels, CLASSES, config, None, directory)
    return {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mb": before,
            "seconds": time.perf_counter() - start, "chosen": selection.chosen.name}


def head_rows(sizes: list[int]) -> None:
    results = {}
    for streamed in (True, False):
        for rows in sizes:
            command = [sys.executable, __file__, "--head-worker", str(rows)] + ([] if streamed else ["--in-memory"])
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[(streamed, rows)] = json.loads(output.strip().splitlines()[-1])
    print(f"head (3 folds x linear, prototype, MLP 3 epochs + final head) on {DIM}-d rows, {CLASSES} classes; "
          "peak RSS of a fresh process")
    for streamed in (True, False):
        for rows in sizes:
            found = results[(streamed, rows)]
            print(f"  {'streamed from a row file' if streamed else 'in memory':26s} {rows:>8,} rows: "
                  f"{found['rss_mb']:7.0f} MB peak ({found['rss_before_mb']:.0f} before the head), "
                  f"{found['seconds']:6.1f} s, chose {found['chosen']}")
        low, high = results[(streamed, sizes[0])]["rss_mb"], results[(streamed, sizes[-1])]["rss_mb"]
        print(f"  -> {sizes[-1] // sizes[0]}x the rows: peak RSS x{high / low:.2f}")
    rows = [{"features": "streamed" if streamed else "in memory", "rows": n, "peak_rss_mb": round(found["rss_mb"]),
             "rss_before_head_mb": round(found["rss_before_mb"]), "seconds": round(found["seconds"], 1),
             "chosen": found["chosen"]} for (streamed, n), found in results.items()]
    print(f"rows appended to {record('scale_head', rows)}")


def ray_rows(data: Path, images: int) -> None:
    import ray

    from graft.config import BackboneConfig, FeatureConfig
    from graft.data.images import is_image_path
    from graft.features.backbones import create_backbone
    from graft.features.distributed import extract_on_ray
    from graft.features.extract import extract_features
    from graft.files import file_digest

    candidates = sorted(p for p in data.rglob("*") if is_image_path(p))
    paths = list({file_digest(p): p for p in candidates}.values())[:images]
    backbone = BackboneConfig()
    rates = {}
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        extract_features(paths, create_backbone(**backbone.model_dump()), FeatureConfig(cache_dir=f"{cache}/one"))
        rates["in-process extractor (decode threads + ONNX Runtime)"] = len(paths) / (time.perf_counter() - start)
        ray.init(include_dashboard=False, log_to_driver=False)
        for actors, threads in ((1, 2), (2, 1)):
            result = extract_on_ray(paths, backbone, FeatureConfig(cache_dir=f"{cache}/ray{actors}"), actors=actors,
                                    threads_per_actor=threads)
            rates[f"Ray, {actors} actor(s) x {threads} thread(s)"] = len(paths) / result.seconds
            ray.shutdown()
            ray.init(include_dashboard=False, log_to_driver=False)
    base = next(iter(rates.values()))
    print(f"{len(paths)} images from {data.name}, Lite0; Ray times include its start-up and actor creation")
    for name, rate in rates.items():
        print(f"  {name:55s} {rate:7.1f} img/s   x{rate / base:.2f}")
    rows = [{"extractor": name, "images": len(paths), "img_per_s": round(rate, 1), "vs_in_process": round(rate / base, 3)}
            for name, rate in rates.items()]
    print(f"rows appended to {record('scale_ray', rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--head-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.head_worker:
        with tempfile.TemporaryDirectory() as directory:
            print(json.dumps(head_worker(args.head_worker, not args.in_memory, Path(directory))))
        return
    head_rows(args.rows)
    if not args.skip_ray:
        ray_rows(args.data, args.images)


if __name__ == "__main__":
    main()
