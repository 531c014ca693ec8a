"""Reading a run directory back: every file through :mod:`graft.run.checks`, so nothing malformed reaches the
code that uses it (predict, serve, export, evaluate, a fine-tuning's start)."""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from graft.config import GraftConfig
from graft.data.manifest import Manifest, read_csv
from graft.data.taxonomy import Taxonomy
from graft.errors import RunError
from graft.run import checks
from graft.run.layout import RunFiles, recover
from graft.store import is_cache_root


def read_manifest(run: str | Path) -> Manifest:
    """The run's manifest (for an ensemble: its first member's, whose splits all members share)."""
    files = RunFiles(run)
    if files.is_ensemble():
        files = RunFiles(read_ensemble_spec(files)["runs"][0])
    return read_csv(files.manifest)


def read_results(run: str | Path) -> dict[str, Any]:
    path = RunFiles(run).results
    if not path.exists():
        return {}
    results = checks.read_json(path)
    if not isinstance(results, dict):
        raise checks.refuse(path, "expected a JSON object of results")
    return results


def model_out_of_fold(run: str | Path) -> tuple[list[Path], np.ndarray] | None:
    """:func:`read_out_of_fold` when those logits are the run's model's own, else None: also once ``graft finetune``
    kept a fine-tuned model, whose predictions they are not (the file stays: it is the head-only model's, which a
    later fine-tuning's choice reads)."""
    return None if RunFiles(run).serves_finetuned() else read_out_of_fold(run)


def read_out_of_fold(run: str | Path) -> tuple[list[Path], np.ndarray] | None:
    """(image paths, their out-of-fold logits), or None for a run fitted without cross-fitting. They are the
    cross-fitted head's: after fine-tuning, :func:`model_out_of_fold` says whether they still describe the model."""
    path = RunFiles(run).out_of_fold
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            paths, logits = [Path(p) for p in saved["paths"]], saved["logits"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise checks.refuse(path, f"not the out-of-fold logits graft wrote ({checks.first_line(error)})") from error
    if logits.ndim != 2 or len(logits) != len(paths) or not np.isfinite(logits).all():
        raise checks.refuse(path, f"{len(paths)} paths for logits of shape {logits.shape}, or non-finite logits")
    return paths, logits


def check_complete(files: RunFiles) -> RunFiles:
    """``files`` if they make a finished run (what a model is rebuilt from, and results.json, written last)."""
    with contextlib.suppress(OSError):  # a read-only copy is read as it is
        recover(files)  # a fine-tuning killed between its journal and its last rename: finish it
    needed = [files.config, files.labels, files.backbone, files.head]
    missing = [path.name for path in needed if not path.is_file()]
    if missing:
        raise RunError(f"{files.root}: not a complete graft run (missing {', '.join(missing)}); run `graft fit` first")
    if not files.results.is_file():
        raise RunError(f"{files.root}: an incomplete run (no {files.results.name}: its fit or finetune stopped before "
                       "the end); run `graft fit` again")
    return files


def check_servable(run: str | Path) -> None:
    """A run or ensemble directory that predict and serve can load: complete runs (members too), or one RunError."""
    files = RunFiles(run)
    if not files.root.is_dir():
        raise RunError(f"{files.root}: no such run directory; fit one with `graft fit DATA --out {files.root}`")
    runs = [Path(member) for member in read_ensemble_spec(files)["runs"]] if files.is_ensemble() else [files.root]
    for member in runs:
        check_complete(RunFiles(member))


def read_labels(files: RunFiles) -> list[str]:
    return checks.check_labels(checks.read_json(files.labels), files.labels)


def read_backbone_description(files: RunFiles) -> dict[str, Any]:
    """backbone.json: what :meth:`Backbone.describe` said when the run was written (name, weights identity...)."""
    return checks.check_backbone_description(checks.read_json(files.backbone), files.backbone)


def read_temperature(files: RunFiles) -> float:
    """The calibration temperature (1 where the run has none)."""
    if not files.calibration.exists():
        return 1.0
    return checks.check_temperature(checks.read_json(files.calibration), files.calibration)


def read_run_taxonomy(files: RunFiles) -> Taxonomy:
    """The run's taxonomy; runs written before it existed get what their manifest knows."""
    if files.taxonomy.exists():
        return Taxonomy.from_json(checks.check_taxonomy(checks.read_json(files.taxonomy), files.taxonomy))
    return Taxonomy.from_records(read_csv(files.manifest)) if files.manifest.is_file() else Taxonomy()


def read_ensemble_spec(files: RunFiles) -> dict[str, Any]:
    return checks.check_ensemble_spec(checks.read_json(files.ensemble, "run `graft ensemble` again"), files.ensemble)


def read_run_config(files: RunFiles) -> GraftConfig:
    """The run's config.yaml as the run computed with it (its ``resolved`` choices applied), for using the run
    (predict, serve, evaluate, export, finetune): its ``features.cache_dir`` is
    kept only where that directory already is a graft cache (:func:`~graft.store.is_cache_root`). A run directory
    may come from anyone, and its config must not choose where graft writes graphs, rows and thumbnails."""
    config = GraftConfig.from_yaml(files.config).effective()  # the settings with the run's resolved choices
    if config.features.cache_dir and not is_cache_root(config.features.cache_dir):
        config = config.updated({"features": {"cache_dir": None}})
    return config


def read_head_state(files: RunFiles) -> dict[str, Any]:
    """head.safetensors' tensors, each checked finite (stds positive): a damaged file is one RunError."""
    from safetensors.torch import load_file

    try:
        state = load_file(files.head)
    except Exception as error:  # safetensors raises its own error types for a damaged header or body
        raise checks.refuse(files.head, f"not a readable safetensors file ({checks.first_line(error)})") from error
    checks.check_head_state(state, files.head)
    return state


def evaluation_part(manifest: Manifest) -> Manifest:
    """The split a run is scored on: the data's own test part if there is one, else validation."""
    test = manifest.where("test")
    return test if test.records else manifest.where("val")
