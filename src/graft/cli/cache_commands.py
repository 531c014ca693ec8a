"""Commands for the feature cache at scale: ``extract`` (in this process or on a Ray cluster) and ``cache``
(``info``, ``prune``, ``verify``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from graft.cli.main import (
    BackboneOpt,
    CacheOpt,
    ConfigOpt,
    DataArg,
    DeviceOpt,
    QuietOpt,
    app,
    console,
    error_console,
    load_config,
)
from graft.errors import GraftError

cache_app = typer.Typer(help="What the feature cache holds; drop old chunks; find corrupt ones.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@app.command()
def extract(
    data: DataArg,
    config: ConfigOpt = None,
    backbone: BackboneOpt = None,
    cache_dir: CacheOpt = None,
    ray: Annotated[bool, typer.Option("--ray", help="Extract on a Ray cluster (pip install 'graft[ray]').")] = False,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster: auto, ray://HOST:10001; default a local one on this machine's cores.")] = None,
    actors: Annotated[int | None, typer.Option(help="Backbone actors on Ray (default one per core).")] = None,
    gpus_per_actor: Annotated[float, typer.Option(
        help="GPUs each Ray actor asks for (0.5: two actors share one); default 0, CPU actors.")] = 0.0,
    threads_per_actor: Annotated[int, typer.Option(help="CPU cores (decode threads) each Ray actor asks for.")] = 1,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Fill the feature cache for DATA, so that `graft fit` on it performs no backbone forwards."""
    from graft.data.manifest import load_manifest
    from graft.device import resolve_device
    from graft.progress import progress_bar

    settings = load_config(config, backbone__name=backbone, features__cache_dir=str(cache_dir) if cache_dir else None,
                           device=device)
    on = resolve_device("cpu" if ray else settings.device)  # Ray: each actor's (--gpus-per-actor)
    manifest = load_manifest(data, settings.data.format, settings.data.columns)
    paths, views = [r.path for r in manifest], [r.view for r in manifest]
    with progress_bar("Extracting features", not quiet) as report:
        if ray:
            from graft.features.distributed import extract_on_ray

            result = extract_on_ray(paths, settings.backbone, settings.features, views=views,
                                    view_config=settings.views, address=address, actors=actors,
                                    threads_per_actor=threads_per_actor, gpus_per_actor=gpus_per_actor,
                                    progress=report)
            failures, forwards, seconds = result.failures, result.extracted, result.seconds
        else:
            from graft.features.backbones import create_backbone
            from graft.features.extract import extract_features

            found = extract_features(paths, create_backbone(**settings.backbone.model_dump()), settings.features,
                                     views=views, view_config=settings.views, progress=report, device=on)
            failures, forwards, seconds = found.failures, found.extracted, found.seconds
    for path, why in sorted(failures.items()):
        error_console.print(f"[yellow]skipped[/] {path}: {why}", highlight=False, soft_wrap=True)
    console.print(f"{len(paths)} images, {forwards} extracted in {seconds:.1f} s, {len(failures)} skipped; cache "
                  f"{settings.features.cache_dir or 'default'}")


@cache_app.command()
def info(cache_dir: CacheOpt = None) -> None:
    """Each store in the cache: what it holds, its rows, chunks, size and last write."""
    from graft.features.cache_maintenance import cache_info

    report = cache_info(cache_dir)
    console.print(f"cache {report.root}", highlight=False)
    for store in report.stores:  # one line each: readable at any terminal width, and by scripts
        written = dt.datetime.fromtimestamp(store.newest).strftime("%Y-%m-%d %H:%M")
        console.print(f"{store.name}: {store.rows} rows in {store.chunks} chunks, {store.bytes / 1e6:.1f} MB, last "
                      f"written {written} ({store.directory.relative_to(report.root)})", highlight=False, soft_wrap=True)
    for name, size in report.other_bytes.items():
        console.print(f"{name}: {size / 1e6:.1f} MB", highlight=False)
    if report.unreadable:
        console.print(f"{report.unreadable} chunk(s) with unreadable keys: `graft cache verify --remove` drops them",
                      highlight=False)


@cache_app.command()
def prune(
    older_than: Annotated[float, typer.Option(help="Days since a chunk was written.")],
    cache_dir: CacheOpt = None,
) -> None:
    """Remove chunks written more than --older-than days ago (their images are extracted again when needed)."""
    from graft.features.cache_maintenance import prune as prune_cache

    removed, freed = prune_cache(cache_dir, older_than)
    console.print(f"removed {removed} chunk(s), {freed / 1e6:.1f} MB")


@cache_app.command()
def verify(
    cache_dir: CacheOpt = None,
    remove: Annotated[bool, typer.Option(help="Remove the corrupt chunks (their images are extracted again).")] = False,
) -> None:
    """Re-read every chunk and exported graph in full, check them against their SHA-256 and list the damaged ones
    (exit 2 when there are any and --remove is not given)."""
    from graft.features.cache_maintenance import verify as verify_cache

    problems = verify_cache(cache_dir, remove)
    for line in problems:
        error_console.print(line, highlight=False, soft_wrap=True)
    if problems and not remove:
        raise GraftError(f"{len(problems)} damaged file(s); run `graft cache verify --remove` to drop them")
    console.print("every chunk and graph matches its digest" if not problems else
                  f"removed {len(problems)} damaged file(s); they are made again when next needed")
