"""Training history: Lightning's CSV log merged to one row per epoch, and the loss/accuracy curves of each stage."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from graft.files import atomic_write, atomic_write_text


def merge_epoch_rows(lightning_csv: Path | Sequence[Path], out: Path) -> list[dict[str, str]]:
    """Lightning writes train and validation metrics on separate rows; write one row per epoch. Several logs (the
    sessions of a resumed run) are read in order; a later session's row for an epoch replaces an earlier one's."""
    by_epoch: dict[int, dict[str, str]] = {}
    waiting: dict[str, str] = {}  # rows without an epoch (the LR logged as an epoch starts) join the next epoch row
    for row in _rows(lightning_csv):
        values = {key: value for key, value in row.items() if value != ""}
        if not row.get("epoch"):
            waiting.update(values)
            continue
        merged = by_epoch.setdefault(int(row["epoch"]), {})
        merged.update({**waiting, **values})
        waiting = {}
    return write_rows([by_epoch[epoch] for epoch in sorted(by_epoch)], out)


def _rows(paths: Path | Sequence[Path]):
    for path in [paths] if isinstance(paths, Path) else paths:
        with path.open() as handle:
            yield from csv.DictReader(handle)


def write_rows(rows: list[dict[str, str]], out: Path) -> list[dict[str, str]]:
    """One CSV row per epoch, columns in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [",".join(columns)] + [",".join(str(row.get(column, "")) for column in columns) for row in rows]
    atomic_write_text(out, "\n".join(lines) + "\n")
    return rows


def plot_curves(stages: list[tuple[str, list[dict[str, str]], int | None]], out: Path, title: str) -> Path:
    """Loss and accuracy per epoch, train and validation, one stage after another (head, then fine-tuning), with the
    kept epoch of each stage marked, like the founding recipe's training plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    offset = 0
    for stage_index, (stage, history, best_epoch) in enumerate(stages):
        epochs = [offset + int(row["epoch"]) + 1 for row in history]
        for axis, metric in ((loss_axis, "loss"), (acc_axis, "acc")):
            for split, style in (("train", "-"), ("val", "--")):
                values = [float(row[f"{split}_{metric}"]) if row.get(f"{split}_{metric}") else None for row in history]
                if any(v is not None for v in values):
                    axis.plot(epochs, values, style, color=f"C{2 * stage_index + (split == 'val')}",
                              label=f"{stage} {split} {metric}")
            if best_epoch is not None:
                axis.axvline(offset + best_epoch + 1, color="grey", linewidth=0.8, linestyle=":")
            if stage_index:
                axis.axvline(offset + 0.5, color="black", linewidth=1.0)
        offset = epochs[-1] if epochs else offset
    for axis, metric in ((loss_axis, "loss"), (acc_axis, "accuracy")):
        axis.set_xlabel("epoch (dotted: kept weights; solid: next stage)")
        axis.set_title(metric)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    atomic_write(out, lambda handle: figure.savefig(handle, format="png", dpi=110))
    plt.close(figure)
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a history CSV written by :func:`merge_epoch_rows`."""
    with path.open() as handle:
        return list(csv.DictReader(handle))
