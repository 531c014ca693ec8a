"""Commands that train: ``fit``, ``finetune``, ``ensemble``, ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.cli.main import (
    BackboneOpt,
    CacheOpt,
    ConfigOpt,
    DataArg,
    DeviceOpt,
    FusionOpt,
    QuietOpt,
    app,
    columns,
    console,
    error_console,
    load_config,
    show_markdown,
    tta_names,
    warn,
)
from graft.errors import ConfigError


def _hold_out(value: str | None) -> str | None:
    if value not in (None, "observation", "user"):
        raise typer.BadParameter(f"{value!r} is not observation or user")
    return value


@app.command()
def fit(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    config: ConfigOpt = None,
    backbone: BackboneOpt = None,
    weights: Annotated[str | None, typer.Option(help="Local .pth/.safetensors weights for the backbone.")] = None,
    pooling: Annotated[str | None, typer.Option(help=(
        "auto (the weights' own: the class token for ViTs, the average for CNNs), avg, max or token."))] = None,
    image_size: Annotated[int | None, typer.Option(help=(
        "Input resolution (default: the weights' own). 320 with Lite0 is the plant recipe (configs/plants.yaml): "
        "higher out-of-fold S on plant photos, 2x the extraction time."))] = None,
    cache_dir: CacheOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum head epochs (early stopping ends sooner).")] = None,
    hidden_layers: Annotated[int | None, typer.Option(help="Dense layers in the head (founding recipe: 3).")] = None,
    width: Annotated[int | None, typer.Option(help="Units per dense layer (founding recipe: 512).")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout after each dense layer (founding recipe: 0.5).")] = None,
    class_weights: Annotated[str | None, typer.Option(help="none or auto (inverse class frequency).")] = None,
    repeats: Annotated[str | None, typer.Option(
        help="Cross-fitting repeats: a count, or auto (3 on few-shot data, see head.repeat_below_images_per_class).")
    ] = None,
    fusion: FusionOpt = None,
    val_fraction: Annotated[float | None, typer.Option(help="Validation share of the non-test part (0.25 = 3:1).")] = None,
    hold_out: Annotated[str | None, typer.Option(
        help="What the validation split holds out: observation, or user (whole photographers, as a flora app meets "
             "them; data.split_by).", callback=_hold_out)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the split and the head.")] = None,
    data_format: Annotated[str | None, typer.Option("--format", help="auto, folder, csv or lifeclef.")] = None,
    column: Annotated[list[str], typer.Option(help="CSV column mapping FIELD=COLUMN, repeatable.")] = [],  # noqa: B006
    views: Annotated[bool | None, typer.Option("--views/--no-views", help="Per-view preprocessing (crops).")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Evaluate with 5 test-time augmentations.")] = None,
    default_view: Annotated[str | None, typer.Option(help="View of images without one, e.g. LeafScan.")] = None,
    taxonomy: Annotated[Path | None, typer.Option(
        help="CSV: label, genus, family, authorship, common_names (;), gbif - answers then rank genera/families.")] = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Extract (or reuse cached) features, choose the head by cross-fitting, train it, evaluate, write a run."""
    from graft.training.fit import fit as fit_run

    settings = load_config(
        config, backbone__name=backbone, backbone__weights=weights, backbone__pooling=pooling,
        backbone__image_size=image_size, features__cache_dir=str(cache_dir) if cache_dir else None,
        head__epochs=epochs, head__hidden_layers=hidden_layers, head__width=width, head__dropout=dropout,
        head__class_weights=class_weights, head__repeats=repeats, predict__fusion=fusion,
        data__val_fraction=val_fraction, data__split_by=hold_out, data__seed=seed, head__seed=seed, data__format=data_format,
        data__columns=columns(column) or None,
        views__enabled=views, data__default_view=default_view, predict__tta=tta_names(tta),
        data__taxonomy=str(taxonomy.resolve()) if taxonomy else None, device=device,
    )
    result = fit_run(data, out, settings, progress=not quiet)
    _print_run(result)


def _print_run(result) -> None:
    from graft.run import RunFiles

    for warning in result.warnings:
        warn(warning)
    files = RunFiles(result.run_dir)
    if result.problems:
        error_console.print(f"[yellow]{len(result.problems)} problem(s) skipped[/], listed in {files.problems}",
                            highlight=False, soft_wrap=True)
    show_markdown(files.results_md.read_text())
    r = result.results
    console.print(
        f"features: {r['features_extracted']} extracted ({r['extraction_seconds']:.1f}s), "
        f"head: {r['head_seconds']:.1f}s; report in [bold]{result.run_dir}[/] "
        f"({files.results.name}, {files.results_md.name}, {files.curves.name})"
    )


