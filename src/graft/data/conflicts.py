"""The same photo under two labels: found by content, not by path, and kept out of training.

A folder tree or CSV may hold one image's bytes twice, under different names and different labels (a copy dropped in
the wrong class folder). Trained under both labels it teaches two contradictory answers, and evaluated it is wrong
either way; so every copy is skipped and listed, as one path under two labels already is.
"""

from __future__ import annotations

from collections import defaultdict

from graft.data.manifest import Manifest
from graft.files import file_digest


def without_conflicting_copies(manifest: Manifest) -> Manifest:
    """``manifest`` less every image whose bytes also appear under another label; each listed in its problems."""
    by_digest: dict[str, list] = defaultdict(list)
    for record in manifest.records:
        try:
            by_digest[file_digest(record.path)].append(record)
        except OSError:  # unreadable here: extraction lists it with its reason
            continue
    dropped: set = set()
    problems = list(manifest.problems)
    for copies in by_digest.values():
        labels = sorted({record.label for record in copies})
        if len(labels) > 1:
            dropped.update(record.path for record in copies)
            problems.append(f"{', '.join(str(r.path) for r in copies)}: the same image under labels {labels}; all "
                            "copies skipped (one image, one label: remove the wrong copy)")
    if not dropped:
        return manifest
    kept = [record for record in manifest.records if record.path not in dropped]
    return Manifest(kept, manifest.source, problems, manifest.schema)
