"""Peak memory of extraction as the number of phone photos grows: it must stay flat (issue 12).

Each count runs in a fresh process on a fresh cache; the photos are one generated 12 MP JPEG (bench/extract.py's
phone_photo) written N times with a distinct trailer after the JPEG end marker, so every file has its own content key
(and is extracted) while decoding to the same pixels. Prints peak RSS per count and the ratio largest / smallest.

    python bench/memory.py [--counts 250 2000]
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

sys.path.insert(0, str(Path(__file__).parent))
from extract import DEFAULT_DATA, phone_photo  # the same 12 MP photos as the extraction bench

from record import record


def child(folder: Path, count: int, cache: Path) -> None:
    from graft.config import FeatureConfig
    from graft.features.backbones import create_backbone
    from graft.features.extract import extract_features

    paths = sorted(folder.glob("*.jpg"))[:count]
    backbone = create_backbone("tf_efficientnet_lite0", channels_last=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = extract_features(paths, backbone, FeatureConfig(cache_dir=str(cache)))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"count": count, "extracted": result.extracted, "peak_mb": peak / 1024,
                      "before_mb": before / 1024, "img_s": count / seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[250, 2000])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child[0]), int(args.child[1]), Path(args.child[2]))
    with tempfile.TemporaryDirectory(prefix="graft-memory-") as work:
        folder = Path(work) / "photos"
        folder.mkdir()
        source = next(p for p in sorted(DEFAULT_DATA.rglob("*.jpg")))
        photo = phone_photo(source, Path(work) / "phone.jpg").read_bytes()
        for i in range(max(args.counts)):
            (folder / f"{i:05d}.jpg").write_bytes(photo + f"graft-{i}".encode())
        rows = []
        for count in args.counts:
            out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(count), f"{work}/cache-{count}"],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{count:6d} photos of 12 MP: peak RSS {row['peak_mb']:7.0f} MB (after loading the backbone "
                  f"{row['before_mb']:5.0f} MB), {row['extracted']} extracted, {row['img_s']:.1f} img/s")
    print(f"peak RSS {rows[-1]['count']} / {rows[0]['count']} photos = {rows[-1]['peak_mb'] / rows[0]['peak_mb']:.3f} "
          "(flat = 1)")
    print(f"rows appended to {record('memory', rows)}")


if __name__ == "__main__":
    main()