@app.command()
def finetune(
    run: Annotated[Path, typer.Argument(help="Run directory written by `graft fit` (its head is the start).")],
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (early stopping may end sooner).")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this many minutes; the best epoch is kept.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the optimizer's; low: adjust, not overwrite).")]
    = None,
    optimizer: Annotated[str | None, typer.Option(
        help="auto (sgd for BatchNorm networks, adamw for LayerNorm ones: ViT, ConvNeXt, CLIP), sgd or adamw.")] = None,
    layer_decay: Annotated[float | None, typer.Option(help="Layer-wise LR decay (default: adamw 0.75, sgd off).")] = None,
    warmup_epochs: Annotated[float | None, typer.Option(help="Linear LR warm-up (default: adamw 1, sgd 0).")] = None,
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
    device: DeviceOpt = None,
    devices: Annotated[int | None, typer.Option(help="GPUs (or CPU processes) on this node; more than one is DDP.")]
    = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes (torchrun / SLURM set the rest).")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Default: bar on a terminal.")] = None,
) -> None:
    """Put the head on the backbone and train the whole network (SGD, low LR); keep it only if it beats head-only."""
    from graft.finetuning.finetune import finetune as finetune_run
    from graft.run import RunFiles

    overrides = {
        "finetune.epochs": epochs, "finetune.max_minutes": max_minutes, "finetune.lr": lr, "finetune.batch_size": batch_size,
        "finetune.optimizer": optimizer, "finetune.layer_decay": layer_decay, "finetune.warmup_epochs": warmup_epochs,
        "finetune.train_blocks": train_blocks, "finetune.backbone_lr_scale": backbone_lr_scale,
        "finetune.freeze_bn": freeze_bn, "finetune.min_vote": min_vote, "head.class_weights": class_weights,
        "finetune.precision": precision, "finetune.channels_last": channels_last, "finetune.num_workers": workers,
        "finetune.devices": devices, "finetune.num_nodes": num_nodes, "device": device,
    }
    result = finetune_run(run, overrides, resume=resume, progress=progress)
    if result is None:  # a non-zero DDP rank
        return
    if result.interrupted:
        error_console.print(f"interrupted after epoch {result.epochs}; continue with --resume", highlight=False)
        raise typer.Exit(1)
    show_markdown(RunFiles(run).results_md.read_text())
    console.print(f"kept [bold]{result.kept}[/]; {result.epochs} epochs in {result.seconds:.0f}s; "
                  f"curves in {RunFiles(run).curves}")


@app.command()
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (same classes), e.g. two backbones.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Ensemble directory to write.")],
    weights: Annotated[str | None, typer.Option(help="Comma-separated weights, one per run.")] = None,
    fit_weights: Annotated[bool, typer.Option(help="Fit the weights on the validation split (grid, best S).")] = False,
) -> None:
    """Average several runs' per-image probabilities; the ensemble is a run for evaluate and predict."""
    from graft.run import RunFiles
    from graft.training.ensembling import make_ensemble

    parsed = None
    if weights:
        try:
            parsed = [float(w) for w in weights.split(",")]
        except ValueError as error:
            raise ConfigError(f"--weights expects numbers like 0.6,0.4, got {weights!r}") from error
    make_ensemble(runs, out, parsed, fit_weights)
    show_markdown(RunFiles(out).results_md.read_text())


@app.command()
def demo(
    data: Annotated[Path | None, typer.Option(help="Run on this dataset instead of the bundled ELPV solar cells.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/demo"),
    backbone: BackboneOpt = None,
    cache_dir: CacheOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """The whole path offline on real data: extract features -> train head -> evaluate -> report."""
    from graft.data.demo import elpv_manifest
    from graft.training.fit import fit as fit_run

    settings = load_config(None, backbone__name=backbone, features__cache_dir=str(cache_dir) if cache_dir else None,
                           device=device)
    source = data if data is not None else elpv_manifest()
    name = data or "ELPV solar cells (Deitsch et al. 2019, CC BY-NC-SA 4.0)"
    console.print(f"[bold]graft demo[/]: {name}, backbone {settings.backbone.name}")
    _print_run(fit_run(source, out, settings, progress=not quiet))
