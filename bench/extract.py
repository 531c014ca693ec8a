"""Extraction throughput: graft's pipeline vs the bare timm forward on the same batches, side by side in one run.

pipeline = hash bytes + decode + resize/crop/normalise (DataLoader workers) + forward + cache write
raw      = forward only, on the same images already decoded and transformed into tensors in memory
Target: pipeline / raw >= 0.9. With ``--phone N`` the images are N phone-size JPEGs (3000 x 4000, quality 90, made
from the dataset's images) and the pipeline runs twice: decoding every pixel, and decoding JPEGs at the smallest DCT
scale the backbone needs (``features.decode: reduced``, the default).

    python bench/extract.py [--images 128] [--data ../shared/datasets/leafsnap-dev] [--workers N] [--phone 48]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from graft.config import FeatureConfig
from graft.data.images import is_image_path, load_rgb
from graft.features.backbones import create_backbone
from graft.features.extract import default_workers, extract_features
from graft.files import file_digest

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "leafsnap-dev"


def raw_forward(backbone, batches) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            backbone(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def pipeline(backbone, paths, batch_size, workers, decode="reduced") -> float:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        settings = FeatureConfig(cache_dir=cache, batch_size=batch_size, num_workers=workers, decode=decode)
        result = extract_features(paths, backbone, settings)
        assert result.extracted == len(paths), "every image must be extracted (fresh cache)"
        return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--contiguous", action="store_true", help="NCHW instead of graft's default channels_last")
    parser.add_argument("--phone", type=int, default=0, help="use N generated 12 MP JPEGs instead")
    args = parser.parse_args()

    candidates = sorted(p for p in args.data.rglob("*") if is_image_path(p))
    paths = list({file_digest(p): p for p in candidates}.values())[: args.images]  # distinct bytes: all extracted
    if args.phone:
        phone_dir = tempfile.mkdtemp(prefix="graft-phone-")
        paths = [phone_photo(p, Path(phone_dir) / f"{i}.jpg") for i, p in enumerate(paths[: args.phone])]
    backbone = create_backbone(args.backbone, channels_last=not args.contiguous)
    transform = backbone.transform()
    tensors = torch.stack([transform(load_rgb(p)) for p in paths])
    batches = list(tensors.split(args.batch_size))
    workers = default_workers() if args.workers is None else args.workers
    raw_forward(backbone, batches[:1])  # warm-up
    raws, pipes, fulls = [], [], []
    for _ in range(args.repeats):  # interleaved, so all see the same machine load
        raws.append(raw_forward(backbone, batches))
        pipes.append(pipeline(backbone, paths, args.batch_size, workers))
        if args.phone:
            fulls.append(pipeline(backbone, paths, args.batch_size, workers, decode="full"))
    raw, pipe = max(raws), max(pipes)
    print(f"backbone {args.backbone}, {len(paths)} images from {args.data.name}, batch {args.batch_size}, "
          f"{workers} decode worker(s), torch threads {torch.get_num_threads()}, best of {args.repeats}, "
          f"{'contiguous' if args.contiguous else 'channels_last'}")
    print(f"raw forward      {raw:8.2f} img/s   (runs: {', '.join(f'{r:.1f}' for r in raws)})")
    print(f"graft pipeline   {pipe:8.2f} img/s   (runs: {', '.join(f'{p:.1f}' for p in pipes)})")
    if fulls:
        runs = ", ".join(f"{f:.1f}" for f in fulls)
        print(f"graft pipeline, every pixel decoded {max(fulls):8.2f} img/s   (runs: {runs})")
        print(f"reduced / full decoding = {pipe / max(fulls):.2f}x; full/raw = {max(fulls) / raw:.3f}")
    print(f"ratio pipeline/raw = {pipe / raw:.3f}  (target >= 0.9; 12 MP: >= 0.7)")


def phone_photo(source: Path, out: Path) -> Path:
    """A 3000 x 4000 JPEG (quality 90) made from a dataset image: what a phone uploads."""
    image = load_rgb(source)
    size = (3000, 4000) if image.height >= image.width else (4000, 3000)
    image.resize(size, Image.BICUBIC).save(out, quality=90)
    return out


if __name__ == "__main__":
    main()
