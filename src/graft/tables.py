"""Markdown tables of results: ``results.md``, ``graft evaluate``'s answer, the report and cross-fitting's note all
print the same columns and the same marks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TABLE_COLUMNS = (("S", "S"), ("Top-1", "top1"), ("Top-3", "top3"), ("Top-5", "top5"), ("image top-1", "image_top1"),
                 ("img/s", "images_per_second"), ("ms/obs", "ms_per_observation"), ("observations", "n_observations"),
                 ("images", "n_images"))


def results_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A Markdown table, one row per (model name, results) pair, in the founding recipe's columns plus speed."""
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


def for_width(markdown: str, width: int) -> str:
    """``markdown`` with every table that would not fit ``width`` columns restacked: each row's first cell (a model's
    or head's name) as a line of its own, then its other cells as ``title value`` pairs that wrap. A terminal of 80
    columns then shows whole names instead of squeezing them into a few letters per line."""
    lines, out, index = markdown.split("\n"), [], 0
    while index < len(lines):
        if not (lines[index].startswith("|") and index + 1 < len(lines) and lines[index + 1].startswith("|---")):
            out.append(lines[index])
            index += 1
            continue
        end = index + 2
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        table = [_cells(line) for line in [lines[index], *lines[index + 2:end]]]
        widths = [max(len(row[i]) if i < len(row) else 0 for row in table) for i in range(len(table[0]))]
        if sum(widths) + 3 * len(widths) + 1 <= width:
            out += lines[index:end]
        else:
            titles = table[0]
            for row in table[1:]:
                pairs = " · ".join(f"{title} {value}" for title, value in zip(titles[1:], row[1:], strict=False))
                out += [f"**{row[0]}**", "", pairs, ""]
        index = end
    return "\n".join(out)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]
