"""Head time on cached features ÷ the time of one extraction pass, on the demo data (ELPV, 2,624 images).

Runs `graft.fit` with a fresh private cache: the first run's extraction is the pass; the later runs extract nothing,
and their head time - cross-fitting's K folds for every candidate plus the final head - is what a new head costs:
the default (every family; the MLP trained with bf16 matmuls where the CPU has them, ``head.precision: auto``), the
same in float32, without power normalisation (``head.power: 1``) and `head.kind: linear` (the linear family only),
side by side. Target (issue 10): ratio <= 0.25.

    python bench/head.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from graft.config import GraftConfig
from graft.data.demo import elpv_manifest
from graft.training.fit import fit

sys.path.insert(0, str(Path(__file__).parent))
from record import record


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        config = GraftConfig().updated({"features.cache_dir": str(Path(work) / "cache")})
        first = fit(elpv_manifest(), Path(work) / "first", config).results
        extraction = first["extraction_seconds"]
        print(f"ELPV: {first['features_extracted']} images extracted in {extraction:.1f} s "
              f"({first['features_extracted'] / extraction:.1f} img/s)")
        for name, overrides in (("default (head.kind auto)", {"head.seed": 1}),
                                ("head.precision 32-true", {"head.seed": 1, "head.precision": "32-true"}),
                                ("head.power 1 (no power normalisation)", {"head.seed": 1, "head.power": 1.0}),
                                ("head.kind linear", {"head.seed": 1, "head.kind": "linear"})):
            second = fit(elpv_manifest(), Path(work) / name, config.updated(overrides)).results
            assert second["features_extracted"] == 0
            head = second["head_seconds"]
            print(f"{name}: head chosen and trained in {head:.2f} s (chose {second['head']}: "
                  + ", ".join(f"{r['head']} S={r['S']:.3f} {r['seconds']:.1f}s" for r in second["head_selection"])
                  + f"); val S={second['S']:.4f} top1={second['top1']:.4f}")
            print(f"  ratio head (all folds + final head) / extraction pass = {head / extraction:.4f}  (target <= 0.25)")
            rows.append({"setting": name, "head": second["head"], "head_seconds": round(head, 2),
                         "extraction_seconds": round(extraction, 2), "ratio": round(head / extraction, 4),
                         "S": second["S"], "top1": second["top1"]})
    print(f"first fit's head (same process, cold): {first['head_seconds']:.2f} s")
    print(f"rows appended to {record('head', rows)}")


if __name__ == "__main__":
    main()
