"""The ``graft`` command line: each command loads config, calls the library, renders the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from graft.config import GraftConfig
from graft.errors import ConfigError, GraftError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__ or "", pretty_exceptions_enable=False)
console = Console()
error_console = Console(stderr=True)
STATE = {"debug": False}

DataArg = Annotated[Path, typer.Argument(help="Dataset: class-per-folder tree, CSV file, or LifeCLEF XML directory.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML with sections data/backbone/features/head/predict.")]
BackboneOpt = Annotated[str | None, typer.Option(help="timm model name (default tf_efficientnet_lite0, offline).")]
CacheOpt = Annotated[Path | None, typer.Option(help="Feature cache directory (default $GRAFT_CACHE_DIR or user cache).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


@app.callback()
def main(debug: Annotated[bool, typer.Option(help="Show tracebacks for errors.")] = False) -> None:
    """graft: image classifiers on pretrained backbones, from cached features to ranked answers per observation."""
    STATE["debug"] = debug


def run_app() -> None:
    """Entry point: graft's errors are printed as one clear message (exit 2) unless --debug."""
    try:
        app(standalone_mode=False)
    except GraftError as error:
        if STATE["debug"]:
            raise
        error_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except (typer.Exit, SystemExit) as done:
        raise SystemExit(getattr(done, "exit_code", getattr(done, "code", 0))) from None
    except Exception as error:
        import click

        if isinstance(error, click.exceptions.ClickException):
            error.show()
            raise SystemExit(error.exit_code) from None
        if isinstance(error, click.exceptions.Abort):
            raise SystemExit(1) from None
        raise


