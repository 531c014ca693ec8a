"""`graft inspect`: what is in a dataset, in the spirit of fastai's ``DataBlock.summary``: counts, splits, and
unreadable files."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from graft.data.images import load_rgb
from graft.data.manifest import Manifest
from graft.errors import ImageError


@dataclass
class DataSummary:
    source: str
    schema: str
    n_images: int
    per_label: Counter
    per_view: Counter
    per_split: Counter
    observations_per_user: Counter
    n_observations: int
    unreadable: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def summarize(manifest: Manifest, check_images: bool = True) -> DataSummary:
    """Count images per label/view/split and observations per user; with ``check_images``, decode every image."""
    unreadable = []
    if check_images:
        for record in manifest:
            try:
                load_rgb(record.path)
            except ImageError as error:
                unreadable.append(str(error))
    users = Counter({})
    for user, _ in {(r.user or "(unknown)", r.observation) for r in manifest}:
        users[user] += 1
    return DataSummary(
        source=manifest.source,
        schema=manifest.schema,
        n_images=len(manifest),
        per_label=Counter(r.label for r in manifest),
        per_view=Counter(r.view or "(none)" for r in manifest),
        per_split=Counter(r.split or "(unassigned)" for r in manifest),
        observations_per_user=users,
        n_observations=len({r.observation for r in manifest}),
        unreadable=unreadable,
        problems=list(manifest.problems),
    )
