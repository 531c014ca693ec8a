"""Commands that use a trained model: ``evaluate``, ``predict``, ``report``, ``export``, ``serve``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from graft.cli.main import (
    DataArg,
    DeviceOpt,
    FusionOpt,
    QuietOpt,
    RunArg,
    TtaOpt,
    app,
    console,
    error_console,
    show_markdown,
    tta_names,
)
from graft.errors import ConfigError, GraftError


@app.command()
def evaluate(
    run: RunArg,
    data: DataArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the results JSON here.")] = None,
    tta: TtaOpt = None,
    fusion: FusionOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Score a run on a dataset (its test part if it names one, else every image)."""
    from graft.evaluation.evaluate import evaluate as evaluate_run
    from graft.run import write_results_json
    from graft.tables import results_table

    results = evaluate_run(run, data, progress=not (quiet or as_json), tta=tta_names(tta), fusion=fusion,
                           device=device or "auto")
    if out:
        write_results_json(out, results)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        show_markdown(results_table([(f"{run.name} on {data.name}", results)]))


@app.command()
def predict(
    run: RunArg,
    images: Annotated[list[Path], typer.Argument(help="Photos of ONE observation (subject).")],
    top: Annotated[int | None, typer.Option(help="How many labels to list.", min=1)] = None,
    fusion: FusionOpt = None,
    view: Annotated[list[str], typer.Option(help="View of each photo in order (Flower, Leaf...), repeatable.")] = [],  # noqa: B006
    tta: TtaOpt = None,
    reject_threshold: Annotated[float | None, typer.Option(help="Say 'unknown' below this top probability.")] = None,
    engine: Annotated[str, typer.Option(help="auto (the ONNX export, else the backbone's cached ONNX graph and the head in "
                                                "numpy, else torch), onnx, or torch.")] = "auto",
    device: DeviceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the HTTP answer's shape).")] = False,
) -> None:
    """Identify one observation from one or more photos: a ranked list of labels with probabilities."""
    from graft.model.identification import identify
    from graft.serving.inference import load_engine

    if view and len(view) != len(images):
        raise ConfigError(f"--view given {len(view)} time(s) for {len(images)} image(s); give one per image or none")
    model = load_engine(run, engine, device=device or "auto")  # auto: the export, else the cached graph, else torch
    answer = identify(model, images, view or None, fusion=fusion, top=top, tta=tta_names(tta),
                      reject_threshold=reject_threshold)
    for path, reason in answer.failures.items():
        error_console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False, soft_wrap=True)
    if not answer.ranking:
        raise GraftError("no readable image among the inputs; nothing to identify")
    if as_json:
        print(json.dumps(answer.to_json(), indent=2))
        return
    if answer.unknown:
        threshold = model.config.predict.reject_threshold if reject_threshold is None else reject_threshold
        console.print(f"[bold yellow]unknown[/]: top probability {answer.ranking[0].probability:.3f} is below "
                      f"{threshold}; the closest labels were:")
    table = Table(title=f"{len(answer.per_image)} image(s), fusion: {answer.fusion}")
    table.add_column("rank", justify="right")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for rank, (label, probability) in enumerate(answer.ranking, start=1):
        table.add_row(str(rank), label, f"{probability:.3f}")
    console.print(table)
    for level, ranking in (("genus", answer.genus), ("family", answer.family)):
        if ranking:
            console.print(f"{level}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranking[:3]), highlight=False)


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run or ensemble directories to compare.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory (report.md, report.html).")],
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Also score each model with test-time augmentations.")] = False,
    device: DeviceOpt = None,
) -> None:
    """Models side by side: S, Top-k, speed, calibration, coverage, fusion rules, confusions, per-view accuracy."""
    from graft.evaluation.report import build_report

    page = build_report(runs, out, tta, device or "auto")
    show_markdown((out / "report.md").read_text().split("\n## ")[0])
    console.print(f"report: {page} (self-contained HTML) and {out / 'report.md'}")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory (not an ensemble).")],
    format: Annotated[str, typer.Option("--format", help="onnx")] = "onnx",
) -> None:
    """Export backbone + head for fast CPU inference (onnxruntime); serve and predict then use it."""
    from graft.serving.onnx import export_onnx

    if format != "onnx":
        raise ConfigError(f"--format {format!r} is not supported; use onnx")
    path = export_onnx(run)
    console.print(f"wrote {path} and {path.name}.json (preprocessing, labels, temperature)")


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="Run or ensemble directory to serve.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    engine: Annotated[str, typer.Option(help="auto (the ONNX export, else the cached backbone graph), onnx or "
                                                "torch.")] = "auto",
    max_files: Annotated[int, typer.Option(help="Photos per request.", min=1, max=1000)] = 12,
    max_mb: Annotated[float, typer.Option(help="Megabytes per photo.", min=0.001, max=1024.0)] = 15.0,
    api_keys: Annotated[Path | None, typer.Option(
        help="File of 'KEY QUOTA' lines (identifications per UTC day); without it the server is open.")] = None,
    cors_origin: Annotated[list[str], typer.Option(
        help="Origin a browser app may call from (repeatable; '*' for any).")] = [],  # noqa: B006
    project: Annotated[list[str], typer.Option(
        help="More models as NAME=RUN for /v2/identify/NAME (repeatable); RUN itself is project 'all'.")] = [],  # noqa: B006
    batch_window_ms: Annotated[float, typer.Option(
        help="Micro-batching: concurrent requests share one forward, waiting up to this long (ONNX engine; 0 = off).")]
    = 0.0,
    device: DeviceOpt = None,
) -> None:
    """Web page at /, POST /identify, Pl@ntNet-compatible POST /v2/identify/{project}, GET /health and /labels, OpenAPI
    docs at /docs."""
    import uvicorn

    from graft.device import resolve_device
    from graft.run import check_servable
    from graft.serving.keys import KeyRing
    from graft.serving.web import Limits, create_app

    if not math.isfinite(batch_window_ms) or not 0 <= batch_window_ms <= 10_000:
        raise ConfigError(f"--batch-window-ms {batch_window_ms}: give a number of milliseconds from 0 to 10000")
    device = resolve_device(device or "auto")  # an absent GPU: one line, before anything else
    check_servable(run)  # a missing or incomplete run: one line now, not a server answering 503 for ever
    limits = Limits(max_files=max_files, max_bytes=int(max_mb * 1024 * 1024))
    keys = KeyRing.read(api_keys) if api_keys else None
    projects = dict(named_run(item) for item in project)
    console.print(f"serving {run} on http://{host}:{port}/ (engine {engine}; Pl@ntNet clients: base URL "
                  f"http://{host}:{port}/v2/identify, projects {', '.join(['all', *projects])}; "
                  f"{'API keys required' if keys else 'open: no API keys'})")
    app = create_app(run, engine, limits, keys=keys, cors_origins=cors_origin, projects=projects,
                     batch_window_ms=batch_window_ms, device=device)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def named_run(item: str) -> tuple[str, Path]:
    name, separator, path = item.partition("=")
    if not separator or not name or not path:
        raise GraftError(f"--project {item!r}: give NAME=RUN, e.g. --project weurope=runs/weurope")
    from graft.run import check_servable

    check_servable(Path(path))
    return name, Path(path)


