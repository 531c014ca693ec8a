"""The run directory's layout: the one place its files are named, and the locks that keep one writer at a time.

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
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from graft.config import GraftConfig
from graft.errors import RunError
from graft.files import atomic_write_text

STAGE, JOURNAL = ".staged", ".commit"


class RunFiles:
    """Every file of a run (or ensemble) directory, by role. Nothing else in graft spells these names."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.labels = self.root / "labels.json"
        self.backbone = self.root / "backbone.json"
        self.head = self.root / "head.safetensors"
        self.calibration = self.root / "calibration.json"
        self.manifest = self.root / "manifest.csv"
        self.history = self.root / "history.csv"
        self.curves = self.root / "curves.png"
        self.results = self.root / "results.json"
        self.results_md = self.root / "results.md"
        self.problems = self.root / "problems.txt"
        self.ensemble = self.root / "ensemble.json"
        self.onnx = self.root / "model.onnx"
        self.onnx_metadata = self.root / "model.onnx.json"
        self.finetune = self.root / "finetune"
        self.finetune_history = self.root / "finetune-history.csv"
        self.finetuned_backbone = self.root / "finetuned-backbone.safetensors"
        self.head_only = self.root / "head-only.safetensors"
        self.out_of_fold = self.root / "out-of-fold.npz"
        self.taxonomy = self.root / "taxonomy.json"
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
            GraftConfig.from_yaml(self.config).effective().backbone.weights == self.finetuned_backbone.name


@contextmanager
def _held(lock: Path, busy: str) -> Iterator[None]:
    """An exclusive, non-blocking lock on ``lock`` for as long as the block runs; RunError ``busy`` if it is held."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise RunError(busy.format(holder=handle.read().strip() or "another process")) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"graft (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def fine_tuning(files: RunFiles) -> Iterator[None]:
    """One fine-tuning of a run at a time (its checkpoints and CSV log are per run): a second is one line, not two
    crashed trainings. Held by the process that starts the training (its DDP ranks run under it)."""
    if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
        yield
        return
    with _held(files.finetune / ".graft-lock", f"{files.root} is being fine-tuned by {{holder}}; wait for it to "
               "finish (or stop it and use --resume)"):
        yield


@contextmanager
def writing(files: RunFiles, mark_incomplete: bool = True) -> Iterator[RunFiles]:
    """Hold the run directory for one writer (fit, finetune) at a time; a second gets a clear error, not a mix.

    With ``mark_incomplete``, ``results.json`` is removed first and written last, so a run is complete (it has one)
    or recognisably incomplete (it has none): readers refuse the latter. A writer that replaces a finished run's files
    together (fine-tuning's end) keeps it and uses :func:`staged_commit` instead.
    """
    if files.root.exists() and not files.root.is_dir():
        raise RunError(f"{files.root} is a file, not a run directory; choose another --out")
    files.root.mkdir(parents=True, exist_ok=True)
    with _held(files.lock, f"{files.root} is being written by {{holder}}; wait for it to finish or choose another "
               "--out"):
        recover(files)
        if mark_incomplete:
            files.results.unlink(missing_ok=True)
        yield files


@contextmanager
def staged_commit(files: RunFiles) -> Iterator[RunFiles]:
    """Replace several of the run's files as one change: they are written into ``.staged/`` (the yielded RunFiles),
    then a journal names them, then each is renamed into the run, ``results.json`` last. Killed before the journal,
    the run is as it was; after it, :func:`recover` (every reader and writer calls it) finishes the renames. Call it
    inside :func:`writing`."""
    stage = files.root / STAGE
    shutil.rmtree(stage, ignore_errors=True)  # a commit that never reached its journal: abandoned
    stage.mkdir()
    yield RunFiles(stage)
    names = sorted((path.name for path in stage.iterdir()), key=lambda name: name == files.results.name)
    atomic_write_text(stage / JOURNAL, "\n".join(names))
    recover(files)


def recover(files: RunFiles) -> None:
    """Finish a :func:`staged_commit` whose journal was written (its renames are idempotent); else do nothing."""
    stage = files.root / STAGE
    journal = stage / JOURNAL
    if not journal.is_file():
        return
    for name in journal.read_text().split("\n"):
        if name and (stage / name).exists():
            os.replace(stage / name, files.root / name)
    journal.unlink()
    shutil.rmtree(stage, ignore_errors=True)
