"""Markdown tables of results: ``results.md``, ``graft evaluate``'s answer, the report and cross-fitting's note all
print the same columns and the same marks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TABLE_COLUMNS = (("S", "S"), ("Top-1", "top1"), ("Top-3", "top3"), ("Top-5", "top5"), ("image top-1", "image_top1"),
                 ("img/s", "images_per_second"), ("ms/obs", "ms_per_observation"), ("observations", "n_observations"),
                 ("images", "n_images"))


def results_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A Markdown table, one row per (model name, results) pair, in the seed's columns plus speed."""
    header = "| model | " + " | ".join(title for title, _ in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 1)]
    for name, results in rows:
        cells = [_cell(results.get(key), speed=key in ("images_per_second", "ms_per_observation"))
                 for _, key in TABLE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_TIE = " (a tie: not > best before it + grid_min_gain)"
_MARKS = {"chosen": " (chosen)", "tie": _TIE, "stopped_grid": _TIE}  # stopped_grid: runs written before "tie"


def head_selection_table(rows: Sequence[dict[str, Any]]) -> str:
    """Cross-fitting's candidates (``results.json``'s ``head_selection``) as a Markdown table, the chosen one marked,
    and the MLP counts that were ties (not better than the best count before them by ``head.grid_min_gain``, so
    never chosen even where their S reads higher): the run's note and the report print the same table."""
    lines = ["| head (out of fold) | S | Top-1 | Top-5 | seconds |", "|---|---|---|---|---|"]
    for row in rows:
        mark = next((text for key, text in _MARKS.items() if row.get(key)), "")
        lines.append(f"| {row['head']}{mark} | "
                     + " | ".join(_cell(row.get(key)) for key in ("S", "top1", "top5")) + f" | {row['seconds']:.1f} |")
    return "\n".join(lines)


def _cell(value: Any, speed: bool = False) -> str:
    if isinstance(value, float) and speed:
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.4f}"
    return "-" if value is None else str(value)