def _columns(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not field or not column:
            raise ConfigError(f"--column expects FIELD=CSV_COLUMN (e.g. label=species), got {pair!r}")
        mapping[field.strip()] = column.strip()
    return mapping


def _tta(enabled: bool | None) -> list[str] | None:
    from graft.augment import DEFAULT_TTA

    return None if enabled is None else (list(DEFAULT_TTA) if enabled else [])


def load_config(path: Path | None, **overrides) -> GraftConfig:
    config = GraftConfig.from_yaml(path) if path else GraftConfig()
    return config.updated({key.replace("__", "."): value for key, value in overrides.items()})


@app.command()
def fit(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    config: ConfigOpt = None,
    backbone: BackboneOpt = None,
    weights: Annotated[str | None, typer.Option(help="Local .pth/.safetensors weights for the backbone.")] = None,
    pooling: Annotated[str | None, typer.Option(help="Global pooling: avg (default) or max.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input resolution (default: the weights' own).")] = None,
    cache_dir: CacheOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum head epochs (early stopping ends sooner).")] = None,
    hidden_layers: Annotated[int | None, typer.Option(help="Dense layers in the head (seed: 3).")] = None,
    width: Annotated[int | None, typer.Option(help="Units per dense layer (seed: 512).")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout after each dense layer (seed: 0.5).")] = None,
    class_weights: Annotated[str | None, typer.Option(help="none or auto (inverse class frequency).")] = None,
    fusion: Annotated[str | None, typer.Option(help="Observation fusion: mean, max, geometric, borda.")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Validation share of the non-test part (0.25 = 3:1).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the split and the head.")] = None,
    data_format: Annotated[str | None, typer.Option("--format", help="auto, folder, csv or lifeclef.")] = None,
    column: Annotated[list[str], typer.Option(help="CSV column mapping FIELD=COLUMN, repeatable.")] = [],  # noqa: B006
    views: Annotated[bool | None, typer.Option("--views/--no-views", help="Per-view preprocessing (crops).")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Evaluate with 5 test-time views.")] = None,
    default_view: Annotated[str | None, typer.Option(help="View of images without one, e.g. LeafScan.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Extract (or reuse cached) features, train the dense head, evaluate, and write a run directory."""
    from graft.pipeline import fit as fit_run

    settings = load_config(
        config, backbone__name=backbone, backbone__weights=weights, backbone__pooling=pooling,
        backbone__image_size=image_size, features__cache_dir=str(cache_dir) if cache_dir else None,
        head__epochs=epochs, head__hidden_layers=hidden_layers, head__width=width, head__dropout=dropout,
        head__class_weights=class_weights, predict__fusion=fusion, data__val_fraction=val_fraction,
        data__seed=seed, head__seed=seed, data__format=data_format, data__columns=_columns(column) or None,
        views__enabled=views, data__default_view=default_view, predict__tta=_tta(tta),
    )
    result = fit_run(data, out, settings, progress=not quiet)
    _print_run(result)


def _print_run(result) -> None:
    for warning in result.warnings:
        error_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if result.problems:
        error_console.print(f"[yellow]{len(result.problems)} problem(s) skipped[/], listed in "
                            f"{result.run_dir / 'problems.txt'}", highlight=False, soft_wrap=True)
    console.print(Markdown((result.run_dir / "results.md").read_text()))
    r = result.results
    console.print(
        f"features: {r['features_extracted']} extracted ({r['extraction_seconds']:.1f}s), "
        f"head: {r['head_seconds']:.1f}s; report in [bold]{result.run_dir}[/] (results.json, results.md, curves.png)"
    )


@app.command()
def finetune(
    run: Annotated[Path, typer.Argument(help="Run directory written by `graft fit` (its head is the start).")],
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (early stopping may end sooner).")] = None,
    lr: Annotated[float | None, typer.Option(help="SGD learning rate (low: adjust, not overwrite).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted fine-tuning from its last checkpoint.")] = False,
    batch_size: Annotated[int | None, typer.Option(help="Images per step (per device).")] = None,
    train_blocks: Annotated[int | None, typer.Option(help="Train only the top N backbone stages.")] = None,
    backbone_lr_scale: Annotated[float | None, typer.Option(help="Backbone LR = lr x this.")] = None,
    freeze_bn: Annotated[bool | None, typer.Option("--freeze-bn/--train-bn", help="BatchNorm in inference mode.")] = None,
    min_vote: Annotated[float | None, typer.Option(help="Drop training images whose vote is below this.")] = None,
    class_weights: Annotated[str | None, typer.Option(help="none, auto, or a CSV/JSON label->weight file.")] = None,
    precision: Annotated[str | None, typer.Option(help="32-true or bf16-mixed.")] = None,
    channels_last: Annotated[bool | None, typer.Option("--channels-last/--no-channels-last")] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader workers for decoding and augmentation.")] = None,
    devices: Annotated[int | None, typer.Option(help="Processes (DDP) on this node.")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes (torchrun / SLURM set the rest).")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Default: bar on a terminal.")] = None,
) -> None:
    """Put the head on the backbone and train the whole network (SGD, low LR); keep it only if it beats head-only."""
    from graft.finetune_run import finetune as finetune_run

    overrides = {
        "finetune.epochs": epochs, "finetune.lr": lr, "finetune.batch_size": batch_size,
        "finetune.train_blocks": train_blocks, "finetune.backbone_lr_scale": backbone_lr_scale,
        "finetune.freeze_bn": freeze_bn, "finetune.min_vote": min_vote, "head.class_weights": class_weights,
        "finetune.precision": precision, "finetune.channels_last": channels_last, "finetune.num_workers": workers,
        "finetune.devices": devices, "finetune.num_nodes": num_nodes,
    }
    result = finetune_run(run, overrides, resume=resume, progress=progress)
    if result is None:  # a non-zero DDP rank
        return
    if result.interrupted:
        error_console.print(f"interrupted after epoch {result.epochs}; continue with --resume", highlight=False)
        raise typer.Exit(1)
    console.print(Markdown((run / "results.md").read_text()))
    console.print(f"kept [bold]{result.kept}[/]; {result.epochs} epochs in {result.seconds:.0f}s; "
                  f"curves in {run}/curves.png")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory written by `graft fit`.")],
    data: DataArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the results JSON here.")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Average 5 test-time views per image.")] = None,
    fusion: Annotated[str | None, typer.Option(help="mean, max, geometric or borda.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Score a run on a dataset (its test part if it names one, else every image)."""
    from graft.pipeline import evaluate as evaluate_run
    from graft.report import results_table, write_results_json

    results = evaluate_run(run, data, progress=not (quiet or as_json), tta=_tta(tta), fusion=fusion)
    if out:
        write_results_json(out, results)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        console.print(Markdown(results_table([(f"{run.name} on {data.name}", results)])))


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run directory written by `graft fit`.")],
    images: Annotated[list[Path], typer.Argument(help="Photos of ONE observation (subject).")],
    top: Annotated[int | None, typer.Option(help="How many labels to list.")] = None,
    fusion: Annotated[str | None, typer.Option(help="mean, max, geometric or borda.")] = None,
    view: Annotated[list[str], typer.Option(help="View of each photo in order (Flower, Leaf...), repeatable.")] = [],  # noqa: B006
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Average 5 test-time views per image.")] = None,
    reject_threshold: Annotated[float | None, typer.Option(help="Say 'unknown' below this top probability.")] = None,
    engine: Annotated[str, typer.Option(help="auto (onnx if the run was exported), onnx, or torch.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Identify one observation from one or more photos: a ranked list of labels with probabilities."""
    from graft.ensemble import load_model
    from graft.export import ONNX_FILE, identify_files, load_engine

    if view and len(view) != len(images):
        raise ConfigError(f"--view given {len(view)} time(s) for {len(images)} image(s); give one per image or none")
    settings = {"predict.tta": _tta(tta), "predict.reject_threshold": reject_threshold}
    if engine == "onnx" or (engine == "auto" and (run / ONNX_FILE).is_file()):
        model = load_engine(run, "onnx")
        model.config = model.config.updated(settings)
        answer = identify_files(model, images, view or None, fusion, top)
    else:
        model = load_model(run)  # torch, through the feature cache
        model.config = model.config.updated(settings)
        answer = model.identify(images, views=view or None, fusion=fusion, top=top)
    if as_json:
        print(json.dumps({"ranking": answer.ranking, "unknown": answer.unknown, "per_image": answer.per_image,
                          "fusion": answer.fusion, "failures": answer.failures}, indent=2))
        return
    for path, reason in answer.failures.items():
        error_console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False, soft_wrap=True)
    if not answer.ranking:
        raise GraftError("no readable image among the inputs; nothing to identify")
    if answer.unknown:
        console.print(f"[bold yellow]unknown[/]: top probability {answer.ranking[0][1]:.3f} is below "
                      f"{model.config.predict.reject_threshold}; the closest labels were:")
    table = Table(title=f"{len(answer.per_image)} image(s), fusion: {answer.fusion}")
    table.add_column("rank", justify="right")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for rank, (label, probability) in enumerate(answer.ranking, start=1):
        table.add_row(str(rank), label, f"{probability:.3f}")
    console.print(table)


@app.command()
def inspect(
    data: DataArg,
    config: ConfigOpt = None,
    no_decode: Annotated[bool, typer.Option("--no-decode", help="Skip decoding every image.")] = False,
) -> None:
    """Counts per label, view, split and user, and every unreadable file or skipped row."""
    from graft.manifest import load_manifest
    from graft.splits import assign_splits, check_trainable
    from graft.summary import summarize

    settings = load_config(config)
    manifest = assign_splits(load_manifest(data, settings.data.format, settings.data.columns),
                             settings.data.val_fraction, settings.data.seed)
    summary = summarize(manifest, check_images=not no_decode)
    console.print(f"[bold]{summary.source}[/]: {summary.n_images} images, {summary.n_observations} observations, "
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
            error_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    except GraftError as error:
        error_console.print(f"[red]cannot train on this data:[/] {error}", highlight=False, soft_wrap=True)


@app.command()
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (same classes), e.g. two backbones.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Ensemble directory to write.")],
    weights: Annotated[str | None, typer.Option(help="Comma-separated weights, one per run.")] = None,
    fit_weights: Annotated[bool, typer.Option(help="Fit the weights on the validation split (grid, best S).")] = False,
) -> None:
    """Average several runs' per-image probabilities; the ensemble is a run for evaluate and predict."""
    from graft.ensemble import make_ensemble

    parsed = None
    if weights:
        try:
            parsed = [float(w) for w in weights.split(",")]
        except ValueError as error:
            raise ConfigError(f"--weights expects numbers like 0.6,0.4, got {weights!r}") from error
    make_ensemble(runs, out, parsed, fit_weights)
    console.print(Markdown((out / "results.md").read_text()))


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run or ensemble directories to compare.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory (report.md, report.html).")],
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Also score each model with test-time views.")] = False,
) -> None:
    """Models side by side: S, Top-k, speed, calibration, coverage, fusion rules, confusions, per-view accuracy."""
    from graft.comparison import build_report

    page = build_report(runs, out, tta)
    console.print(Markdown((out / "report.md").read_text().split("\n## ")[0]))
    console.print(f"report: {page} (self-contained HTML) and {out / 'report.md'}")


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="Run or ensemble directory to serve.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    engine: Annotated[str, typer.Option(help="auto (onnx if exported), onnx or torch.")] = "auto",
    max_files: Annotated[int, typer.Option(help="Photos per request.")] = 12,
    max_mb: Annotated[float, typer.Option(help="Megabytes per photo.")] = 15.0,
) -> None:
    """Web page at /, POST /identify, GET /health and /labels, OpenAPI docs at /docs."""
    import uvicorn

    from graft.serve import Limits, create_app

    limits = Limits(max_files=max_files, max_bytes=int(max_mb * 1024 * 1024))
    console.print(f"serving {run} on http://{host}:{port}/ (engine {engine})")
    uvicorn.run(create_app(run, engine, limits), host=host, port=port, log_level="warning")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory (not an ensemble).")],
    format: Annotated[str, typer.Option("--format", help="onnx")] = "onnx",
) -> None:
    """Export backbone + head for fast CPU inference (onnxruntime); serve and predict then use it."""
    from graft.export import export_onnx

    if format != "onnx":
        raise ConfigError(f"--format {format!r} is not supported; use onnx")
    path = export_onnx(run)
    console.print(f"wrote {path} and {path.name}.json (preprocessing, labels, temperature)")


@app.command("preview-views")
def preview_views(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG contact sheet to write.")],
    per_view: Annotated[int, typer.Option(help="Images shown per view.")] = 4,
    config: ConfigOpt = None,
    default_view: Annotated[str | None, typer.Option(help="View of images without one, e.g. LeafScan.")] = None,
) -> None:
    """Contact sheet of per-view preprocessing: before (box drawn) and after, per view, to judge the crops."""
    from graft.manifest import load_manifest
    from graft.sheets import contact_sheet

    settings = load_config(config, data__default_view=default_view)
    manifest = load_manifest(data, settings.data.format, settings.data.columns)
    fallbacks = contact_sheet(manifest.with_default_view(settings.data.default_view), settings.views, out, per_view)
    shown = ", ".join(f"{view}: {count} fell back" for view, count in fallbacks.items())
    console.print(f"wrote {out} ({shown})")


@app.command()
def demo(
    data: Annotated[Path | None, typer.Option(help="Run on this dataset instead of the bundled ELPV solar cells.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/demo"),
    backbone: BackboneOpt = None,
    cache_dir: CacheOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """The whole path offline on real data: extract features -> train head -> evaluate -> report."""
    from graft.demo import elpv_manifest
    from graft.pipeline import fit as fit_run

    settings = load_config(None, backbone__name=backbone, features__cache_dir=str(cache_dir) if cache_dir else None)
    source = data if data is not None else elpv_manifest()
    name = data or "ELPV solar cells (Deitsch et al. 2019, CC BY-NC-SA 4.0)"
    console.print(f"[bold]graft demo[/]: {name}, backbone {settings.backbone.name}")
    _print_run(fit_run(source, out, settings, progress=not quiet))
