"""How cross-fitting chooses (issue 37): rows no head could predict are left out; candidates level within the
noise go to the most robust family; folds by photographer keep a photographer's photos of a species together."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from graft.config import HeadConfig
from graft.data.manifest import ImageRecord
from graft.training.choice import robust_choice, scorable_rows, standard_error
from graft.training.crossfit import fold_of, group_by


def row(kind: str, s: float, folds: list[float], head: str | None = None) -> dict:
    return {"kind": kind, "head": head or f"{kind} {s}", "S": s, "fold_S": folds}


def test_a_row_whose_class_its_fold_never_saw_is_left_out():
    labels = np.array([0, 0, 1, 1, 2])  # class 2 has one image: its fold's training part has none
    folds = np.array([[0, 1, 0, 1, 0]])
    assert scorable_rows(folds, labels).tolist() == [True, True, True, True, False]
    repeated = np.array([[0, 1, 0, 1, 1], [0, 0, 1, 1, 1]])  # repeat 2 holds both class-0 rows out together
    assert scorable_rows(repeated, labels).tolist() == [False, False, False, False, False]


def test_candidates_level_within_the_noise_go_to_the_most_robust_family():
    linear = row("linear", 0.30, [0.20, 0.40, 0.30])
    mlp = row("mlp", 0.28, [0.30, 0.30, 0.24])  # 0.02 behind, with a per-fold spread larger than that
    assert robust_choice([linear, mlp], 1.0, ["mlp", "linear"]) is mlp
    assert robust_choice([linear, mlp], 0.0, ["mlp", "linear"]) is linear  # no noise rule: the best S
    assert robust_choice([linear, mlp], 1.0, ["linear", "mlp"]) is linear
    clear = row("linear", 0.50, [0.50, 0.50, 0.50])  # ahead in every fold by the same margin: not noise
    assert robust_choice([clear, mlp], 1.0, ["mlp", "linear"]) is clear
    assert standard_error([0.5, 0.5, 0.5], [0.3, 0.3, 0.24]) > 0 and standard_error([1.0], [0.0]) == 0.0


def test_within_a_robust_family_its_best_setting_ships():
    best = row("linear", 0.30, [0.2, 0.4, 0.3])
    short, long = row("mlp", 0.27, [0.3, 0.3, 0.21], "mlp 5"), row("mlp", 0.29, [0.3, 0.3, 0.27], "mlp 20")
    assert robust_choice([best, short, long], 1.0, ["mlp", "linear"]) is long


def photographed(labels=4, users=5, observations=2):
    return [ImageRecord(Path(f"{label}/{user}/{obs}.jpg"), f"L{label}", f"{label}-{user}-{obs}", user=f"u{user}")
            for label in range(labels) for user in range(users) for obs in range(observations)]


def test_folds_by_user_keep_a_photographers_photos_of_a_species_together():
    records = photographed()
    fold = fold_of(records, 5, seed=0, by="user")
    folds_of = defaultdict(set)
    for record, k in zip(records, fold, strict=True):
        folds_of[(record.label, record.user)].add(int(k))
    assert all(len(found) == 1 for found in folds_of.values())
    by_observation = fold_of(records, 5, seed=0)
    assert any(len({int(k) for r, k in zip(records, by_observation, strict=True) if (r.label, r.user) == pair}) > 1
               for pair in folds_of)  # by observation, a photographer's two observations may be split


def test_auto_groups_by_user_only_where_a_label_has_two_photographers():
    assert group_by(HeadConfig(), photographed()) == "user"
    lonely = [ImageRecord(Path(f"{i}.jpg"), f"L{i % 2}", f"o{i}", user="solo") for i in range(8)]
    assert group_by(HeadConfig(), lonely) == "observation"
    assert group_by(HeadConfig(group_by="observation"), photographed()) == "observation"
