"""Benchmark tables as data: ``bench/results/<name>.csv``, one row per measurement, each stamped with the commit,
the host and the date, so documents cite a file instead of retyping figures. A new run appends its rows."""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def host() -> str:
    """The machine in a few words: its CPU model and cores, and its GPU when torch sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    described = f"{cpu}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            described += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return described


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=RESULTS.parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(name: str, rows: Sequence[dict[str, Any]]) -> Path:
    """Append ``rows`` (same keys each) to ``bench/results/<name>.csv`` with commit, host and date; return the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.csv"
    stamp = {"commit": commit(), "host": host(), "date": dt.date.today().isoformat()}
    fields = [*stamp, *rows[0]] if rows else list(stamp)
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow(stamp | row)
    return path
