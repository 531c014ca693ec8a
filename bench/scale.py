"""Scaling out extraction: Ray (1 and 2 actors) against the in-process extractor on the same images, fresh caches,
side by side in one run; prints img/s and the ratios.

    python bench/scale.py [--data ../shared/datasets/leafsnap-dev] [--images 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray

from graft.config import BackboneConfig, FeatureConfig
from graft.data.images import is_image_path
from graft.features.backbones import create_backbone
from graft.features.distributed import extract_on_ray
from graft.features.extract import extract_features
from graft.files import file_digest

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "leafsnap-dev"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=1200)
    args = parser.parse_args()
    candidates = sorted(p for p in args.data.rglob("*") if is_image_path(p))
    paths = list({file_digest(p): p for p in candidates}.values())[: args.images]
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
    print(f"{len(paths)} images from {args.data.name}, Lite0; Ray times include its start-up and actor creation")
    for name, rate in rates.items():
        print(f"{name:55s} {rate:7.1f} img/s   x{rate / base:.2f}")


if __name__ == "__main__":
    main()
