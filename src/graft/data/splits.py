"""Train / validation / test assignment: seeded, stratified by label, never cutting an observation in two."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable

from graft.data.manifest import ImageRecord, Manifest
from graft.errors import DataError

SPLIT_BY = ("observation", "user")


def group_of(record, by: str = "observation") -> str:
    """What a split or a fold never cuts in two: the observation, or (``by="user"``) everything one photographer took
    of the label - a flora app meets photographers it has never seen, and a photographer's other plant of a species
    teaches more about their photos than about the species. Records without a user fall back to their observation."""
    if by == "user" and record.user:
        return f"user\0{record.user}\0{record.label}"
    return f"observation\0{record.observation}"


def has_users(records: Iterable[ImageRecord]) -> bool:
    """Whether some label was photographed by two or more users: only then can whole photographers be held out."""
    users: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.user:
            users[record.label].add(record.user)
    return any(len(seen) >= 2 for seen in users.values())


def assign_splits(manifest: Manifest, val_fraction: float = 0.25, seed: int = 0, by: str = "observation") -> Manifest:
    """Give every record a split.

    A test part the data already names (LifeCLEF ``LearnTag=Test``, a ``split`` column) is kept; so is an explicit
    validation part. Otherwise the rest is split ``1 - val_fraction : val_fraction`` (3:1 by default) by group
    (:func:`group_of`: the observation, or with ``by="user"`` the photographer of the label): per label, its groups
    are ordered by a seeded hash of their own id and the first ``round(n * val_fraction)`` (at least one when the
    label has two or more) go to validation. A group's place in that order depends on nothing else, so an unreadable
    file elsewhere moves at most the boundary, never the whole split.
    """
    if by not in SPLIT_BY:
        raise DataError(f"split by {by!r}: use one of {', '.join(SPLIT_BY)}")
    records = manifest.records
    has_val = any(r.split == "val" for r in records)
    if has_val:
        chosen_val: set[tuple[str, str]] = set()
    else:
        chosen_val = _choose_groups([(group_of(r, by), r.label) for r in records if r.split != "test"], val_fraction,
                                    seed)

    def split_of(record) -> str:
        if record.split in ("test", "val") or (has_val and record.split == "train"):
            return record.split
        if has_val:
            return "train"
        return "val" if (group_of(record, by), record.label) in chosen_val else "train"

    assigned = [dataclasses.replace(r, split=split_of(r)) for r in records]
    return Manifest(assigned, manifest.source, manifest.problems, manifest.schema)


def hold_out_users(manifest: Manifest, seed: int = 0, split: str = "test", users_per_label: int = 1) -> Manifest:
    """Deployment's test: for every label photographed by two or more users, everything ``users_per_label`` of them
    (a seeded choice) took of it becomes ``split``; the rest is unassigned, for :func:`assign_splits`. Labels with a
    single photographer stay whole in training: no photographer of theirs can be new."""
    users: dict[str, list[str]] = defaultdict(list)
    for record in manifest.records:
        if record.user and record.user not in users[record.label]:
            users[record.label].append(record.user)
    held: set[tuple[str, str]] = set()
    for label, seen in users.items():
        if len(seen) >= 2:
            ranked = sorted(seen, key=lambda user: _rank(seed, label, user))
            held.update((label, user) for user in ranked[: min(users_per_label, len(seen) - 1)])
    assigned = [dataclasses.replace(r, split=split if (r.label, r.user) in held else "") for r in manifest.records]
    return Manifest(assigned, manifest.source, manifest.problems, manifest.schema)


def _choose_groups(groups: list[tuple[str, str]], val_fraction: float, seed: int) -> set[tuple[str, str]]:
    """(group, label) pairs for validation: per label, the first ``round(n * val_fraction)`` of its groups in a seeded
    order (at least one, and never all, where it has two or more)."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for group, label in dict.fromkeys(groups):
        by_label[label].append(group)
    chosen: set[tuple[str, str]] = set()
    for label in sorted(by_label):
        ordered = sorted(by_label[label], key=lambda group: _rank(seed, label, group.split("\0", 1)[1]))
        n_val = round(len(ordered) * val_fraction)
        if len(ordered) >= 2:
            n_val = min(max(n_val, 1), len(ordered) - 1)
        chosen.update((group, label) for group in ordered[:n_val])
    return chosen


def _rank(seed: int, label: str, key: str) -> str:
    return hashlib.sha256(f"{seed}\0{label}\0{key}".encode()).hexdigest()


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
