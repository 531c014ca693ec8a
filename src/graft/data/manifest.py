"""The manifest: one table of images (path, label, observation, user, view, vote, split) and its readers.

Readers never stop on one bad row: the row is skipped and listed in ``Manifest.problems`` with its file and line or
element, so a long run goes on and the user sees what was left out. Errors that make the whole table unusable (an
unknown CSV column, an empty folder) raise :class:`~graft.errors.DataError` at once.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

from graft.data.images import is_image_path
from graft.data.lifeclef import read_lifeclef
from graft.data.records import (
    FIELDS,
    REQUIRED_CSV_FIELDS,
    SPLIT_ALIASES,
    ImageRecord,
    Manifest,
    dangling,
    parse_vote,
    read_text,
    separate_mixed_observations,
    unreadable_name,
)
from graft.errors import DataError

__all__ = ["FIELDS", "ImageRecord", "Manifest", "load_manifest", "read_csv", "read_folder", "read_lifeclef"]


def load_manifest(data: str | Path, format: str = "auto", columns: dict[str, str] | None = None) -> Manifest:
    """Read a dataset in any supported layout: a class-per-folder tree, a CSV, a LifeCLEF / PlantCLEF XML directory
    (any year's schema), or a Hugging Face ``imagefolder`` (metadata.csv / metadata.jsonl beside the images)."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: no such file or directory; pass a dataset folder or a CSV file")
    if format == "auto":
        format = _detect_format(data)
    readers = {"folder": read_folder, "lifeclef": read_lifeclef, "imagefolder": read_imagefolder}
    if format == "csv":
        manifest = read_csv(data, columns or {})
    elif format in readers:
        manifest = readers[format](data)
    else:
        raise DataError(f"unknown data format {format!r}; expected one of auto, folder, csv, lifeclef, imagefolder")
    if not manifest.records:
        details = "\n  ".join(manifest.problems[:10])
        raise DataError(f"{data}: no usable images found (read as {format}).{' Problems:' if details else ''}\n  {details}")
    return manifest


def _detect_format(data: Path) -> str:
    if data.is_file():
        if data.suffix.lower() in (".csv", ".tsv"):
            return "csv"
        raise DataError(f"{data}: a file that is not a .csv; pass a folder (class per sub-folder or LifeCLEF XML)")
    folders = [data, *(data / split for split in SPLIT_FOLDERS if (data / split).is_dir())]
    if any((folder / name).is_file() for folder in folders for name in METADATA_FILES):
        return "imagefolder"
    for folder in folders:
        with os.scandir(folder) as entries:
            if any(entry.name.endswith(".xml") and entry.is_file() for entry in entries):
                return "lifeclef"
    return "folder"


METADATA_FILES = ("metadata.csv", "metadata.jsonl")
SPLIT_FOLDERS = {"train": "train", "test": "test", "validation": "val", "val": "val", "valid": "val"}


def read_imagefolder(root: str | Path) -> Manifest:
    """Hugging Face ``imagefolder``: images beside ``metadata.csv`` / ``metadata.jsonl`` with a ``file_name`` column
    (in the root, or in ``train/``, ``test/``, ``validation/`` folders, which give the split). The label is a
    ``label`` column, else the image's folder; graft's other fields (observation, user, view, vote, genus, family)
    are read when present."""
    root = Path(root)
    mapping = {name: name for name in FIELDS} | {"path": "file_name"}
    records, problems, where, found = [], [], {}, []
    for folder in [root, *(root / name for name in SPLIT_FOLDERS if (root / name).is_dir())]:
        for metadata in (folder / name for name in METADATA_FILES if (folder / name).is_file()):
            found.append(metadata.name)
            for line, row in _metadata_rows(metadata, problems):
                image_folder = (folder / row.get("file_name", "")).parent
                row.setdefault("label", "" if image_folder == folder else image_folder.name)
                row.setdefault("split", SPLIT_FOLDERS.get(folder.name, "") if folder != root else "")
                record = _csv_record(row, mapping, folder, f"{metadata}:{line}", problems)
                if record is not None:
                    records.append(record)
                    where.setdefault(record.path, f"{metadata}:{line}")
    records = one_row_per_image(records, where, problems)
    schema = f"Hugging Face imagefolder ({', '.join(sorted(set(found)))})"
    return Manifest(separate_mixed_observations(records, problems), str(root), problems, schema)


def _metadata_rows(path: Path, problems: list[str]):
    """(line, row) of a metadata.csv or metadata.jsonl; a JSON line that does not parse is listed and skipped."""
    text = read_text(path)
    if path.suffix == ".csv":
        yield from enumerate(({k: str(v or "") for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))),
                             start=2)
        return
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            row = json.loads(content)
        except json.JSONDecodeError as error:
            problems.append(f"{path}:{line}: not a JSON object ({error.msg}); row skipped")
            continue
        if isinstance(row, dict):
            yield line, {key: "" if value is None else str(value) for key, value in row.items()}
        else:
            problems.append(f"{path}:{line}: not a JSON object; row skipped")


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
    return Manifest(records, str(root), problems, "class-per-folder tree")


def read_csv(path: str | Path, columns: dict[str, str] | None = None) -> Manifest:
    """A CSV with one row per image. ``columns`` maps graft fields to CSV headers (default: the same names)."""
    path = Path(path)
    mapping = {name: name for name in FIELDS} | dict(columns or {})
    unknown = set(mapping) - set(FIELDS)
    if unknown:
        raise DataError(f"column mapping names unknown fields {sorted(unknown)}; graft fields are {list(FIELDS)}")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    try:
        header = reader.fieldnames or []
    except csv.Error as error:
        raise DataError(f"{path}:1: not a readable CSV header ({error}); fix the line") from error
    missing = [f"{name} (column {mapping[name]!r})" for name in REQUIRED_CSV_FIELDS if mapping[name] not in header]
    if missing:
        raise DataError(
            f"{path}: required column(s) {', '.join(missing)} not in header {header}; "
            "rename them or map them, e.g. --column label=species"
        )
    records, problems, where = [], [], {}
    for line, row in csv_rows(reader, path):
        record = _csv_record(row, mapping, path.parent, f"{path}:{line}", problems)
        if record is not None:
            records.append(record)
            where.setdefault(record.path, f"{path}:{line}")
    records = one_row_per_image(records, where, problems)
    return Manifest(separate_mixed_observations(records, problems), str(path), problems, "CSV")


def csv_rows(reader: csv.DictReader, path: Path) -> Iterator[tuple[int, dict]]:
    """(line, row) of a CSV; a malformed row (a field past the csv module's size limit, a NUL byte) stops the read
    with an error naming its line, not a traceback."""
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as error:
            raise DataError(f"{path}:{reader.line_num + 1}: not a readable CSV row ({error}); fix or remove the "
                            "line") from error
        yield reader.line_num, row


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
    vote = parse_vote(value["vote"], where, problems)
    observation = value["observation"] or value["path"]
    return ImageRecord(image, value["label"], observation, value["user"], value["view"], vote, split or "",
                       value["genus"], value["family"])


