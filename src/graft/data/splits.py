"""Train / validation / test assignment: seeded, stratified by label, never cutting an observation in two."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter, defaultdict

from graft.data.manifest import Manifest
from graft.errors import DataError


def assign_splits(manifest: Manifest, val_fraction: float = 0.25, seed: int = 0) -> Manifest:
    """Give every record a split.

    A test part the data already names (LifeCLEF ``LearnTag=Test``, a ``split`` column) is kept; so is an explicit
    validation part. Otherwise the rest is split ``1 - val_fraction : val_fraction`` (3:1 by default) by observation:
    per label, its observations are ordered by a seeded hash of their own id and the first ``round(n * val_fraction)``
    (at least one when the label has two or more) go to validation. An observation's place in that order depends on
    nothing else, so an unreadable file elsewhere moves at most the boundary, never the whole split.
    """
    records = manifest.records
    has_val = any(r.split == "val" for r in records)
    if has_val:
        chosen_val: set[str] = set()
    else:
        chosen_val = _choose_validation(
            [(r.observation, r.label) for r in records if r.split != "test"], val_fraction, seed
        )

    def split_of(record) -> str:
        if record.split in ("test", "val") or (has_val and record.split == "train"):
            return record.split
        if has_val:
            return "train"
        return "val" if record.observation in chosen_val else "train"

    assigned = [dataclasses.replace(r, split=split_of(r)) for r in records]
    return Manifest(assigned, manifest.source, manifest.problems, manifest.schema)


def _choose_validation(observations: list[tuple[str, str]], val_fraction: float, seed: int) -> set[str]:
    by_label: dict[str, list[str]] = defaultdict(list)
    for observation, label in dict(observations).items():
        by_label[label].append(observation)
    chosen: set[str] = set()
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda observation: _rank(seed, label, observation))
        n_val = round(len(group) * val_fraction)
        if len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        chosen.update(group[:n_val])
    return chosen


def _rank(seed: int, label: str, observation: str) -> str:
    return hashlib.sha256(f"{seed}\0{label}\0{observation}".encode()).hexdigest()


def check_trainable(manifest: Manifest) -> list[str]:
    """Stop before any work when the split manifest cannot train a classifier; return warnings otherwise."""
    train = manifest.where("train")
    train_labels = Counter(r.label for r in train)
    if len(train_labels) < 2:
        raise DataError(
            f"{manifest.source}: the training part has {len(train_labels)} class(es) "
            f"({', '.join(train_labels) or 'none'}); a classifier needs at least 2. Add images of other classes."
        )
    if not manifest.where("val").records:
        raise DataError(f"{manifest.source}: no validation images; each label needs at least 2 observations")
    warnings = [
        f"label {label!r} has a single training image; it cannot be validated and will be learned poorly"
        for label, count in sorted(train_labels.items())
        if count == 1
    ]
    unseen = sorted({r.label for r in manifest if r.split in ("val", "test")} - set(train_labels))
    if unseen:
        warnings.append(f"label(s) {unseen} appear only in val/test; they can never be predicted")
    return warnings
