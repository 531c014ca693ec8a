"""Run reports: ``results.json`` (a stable contract for scripts), a Markdown results table, training curves."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graft.files import atomic_write, atomic_write_text

# Keys every results.json carries; scripts may rely on them.
RESULT_KEYS = ("S", "top1", "top3", "top5", "image_top1", "n_observations", "n_images", "images_per_second")
TABLE_COLUMNS = (("S", "S"), ("Top-1", "top1"), ("Top-3", "top3"), ("Top-5", "top5"), ("image top-1", "image_top1"),
                 ("img/s", "images_per_second"), ("observations", "n_observations"), ("images", "n_images"))


def write_results_json(path: Path, results: dict[str, Any]) -> Path:
    missing = [key for key in RESULT_KEYS if key not in results]
    if missing:
        raise ValueError(f"results lack the contract keys {missing}")
    return atomic_write_text(path, json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")


def results_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A Markdown table, one row per (model name, results) pair, in the seed's columns plus speed."""
    header = "| model | " + " | ".join(title for title, _ in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 1)]
    for name, results in rows:
        cells = [_cell(results.get(key)) for _, key in TABLE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.4f}"
    return "-" if value is None else str(value)


def merge_epoch_rows(lightning_csv: Path, out: Path) -> list[dict[str, str]]:
    """Lightning writes train and validation metrics on separate rows; write one row per epoch."""
    by_epoch: dict[int, dict[str, str]] = {}
    with lightning_csv.open() as handle:
        for row in csv.DictReader(handle):
            merged = by_epoch.setdefault(int(row["epoch"]), {})
            merged.update({key: value for key, value in row.items() if value != ""})
    rows = [by_epoch[epoch] for epoch in sorted(by_epoch)]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [",".join(columns)] + [",".join(row.get(column, "") for column in columns) for row in rows]
    atomic_write_text(out, "\n".join(lines) + "\n")
    return rows


def plot_curves(history: list[dict[str, str]], out: Path, title: str, best_epoch: int | None = None) -> Path:
    """Loss and accuracy per epoch, train and validation, like the seed's training plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(row["epoch"]) + 1 for row in history]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, metric in ((loss_axis, "loss"), (acc_axis, "acc")):
        for stage, style in (("train", "-"), ("val", "--")):
            values = [float(row[f"{stage}_{metric}"]) if row.get(f"{stage}_{metric}") else None for row in history]
            axis.plot(epochs, values, style, label=f"{stage} {metric}")
        if best_epoch is not None:
            axis.axvline(best_epoch + 1, color="grey", linewidth=0.8, label="best (kept)")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    atomic_write(out, lambda handle: figure.savefig(handle, format="png", dpi=110))
    plt.close(figure)
    return out
