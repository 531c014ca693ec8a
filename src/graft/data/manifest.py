"""The manifest: one table of images (path, label, observation, user, view, vote, split) and its readers.

Readers never stop on one bad row: the row is skipped and listed in ``Manifest.problems`` with its file and line or
element, so a long run goes on and the user sees what was left out. Errors that make the whole table unusable (an
unknown CSV column, an empty folder) raise :class:`~graft.errors.DataError` at once.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from graft.data.images import is_image_path
from graft.errors import DataError
from graft.files import atomic_write_text

FIELDS = ("path", "label", "observation", "user", "view", "vote", "split")
REQUIRED_CSV_FIELDS = ("path", "label")
LIFECLEF_REQUIRED = ("ObservationId", "FileName", "MediaId", "Content", "ClassId", "Species", "Author")
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


@dataclass
class Manifest:
    records: list[ImageRecord]
    source: str = ""
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    @property
    def labels(self) -> list[str]:
        return sorted({record.label for record in self.records})

    def where(self, split: str) -> Manifest:
        return Manifest([r for r in self.records if r.split == split], self.source, self.problems)

    def without(self, paths: Iterable[Path]) -> Manifest:
        dropped = set(paths)
        return Manifest([r for r in self.records if r.path not in dropped], self.source, self.problems)

    def with_default_view(self, view: str | None) -> Manifest:
        """Give ``view`` to every image that has none (e.g. LeafScan for a folder of leaf scans)."""
        if not view:
            return self
        records = [r if r.view else dataclasses.replace(r, view=view) for r in self.records]
        return Manifest(records, self.source, self.problems)

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
            writer.writerow([r.path.resolve(), r.label, r.observation, r.user, r.view, vote, r.split])
        atomic_write_text(path, buffer.getvalue())


def load_manifest(data: str | Path, format: str = "auto", columns: dict[str, str] | None = None) -> Manifest:
    """Read a dataset in any supported layout: a class-per-folder tree, a CSV, or a LifeCLEF XML directory."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: no such file or directory; pass a dataset folder or a CSV file")
    if format == "auto":
        format = _detect_format(data)
    readers = {"folder": read_folder, "lifeclef": read_lifeclef}
    if format == "csv":
        manifest = read_csv(data, columns or {})
    elif format in readers:
        manifest = readers[format](data)
    else:
        raise DataError(f"unknown data format {format!r}; expected one of auto, folder, csv, lifeclef")
    if not manifest.records:
        details = "\n  ".join(manifest.problems[:10])
        raise DataError(f"{data}: no usable images found (read as {format}).{' Problems:' if details else ''}\n  {details}")
    return manifest


def _detect_format(data: Path) -> str:
    if data.is_file():
        if data.suffix.lower() in (".csv", ".tsv"):
            return "csv"
        raise DataError(f"{data}: a file that is not a .csv; pass a folder (class per sub-folder or LifeCLEF XML)")
    with os.scandir(data) as entries:
        for entry in entries:
            if entry.name.endswith(".xml") and entry.is_file():
                return "lifeclef"
    return "folder"


def read_folder(root: str | Path) -> Manifest:
    """``root/<label>/<image>``: each image is its own observation; non-image files are listed as problems."""
    root = Path(root)
    records, problems = [], []
    label_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not label_dirs:
        raise DataError(f"{root}: no class sub-folders; expected {root}/<label>/<image files>")
    for label_dir in label_dirs:
        if unreadable_name(label_dir, problems):
            continue
        for path in sorted(label_dir.rglob("*")):
            if path.is_dir() or unreadable_name(path, problems) or dangling(path, problems):
                continue
            if not is_image_path(path):
                problems.append(f"{path}: not an image file (by extension); skipped")
                continue
            name = str(path.relative_to(root))
            records.append(ImageRecord(path=path, label=label_dir.name, observation=name))
    loose = [p for p in root.iterdir() if p.is_file() and is_image_path(p)]
    if loose:
        problems.append(f"{root}: {len(loose)} image(s) outside any class folder (e.g. {loose[0].name}); skipped")
    return Manifest(records, str(root), problems)


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
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{path}: byte {error.start} (line {line}) is {data[error.start:error.start + 1]!r}, not UTF-8; "
                        "save the file as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet's Save As)") from error


