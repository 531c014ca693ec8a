"""The run directory: the one module that names its files, writes them and reads them back (nanoGPT's "one
artefact, one writer, one reader").

    config.yaml      resolved configuration          head.safetensors  head weights (+ standardisation)
    labels.json      class names, index order        backbone.json     backbone name, weights identity, preprocessing
    manifest.csv     every image with its split      history.csv       one row per head epoch
    results.json     metrics on the evaluation split results.md        the same as a Markdown table
    curves.png       training curves                 problems.txt      skipped images / rows, and why
    calibration.json the fitted temperature          out-of-fold.npz   each training image's logits from a head that
    model.onnx(.json) an ONNX export                                   never saw its observation (cross-fitting)
    finetune/, finetune-history.csv, finetuned-backbone.safetensors, head-only.safetensors: after `graft finetune`

An ensemble directory holds ``ensemble.json`` (member runs, weights), ``config.yaml``, ``labels.json`` and results.
A run is evaluated on the data's own test part when it has one, else on the validation part (:func:`evaluation_part`).
"""

from __future__ import annotations

import fcntl
import json
import os
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from graft.config import GraftConfig
from graft.data.manifest import Manifest, read_csv
from graft.data.taxonomy import Taxonomy
from graft.device import Device, resolve_device
from graft.errors import RunError
from graft.files import atomic_write, atomic_write_text
from graft.rows import RowFile
from graft.tables import results_table

if TYPE_CHECKING:
    # torch, timm and the models are imported by the functions that load or write them: the ONNX engine and the
    # commands that only read a run's files never wait for them
    from torch import nn

    from graft.model.classifier import Classifier
    from graft.model.ensemble import Ensemble

# Keys every results.json carries; scripts may rely on them.
RESULT_KEYS = ("S", "top1", "top3", "top5", "image_top1", "n_observations", "n_images", "images_per_second")


class RunFiles:
    """Every file of a run (or ensemble) directory, by role. Nothing else in graft spells these names."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        for role, name in {
            "config": "config.yaml", "labels": "labels.json", "backbone": "backbone.json", "head": "head.safetensors",
            "calibration": "calibration.json", "manifest": "manifest.csv", "history": "history.csv",
            "curves": "curves.png", "results": "results.json", "results_md": "results.md", "problems": "problems.txt",
            "ensemble": "ensemble.json", "onnx": "model.onnx", "onnx_metadata": "model.onnx.json",
            "finetune": "finetune", "finetune_history": "finetune-history.csv",
            "finetuned_backbone": "finetuned-backbone.safetensors", "head_only": "head-only.safetensors",
            "out_of_fold": "out-of-fold.npz", "taxonomy": "taxonomy.json",
        }.items():
            setattr(self, role, self.root / name)
        self.lock = self.root / ".graft-lock"
        self.checkpoints = self.finetune / "checkpoints"
        self.last_checkpoint = self.checkpoints / "last.ckpt"
        self.best_checkpoint = self.checkpoints / "best.ckpt"
        self.finetune_log = self.finetune / "metrics.csv"  # Lightning's CSV log of the current (or last) session

    def finetune_logs(self) -> list[Path]:
        """Every fine-tuning session's CSV log in order: the earlier sessions' (kept by a resume), then the last."""
        earlier = sorted(self.finetune.glob("metrics.session-*.csv"))
        return earlier + ([self.finetune_log] if self.finetune_log.is_file() else [])

    def keep_finetune_log(self) -> None:
        """Before a resume: Lightning's CSV logger rewrites its file on start, so the finished epochs move aside."""
        if self.finetune_log.is_file():
            self.finetune_log.rename(self.finetune / f"metrics.session-{len(self.finetune_logs()):03d}.csv")

    def is_ensemble(self) -> bool:
        return self.ensemble.is_file()

    def serves_finetuned(self) -> bool:
        """Whether ``graft finetune`` kept its model: config.yaml then names the fine-tuned backbone's file."""
        return self.finetuned_backbone.is_file() and \
            GraftConfig.from_yaml(self.config).backbone.weights == self.finetuned_backbone.name


