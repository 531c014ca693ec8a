"""The run directory (nanoGPT's "one artefact, one writer, one reader"): :mod:`~graft.run.layout` names its files,
this module writes them and rebuilds models from them, :mod:`~graft.run.read` reads them back through
:mod:`~graft.run.checks`, which validates every value before use.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from graft.config import GraftConfig
from graft.data.manifest import Manifest
from graft.device import Device, resolve_device
from graft.errors import RunError
from graft.files import atomic_write, atomic_write_text
from graft.rows import RowFile
from graft.run import checks
from graft.run.layout import RunFiles, fine_tuning, recover, staged_commit, writing
from graft.run.read import (
    check_complete,
    check_servable,
    evaluation_part,
    model_out_of_fold,
    read_backbone_description,
    read_ensemble_spec,
    read_head_state,
    read_labels,
    read_manifest,
    read_out_of_fold,
    read_results,
    read_run_config,
    read_run_taxonomy,
    read_temperature,
)
from graft.tables import results_table

__all__ = [
    "RESULT_KEYS", "RunFiles", "check_complete", "check_results", "check_servable", "checks", "evaluation_part",
    "fine_tuning", "load_model", "load_run", "model_out_of_fold", "read_backbone_description", "read_ensemble_spec",
    "read_head_state", "read_labels", "read_manifest", "read_out_of_fold", "read_results", "read_run_config",
    "read_run_taxonomy", "read_temperature", "recover", "staged_commit", "write_config", "write_data",
    "write_ensemble", "write_json", "write_model", "write_out_of_fold", "write_results", "write_results_json",
    "write_state", "writing",
]

if TYPE_CHECKING:
    # torch, timm and the models are imported by the functions that load or write them: the ONNX engine and the
    # commands that only read a run's files never wait for them
    from torch import nn

    from graft.model.classifier import Classifier
    from graft.model.ensemble import Ensemble

# Keys every results.json carries; scripts may rely on them.
RESULT_KEYS = ("S", "top1", "top3", "top5", "image_top1", "n_observations", "n_images", "images_per_second")


def write_json(path: Path, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def write_config(files: RunFiles, config: GraftConfig, given: GraftConfig | None = None) -> None:
    """config.yaml: ``given`` (the settings as the user gave them) with what ``config`` decided under ``resolved``;
    without ``given``, ``config`` as it is."""
    atomic_write_text(files.config, (given.with_resolved(config) if given is not None else config).to_yaml())


def write_state(path: Path, module: nn.Module) -> None:
    """Weights as safetensors: loading them can never run code."""
    from safetensors.torch import save

    state = {key: tensor.detach().cpu().contiguous() for key, tensor in module.state_dict().items()}
    atomic_write(path, lambda handle: handle.write(save(state)))


def write_model(files: RunFiles, classifier: Classifier, given: GraftConfig | None = None) -> None:
    """Everything :func:`load_run` reads: config (``given`` + what the run resolved), labels, backbone description,
    head weights, temperature."""
    write_config(files, classifier.config, given)
    write_json(files.labels, classifier.labels)
    write_json(files.calibration, {"temperature": classifier.temperature})
    write_json(files.backbone, classifier.backbone.describe())
    write_json(files.taxonomy, classifier.taxonomy.to_json())
    write_state(files.head, classifier.head)


def write_data(files: RunFiles, manifest: Manifest, problems: Sequence[str]) -> None:
    manifest.write_csv(files.manifest)
    atomic_write_text(files.problems, "".join(f"{line}\n" for line in problems))


def write_out_of_fold(files: RunFiles, paths: Sequence[Path], logits: np.ndarray | RowFile, fold: np.ndarray) -> None:
    """Out-of-fold logits per training image (plain arrays: loading them never unpickles anything). The file is what
    ``np.savez`` writes; logits in a row file are copied into it a block at a time, never whole in memory."""
    def write(handle):
        with zipfile.ZipFile(handle, "w", allowZip64=True) as archive:
            # absolute, as in the run's manifest: readers match rows by path (a relative one would depend on the cwd)
            for name, value in (("paths", np.array([str(Path(p).resolve()) for p in paths])), ("fold", np.asarray(fold))):
                with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, value, allow_pickle=False)
            with archive.open("logits.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array_header_1_0(entry, {"descr": "<f4", "fortran_order": False,
                                                             "shape": tuple(logits.shape)})
                blocks = logits.blocks() if isinstance(logits, RowFile) else [(None, logits)]
                for _, block in blocks:
                    entry.write(np.ascontiguousarray(block, np.float32).tobytes())

    atomic_write(files.out_of_fold, write)


def check_results(results: dict[str, Any]) -> None:
    missing = [key for key in RESULT_KEYS if key not in results]
    if missing:
        raise ValueError(f"results lack the contract keys {missing}")


def write_results_json(path: Path, results: dict[str, Any]) -> Path:
    """results.json (or a user's ``--out`` file): the contract keys are checked before anything is written."""
    check_results(results)
    return write_json(path, results)


def write_results(files: RunFiles, results: dict[str, Any], rows: Sequence[tuple[str, dict[str, Any]]],
                  note: str, title: str | None = None) -> None:
    """results.json (the contract) and results.md (``title``, by default the run's name, ``note``, then a table of
    ``rows``)."""
    write_results_json(files.results, results)
    atomic_write_text(files.results_md, f"# {title or files.root.name}\n\n{note}\n\n{results_table(rows)}")


def load_run(run_dir: str | Path, device: str | Device = "auto") -> Classifier:
    """Rebuild the trained classifier of a run directory (backbone weights are checked against the run's), to compute
    on ``device`` (:func:`~graft.device.resolve_device`; a run trained on a GPU loads on a CPU and the other way)."""
    from graft.features.backbones import create_backbone
    from graft.model.classifier import Classifier
    from graft.model.head import rebuild_head

    files = check_complete(RunFiles(run_dir))
    device = resolve_device(device)
    config = read_run_config(files)
    labels = read_labels(files)
    settings = config.backbone.model_dump()
    if settings["weights"] and not Path(settings["weights"]).is_absolute():  # fine-tuned weights live in the run
        settings["weights"] = str(files.root / settings["weights"])
    backbone = create_backbone(**settings)
    expected = read_backbone_description(files)["identity"]
    if backbone.identity != expected:
        raise RunError(
            f"{files.root}: backbone {backbone.name} now loads different weights (identity {backbone.identity}, "
            f"trained with {expected}); restore the original weights file or retrain"
        )
    try:
        head = rebuild_head(backbone.num_features, len(labels), config.head, read_head_state(files))
    except (RuntimeError, KeyError, ValueError) as error:  # shapes or names that do not fit the run's config/labels
        raise checks.refuse(files.head, f"does not fit {len(labels)} labels and the run's config.yaml "
                            f"({checks.first_line(error)})") from error
    return Classifier(backbone, head, labels, config, read_temperature(files), read_run_taxonomy(files), device)


def write_ensemble(files: RunFiles, ensemble: Ensemble, runs: Sequence[Path]) -> None:
    files.root.mkdir(parents=True, exist_ok=True)
    write_json(files.ensemble, {"runs": [str(r) for r in runs], "weights": ensemble.weights})
    write_config(files, ensemble.config)
    write_json(files.labels, ensemble.labels)


def load_model(run_dir: str | Path, device: str | Device = "auto") -> Classifier | Ensemble:
    """A run directory or an ensemble directory, whichever ``run_dir`` is, computing on ``device``."""
    files = RunFiles(run_dir)
    device = resolve_device(device)
    if not files.is_ensemble():
        return load_run(files.root, device)
    from graft.model.ensemble import Ensemble

    spec = read_ensemble_spec(files)
    return Ensemble([load_run(path, device) for path in spec["runs"]], spec["weights"], read_run_config(files))
