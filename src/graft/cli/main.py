"""The ``graft`` command line: each command parses its options, calls the Python API, renders the result.

Usage mistakes (unknown command, missing argument, bad value) are typer's: the usage line, the reason, "Try 'graft
fit --help'", exit code 2. graft's own errors (:class:`~graft.errors.GraftError`) are one line, exit code 2; ``--debug``
shows the traceback of either.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from graft.config import GraftConfig
from graft.errors import ConfigError, GraftError, first_line

app = typer.Typer(add_completion=False, no_args_is_help=False, invoke_without_command=True,
                  help="graft: image classifiers on pretrained backbones, from cached features to ranked answers per "
                       "observation.", pretty_exceptions_enable=False)
console = Console()
error_console = Console(stderr=True)
STATE = {"debug": False}

DataArg = Annotated[Path, typer.Argument(help="Dataset: class-per-folder tree, CSV file, or LifeCLEF XML directory.")]
RunArg = Annotated[Path, typer.Argument(help="Run directory written by `graft fit` (or an ensemble directory).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML with sections data/backbone/features/head/predict.")]
BackboneOpt = Annotated[str | None, typer.Option(help=(
    "A timm name, hf-hub:ORG/NAME, local-dir:/path or open_clip:NAME; a+b concatenates two (default "
    "tf_efficientnet_lite0, offline; `graft backbones` lists them)."))]
CacheOpt = Annotated[Path | None, typer.Option(help="Feature cache directory (default $GRAFT_CACHE_DIR or user cache).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
def _fusion_rule(value: str | None) -> str | None:
    rules = ("mean", "max", "geometric", "borda", "auto")
    if value is not None and value not in rules:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(rules)}")
    return value


FusionOpt = Annotated[str | None, typer.Option(help="Observation fusion: mean, max, geometric or borda (auto: the "
                                                    "run's choice).", callback=_fusion_rule)]
TtaOpt = Annotated[bool | None, typer.Option("--tta/--no-tta", help="Average 5 test-time augmentations per image.")]
DeviceOpt = Annotated[str | None, typer.Option(
    help="auto (a CUDA GPU, then Apple MPS, else the CPU), cpu, cuda, cuda:N or mps; one that is absent is an error.")]


def versions(verbose: bool) -> str:
    """graft's version; with ``verbose`` also the versions of the libraries that decide its numbers."""
    lines = [f"graft {metadata.version('graft')}"]
    if verbose:
        for package in ("torch", "torchvision", "timm", "lightning", "onnxruntime", "numpy", "pillow", "typer"):
            try:
                lines.append(f"{package} {metadata.version(package)}")
            except metadata.PackageNotFoundError:
                lines.append(f"{package} (not installed)")
    return "\n".join(lines)


@app.callback()
def main(
    context: typer.Context,
    debug: Annotated[bool, typer.Option(help="Show tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print graft's version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="With --version: the libraries' versions too.")] = False,
) -> None:
    """graft: image classifiers on pretrained backbones, from cached features to ranked answers per observation."""
    STATE["debug"] = debug
    if version:
        print(versions(verbose))
        raise typer.Exit()
    if context.invoked_subcommand is None:
        print(context.get_help())
        raise typer.Exit()


def run_app() -> None:
    """Entry point. typer runs standalone, so usage errors are its own (usage, reason, help hint, exit 2); graft's
    errors are printed as one line (exit 2) unless --debug."""
    try:
        app()
    except GraftError as error:
        if STATE["debug"]:
            raise
        error_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except Exception as error:  # a case graft does not handle yet: one line, and how to see and report it
        if STATE["debug"]:
            raise
        error_console.print(f"[bold red]internal error:[/] {type(error).__name__}: {first_line(error)} (run again with "
                            "--debug for the traceback, and report it)", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


def load_config(path: Path | None, **overrides) -> GraftConfig:
    """Defaults, then the YAML file, then the flags (``section__key=value``; None = not given)."""
    config = GraftConfig.from_yaml(path) if path else GraftConfig()
    return config.updated({key.replace("__", "."): value for key, value in overrides.items()})


def columns(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not field or not column:
            raise ConfigError(f"--column expects FIELD=CSV_COLUMN (e.g. label=species), got {pair!r}")
        mapping[field.strip()] = column.strip()
    return mapping


def tta_names(enabled: bool | None) -> list[str] | None:
    from graft.features.tta import DEFAULT_TTA

    return None if enabled is None else (list(DEFAULT_TTA) if enabled else [])


def show_markdown(text: str) -> None:
    """Markdown at the terminal, tables restacked where they would not fit its width (:func:`graft.tables.for_width`)."""
    from rich.markdown import Markdown

    from graft.tables import for_width

    console.print(Markdown(for_width(text, console.width)))


def warn(text: str) -> None:
    error_console.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)