@contextmanager
def writing(files: RunFiles) -> Iterator[RunFiles]:
    """Hold the run directory for one writer (fit, finetune) at a time; a second gets a clear error, not a mix.

    ``results.json`` is removed first and written last, so a run is complete (it has one) or recognisably
    incomplete (it has none): readers refuse the latter.
    """
    files.root.mkdir(parents=True, exist_ok=True)
    with files.lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunError(f"{files.root} is being written by {holder}; wait for it to finish or choose another "
                           "--out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"graft (pid {os.getpid()})")
        handle.flush()
        files.results.unlink(missing_ok=True)
        try:
            yield files
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def evaluation_part(manifest: Manifest) -> Manifest:
    """The split a run is scored on: the data's own test part if there is one, else validation."""
    test = manifest.where("test")
    return test if test.records else manifest.where("val")


def read_manifest(run: str | Path) -> Manifest:
    """The run's manifest (for an ensemble: its first member's, whose splits all members share)."""
    files = RunFiles(run)
    if files.is_ensemble():
        files = RunFiles(read_ensemble_spec(files)["runs"][0])
    return read_csv(files.manifest)


def read_results(run: str | Path) -> dict[str, Any]:
    path = RunFiles(run).results
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json(path: Path, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def write_config(files: RunFiles, config: GraftConfig) -> None:
    atomic_write_text(files.config, config.to_yaml())


def write_state(path: Path, module: nn.Module) -> None:
    """Weights as safetensors: loading them can never run code."""
    from safetensors.torch import save

    state = {key: tensor.detach().cpu().contiguous() for key, tensor in module.state_dict().items()}
    atomic_write(path, lambda handle: handle.write(save(state)))


def write_model(files: RunFiles, classifier: Classifier) -> None:
    """Everything :func:`load_run` reads: config, labels, backbone description, head weights, temperature."""
    write_config(files, classifier.config)
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


def model_out_of_fold(run: str | Path) -> tuple[list[Path], np.ndarray] | None:
    """:func:`read_out_of_fold` when those logits are the run's model's own, else None: also once ``graft finetune``
    kept a fine-tuned model, whose predictions they are not (the file stays: it is the head-only model's, which a
    later fine-tuning's choice reads)."""
    return None if RunFiles(run).serves_finetuned() else read_out_of_fold(run)


def read_out_of_fold(run: str | Path) -> tuple[list[Path], np.ndarray] | None:
    """(image paths, their out-of-fold logits), or None for a run fitted without cross-fitting. They are the
    cross-fitted head's: after fine-tuning, :func:`model_out_of_fold` says whether they still describe the model."""
    path = RunFiles(run).out_of_fold
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as saved:
        return [Path(p) for p in saved["paths"]], saved["logits"]


def check_results(results: dict[str, Any]) -> None:
    missing = [key for key in RESULT_KEYS if key not in results]
    if missing:
        raise ValueError(f"results lack the contract keys {missing}")


def write_results_json(path: Path, results: dict[str, Any]) -> Path:
    """results.json (or a user's ``--out`` file): the contract keys are checked before anything is written."""
    check_results(results)
    return write_json(path, results)


def write_results(files: RunFiles, results: dict[str, Any], rows: Sequence[tuple[str, dict[str, Any]]],
                  note: str) -> None:
    """results.json (the contract) and results.md (a title, ``note``, then a table of ``rows``)."""
    write_results_json(files.results, results)
    atomic_write_text(files.results_md, f"# {files.root.name}\n\n{note}\n\n{results_table(rows)}")


def load_run(run_dir: str | Path, device: str | Device = "auto") -> Classifier:
    """Rebuild the trained classifier of a run directory (backbone weights are checked against the run's), to compute
    on ``device`` (:func:`~graft.device.resolve_device`; a run trained on a GPU loads on a CPU and the other way)."""
    from safetensors.torch import load_file

    from graft.features.backbones import create_backbone
    from graft.model.classifier import Classifier
    from graft.model.head import rebuild_head

    files = check_complete(RunFiles(run_dir))
    device = resolve_device(device)
    config = GraftConfig.from_yaml(files.config)
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
    head = rebuild_head(backbone.num_features, len(labels), config.head, load_file(files.head))
    return Classifier(backbone, head, labels, config, read_temperature(files), read_run_taxonomy(files), device)


def check_complete(files: RunFiles) -> RunFiles:
    """``files`` if they make a finished run (what a model is rebuilt from, and results.json, written last)."""
    needed = [files.config, files.labels, files.backbone, files.head]
    missing = [path.name for path in needed if not path.is_file()]
    if missing:
        raise RunError(f"{files.root}: not a complete graft run (missing {', '.join(missing)}); run `graft fit` first")
    if not files.results.is_file():
        raise RunError(f"{files.root}: an incomplete run (no {files.results.name}: its fit or finetune stopped before "
                       "the end); run `graft fit` again")
    return files


def read_labels(files: RunFiles) -> list[str]:
    return json.loads(files.labels.read_text())


def read_backbone_description(files: RunFiles) -> dict[str, Any]:
    """backbone.json: what :meth:`Backbone.describe` said when the run was written (name, weights identity...)."""
    return json.loads(files.backbone.read_text())


def read_temperature(files: RunFiles) -> float:
    """The calibration temperature (1 where the run has none)."""
    return json.loads(files.calibration.read_text())["temperature"] if files.calibration.is_file() else 1.0


def read_run_taxonomy(files: RunFiles) -> Taxonomy:
    """The run's taxonomy; runs written before it existed get what their manifest knows."""
    if files.taxonomy.is_file():
        return Taxonomy.from_json(json.loads(files.taxonomy.read_text()))
    return Taxonomy.from_records(read_csv(files.manifest)) if files.manifest.is_file() else Taxonomy()


def read_ensemble_spec(files: RunFiles) -> dict[str, Any]:
    return json.loads(files.ensemble.read_text())


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
    return Ensemble([load_run(path, device) for path in spec["runs"]], spec["weights"],
                    GraftConfig.from_yaml(files.config))
