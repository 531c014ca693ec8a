"""Features from ONNX Runtime vs torch on whole datasets (fresh caches): the largest difference, the smallest cosine
and each engine's extraction time. graft leaves the engine out of the feature-cache key because these agree within
1e-4 (issue 12).

    python bench/engines.py [DATASET ...]      (default: leafsnap-dev flavia from ../shared/datasets)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from graft.config import FeatureConfig
from graft.data.manifest import load_manifest
from graft.features.backbones import create_backbone
from graft.features.extract import extract_features

sys.path.insert(0, str(Path(__file__).parent))
from record import record

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", default=["leafsnap-dev", "flavia"])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    args = parser.parse_args()
    backbone = create_backbone(args.backbone, channels_last=True)
    rows = []
    for name in args.datasets:
        paths = [record.path for record in load_manifest(SHARED / name)]
        features, seconds = {}, {}
        for engine in ("onnx", "torch"):
            with tempfile.TemporaryDirectory() as cache:
                result = extract_features(paths, backbone, FeatureConfig(cache_dir=cache, engine=engine))
                features[engine], seconds[engine] = result.features, result.seconds
        a, b = features["onnx"], features["torch"]
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        print(f"{name}: {len(a)} images, max |onnx - torch| {np.abs(a - b).max():.2e}, min cosine {cosine.min():.8f}; "
              f"extraction onnx {seconds['onnx']:.1f} s, torch {seconds['torch']:.1f} s "
              f"(x{seconds['torch'] / seconds['onnx']:.2f})")
        rows.append({"dataset": name, "backbone": args.backbone, "images": len(a),
                     "max_abs_difference": float(np.abs(a - b).max()), "min_cosine": float(cosine.min()),
                     "onnx_seconds": round(seconds["onnx"], 2), "torch_seconds": round(seconds["torch"], 2)})
    print(f"rows appended to {record('engines', rows)}")


if __name__ == "__main__":
    main()
