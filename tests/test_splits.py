from collections import defaultdict
from pathlib import Path

import pytest

from graft.data.manifest import ImageRecord, Manifest
from graft.data.splits import assign_splits, check_trainable, has_users, hold_out_users
from graft.errors import DataError


def manifest(n_labels=3, observations=40, images=3, test_every=0):
    records = []
    for label in range(n_labels):
        for obs in range(observations):
            split = "test" if test_every and obs % test_every == 0 else ""
            for image in range(images):
                records.append(ImageRecord(Path(f"{label}/{obs}/{image}.jpg"), f"L{label}", f"{label}-{obs}", split=split))
    return Manifest(records, "synthetic")


def observations_per_split(m):
    found = defaultdict(set)
    for r in m:
        found[(r.label, r.split)].add(r.observation)
    return found


def test_split_is_three_to_one_per_label_by_observation():
    found = observations_per_split(assign_splits(manifest()))
    for label in ("L0", "L1", "L2"):
        assert len(found[(label, "train")]) == 30 and len(found[(label, "val")]) == 10


def test_observations_are_never_cut():
    splits_of = defaultdict(set)
    for r in assign_splits(manifest(observations=13, images=4)):
        splits_of[r.observation].add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())


def test_seeded_and_reproducible():
    a = [r.split for r in assign_splits(manifest(), seed=1)]
    assert a == [r.split for r in assign_splits(manifest(), seed=1)]
    assert a != [r.split for r in assign_splits(manifest(), seed=2)]


def test_data_test_part_is_kept_and_not_resplit():
    result = assign_splits(manifest(test_every=4))
    assert all((r.split == "test") == (int(r.observation.split("-")[1]) % 4 == 0) for r in result)
    found = observations_per_split(result)
    assert len(found[("L0", "val")]) == round(30 * 0.25)


def test_label_with_two_observations_gets_one_of_each():
    found = observations_per_split(assign_splits(manifest(observations=2)))
    assert len(found[("L0", "train")]) == 1 and len(found[("L0", "val")]) == 1


def test_one_class_stops_before_any_work():
    with pytest.raises(DataError, match="at least 2"):
        check_trainable(assign_splits(manifest(n_labels=1)))


def test_single_image_label_is_warned():
    m = manifest(observations=4, images=1)
    m.records.append(ImageRecord(Path("lonely.jpg"), "lonely", "lonely-0"))
    warnings = check_trainable(assign_splits(m))
    assert any("lonely" in w and "single" in w for w in warnings)


def test_an_unreadable_observation_moves_no_other_observation_between_splits():
    whole = assign_splits(manifest(observations=20))
    lost = "1-7"  # e.g. its only file was corrupt, a dangling link, or not UTF-8
    fewer = assign_splits(Manifest([r for r in manifest(observations=20) if r.observation != lost], "synthetic"))
    before = {r.observation: r.split for r in whole}
    after = {r.observation: r.split for r in fewer}
    moved = [o for o in after if after[o] != before[o]]
    assert lost not in after and len(after) == len(before) - 1
    assert len(moved) <= 1 and all(o.startswith("1-") for o in moved)  # at most the boundary of that label


def photographed(n_labels=4, users=4, observations=3, images=2):
    """Each label photographed by ``users`` photographers, each with ``observations`` observations of it."""
    return Manifest([ImageRecord(Path(f"{label}/{user}/{obs}/{i}.jpg"), f"L{label}", f"{label}-{user}-{obs}",
                                 user=f"u{user}")
                     for label in range(n_labels) for user in range(users) for obs in range(observations)
                     for i in range(images)], "photographed")


def test_split_by_user_holds_out_whole_photographers_of_a_label():
    split = assign_splits(photographed(), 0.25, seed=0, by="user")
    sides = defaultdict(set)
    for r in split:
        sides[(r.label, r.user)].add(r.split)
    assert all(len(found) == 1 for found in sides.values())  # a photographer's photos of a label are never cut
    per_label = defaultdict(list)
    for (label, _), found in sides.items():
        per_label[label].append(next(iter(found)))
    assert all(sorted(found) == ["train", "train", "train", "val"] for found in per_label.values())  # 1 of 4 users
    assert split.records == assign_splits(photographed(), 0.25, seed=0, by="user").records  # seeded


def test_one_photographer_per_label_is_held_out_as_test_and_single_photographer_labels_stay():
    records = photographed(n_labels=3, users=3).records
    lone = [ImageRecord(Path(f"lone/{i}.jpg"), "Lone", f"lone-{i}", user="u9") for i in range(4)]
    held = hold_out_users(Manifest(records + lone, "m"), seed=1)
    test = held.where("test")
    held_users = defaultdict(set)
    for r in test:
        held_users[r.label].add(r.user)
    assert {label: len(users) for label, users in held_users.items()} == {"L0": 1, "L1": 1, "L2": 1}  # not "Lone"
    assert not {(r.label, r.user) for r in test} & {(r.label, r.user) for r in held if r.split != "test"}
    assert has_users(records) and not has_users(lone)


def test_an_unknown_split_rule_is_refused():
    with pytest.raises(DataError, match="split by"):
        assign_splits(manifest(), by="camera")
