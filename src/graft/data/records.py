"""The manifest's table: one :class:`ImageRecord` per image, and the helpers every reader shares (names that
cannot be written, dangling links, text that is not UTF-8, votes, observations of several labels)."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from graft.errors import DataError
from graft.files import NotRegularFile, atomic_write_text, read_regular

FIELDS = ("path", "label", "observation", "user", "view", "vote", "split", "genus", "family")
REQUIRED_CSV_FIELDS = ("path", "label")
SPLIT_ALIASES = {"train": "train", "training": "train", "learn": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test", "": ""}


@dataclass(frozen=True)
class ImageRecord:
    """One image. ``observation`` groups the photos of one subject; ``split`` is train, val, test or '' (unassigned)."""

    path: Path
    label: str
    observation: str
    user: str = ""
    view: str = ""
    vote: float | None = None
    split: str = ""
    genus: str = ""  # taxonomy, when the metadata gives it (serving ranks genera and families from it)
    family: str = ""


@dataclass
class Manifest:
    records: list[ImageRecord]
    source: str = ""
    problems: list[str] = field(default_factory=list)
    schema: str = ""  # the metadata layout recognised, e.g. "PlantCLEF 2015-2016 XML" (graft inspect shows it)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    @property
    def labels(self) -> list[str]:
        return sorted({record.label for record in self.records})

    def where(self, split: str) -> Manifest:
        return Manifest([r for r in self.records if r.split == split], self.source, self.problems, self.schema)

    def without(self, paths: Iterable[Path]) -> Manifest:
        dropped = set(paths)
        return Manifest([r for r in self.records if r.path not in dropped], self.source, self.problems, self.schema)

    def with_default_view(self, view: str | None) -> Manifest:
        """Give ``view`` to every image that has none (e.g. LeafScan for a folder of leaf scans)."""
        if not view:
            return self
        records = [r if r.view else dataclasses.replace(r, view=view) for r in self.records]
        return Manifest(records, self.source, self.problems, self.schema)

    @property
    def splits(self) -> list[str]:
        return sorted({record.split for record in self.records})

    def write_csv(self, path: str | Path) -> None:
        """Write the manifest (absolute paths) atomically; ``read_csv`` reads it back unchanged."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(FIELDS)
        for r in self.records:
            vote = "" if r.vote is None else r.vote
            writer.writerow([r.path.resolve(), r.label, r.observation, r.user, r.view, vote, r.split, r.genus, r.family])
        atomic_write_text(path, buffer.getvalue())


def unreadable_name(path: Path, problems: list[str]) -> bool:
    """A file or folder name that is not valid UTF-8 cannot be written to a manifest or a report: list and skip it."""
    try:
        str(path).encode("utf-8")
        return False
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        problems.append(f"{shown}: the name is not valid UTF-8; skipped (rename it)")
        return True


def dangling(path: Path, problems: list[str]) -> bool:
    """A symbolic link to nothing (or to itself): list and skip it rather than dropping it silently."""
    if path.is_symlink() and not path.exists():
        problems.append(f"{path}: a symbolic link to a missing file (or a link loop); skipped (fix or remove it)")
        return True
    return False


def read_text(path: Path) -> str:
    """A text file as UTF-8 (a BOM is fine); anything else is refused with the byte offset and the fix."""
    try:
        data = read_regular(path)
    except NotRegularFile as error:
        raise DataError(f"{error}; give a text file") from error
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{path}: byte {error.start} (line {line}) is {data[error.start:error.start + 1]!r}, not UTF-8; "
                        "save the file as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet's Save As)") from error


def parse_vote(text: str, where: str, problems: list[str]) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        problems.append(f"{where}: vote {text!r} is not a number; ignored")
        return None


def separate_mixed_observations(records: list[ImageRecord], problems: list[str]) -> list[ImageRecord]:
    """An observation is one subject; if its images disagree on the label, split it per label and say so."""
    labels: dict[str, set[str]] = {}
    for record in records:
        labels.setdefault(record.observation, set()).add(record.label)
    mixed = {obs for obs, names in labels.items() if len(names) > 1}
    for obs in sorted(mixed):
        problems.append(f"observation {obs!r} has images of several labels {sorted(labels[obs])}; split per label")
    return [
        dataclasses.replace(r, observation=f"{r.observation}#{r.label}") if r.observation in mixed else r
        for r in records
    ]