def read_csv(path: str | Path, columns: dict[str, str] | None = None) -> Manifest:
    """A CSV with one row per image. ``columns`` maps graft fields to CSV headers (default: the same names)."""
    path = Path(path)
    mapping = {name: name for name in FIELDS} | dict(columns or {})
    unknown = set(mapping) - set(FIELDS)
    if unknown:
        raise DataError(f"column mapping names unknown fields {sorted(unknown)}; graft fields are {list(FIELDS)}")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    missing = [f"{name} (column {mapping[name]!r})" for name in REQUIRED_CSV_FIELDS if mapping[name] not in header]
    if missing:
        raise DataError(
            f"{path}: required column(s) {', '.join(missing)} not in header {header}; "
            "rename them or map them, e.g. --column label=species"
        )
    records, problems, where = [], [], {}
    for line, row in enumerate(reader, start=2):
        record = _csv_record(row, mapping, path.parent, f"{path}:{line}", problems)
        if record is not None:
            records.append(record)
            where.setdefault(record.path, f"{path}:{line}")
    records = one_row_per_image(records, where, problems)
    return Manifest(_separate_mixed_observations(records, problems), str(path), problems)


def one_row_per_image(records: list[ImageRecord], where: dict[Path, str], problems: list[str]) -> list[ImageRecord]:
    """An image listed twice counts once; an image listed under several labels teaches nothing true: both skipped."""
    labels: dict[Path, set[str]] = {}
    for record in records:
        labels.setdefault(record.path, set()).add(record.label)
    kept, seen = [], set()
    for record in records:
        if len(labels[record.path]) > 1:
            if record.path not in seen:
                problems.append(f"{where[record.path]}: {record.path} is listed under several labels "
                                f"{sorted(labels[record.path])}; all its rows skipped (one image, one label)")
        elif record.path in seen:
            problems.append(f"{where[record.path]}: {record.path} is listed more than once; counted once")
        else:
            kept.append(record)
        seen.add(record.path)
    return kept


def _csv_record(row: dict, mapping: dict[str, str], base: Path, where: str, problems: list[str]) -> ImageRecord | None:
    value = {name: (row.get(column) or "").strip() for name, column in mapping.items()}
    empty = [name for name in REQUIRED_CSV_FIELDS if not value[name]]
    if empty:
        problems.append(f"{where}: empty required field(s) {empty}; row skipped")
        return None
    image = Path(value["path"]) if os.path.isabs(value["path"]) else base / value["path"]
    if dangling(image, problems):
        return None
    if not image.is_file():
        problems.append(f"{where}: image {image} not found; row skipped (fix the path, relative to the CSV)")
        return None
    split = SPLIT_ALIASES.get(value["split"].lower())
    if split is None:
        problems.append(f"{where}: split {value['split']!r} is not one of train/val/test; treated as unassigned")
    vote = _parse_vote(value["vote"], where, problems)
    observation = value["observation"] or value["path"]
    return ImageRecord(image, value["label"], observation, value["user"], value["view"], vote, split or "")


def _parse_vote(text: str, where: str, problems: list[str]) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        problems.append(f"{where}: vote {text!r} is not a number; ignored")
        return None


def read_lifeclef(directory: str | Path) -> Manifest:
    """A LifeCLEF plant-task directory: one ``<MediaId>.xml`` per image beside the image it names."""
    directory = Path(directory)
    records, problems = [], []
    for xml_path in sorted(directory.glob("*.xml")):
        record = _lifeclef_record(xml_path, problems)
        if record is not None:
            records.append(record)
    return Manifest(_separate_mixed_observations(records, problems), str(directory), problems)


def _lifeclef_record(xml_path: Path, problems: list[str]) -> ImageRecord | None:
    try:
        root = ElementTree.parse(xml_path).getroot()
    except ElementTree.ParseError as error:
        problems.append(f"{xml_path}: malformed XML ({error}); image skipped")
        return None
    text = {element.tag: (element.text or "").strip() for element in root}
    missing = [tag for tag in LIFECLEF_REQUIRED if tag not in text]
    empty = [tag for tag in ("FileName", "Species", "ObservationId") if tag in text and not text[tag]]
    if missing or empty:
        what = f"missing element(s) {['<' + t + '>' for t in missing]}" if missing else f"empty {empty}"
        problems.append(f"{xml_path}: {what}; image skipped (required: {', '.join(LIFECLEF_REQUIRED)})")
        return None
    image = xml_path.parent / text["FileName"]
    if not image.is_file():
        problems.append(f"{xml_path}: <FileName> {text['FileName']} not found beside the XML; image skipped")
        return None
    split = "test" if text.get("LearnTag", "").lower() == "test" else ""
    vote = _parse_vote(text.get("Vote", ""), f"{xml_path} <Vote>", problems)
    return ImageRecord(image, text["Species"], text["ObservationId"], text["Author"], text["Content"], vote, split)


def _separate_mixed_observations(records: list[ImageRecord], problems: list[str]) -> list[ImageRecord]:
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
