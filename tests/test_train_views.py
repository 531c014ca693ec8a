"""features.train_views: K augmented views per training image, cached once, deterministic, trained on beside the
originals while cross-fitting scores originals only."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from graft.config import AugmentConfig
from graft.features.augment import augmented_names, augmented_views
from graft.features.cache_maintenance import cache_info
from graft.run import RunFiles
from graft.training import families
from graft.training.fit import fit

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def test_augmented_views_are_deterministic_per_image_and_name_and_leave_the_global_rngs_alone():
    config = AugmentConfig(p=1.0)  # always one group: every view differs from the original
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    names = augmented_names(config, 4)
    random.seed(7)
    torch.manual_seed(7)
    first = augmented_views(image, names, config, MEAN, STD)
    after = (random.random(), torch.rand(1).item())
    random.seed(7)
    torch.manual_seed(7)
    assert (random.random(), torch.rand(1).item()) == after  # the call drew nothing from the global streams
    with ThreadPoolExecutor(4) as pool:  # decode threads make them concurrently
        again = list(pool.map(lambda _: augmented_views(image, names, config, MEAN, STD), range(8)))
    assert all(torch.equal(first, other) for other in again)
    assert not any(torch.equal(first[i], first[j]) for i in range(4) for j in range(i + 1, 4))
    assert not any(torch.equal(view, image) for view in first)


def test_the_names_change_with_the_augmentation_settings():
    assert augmented_names(AugmentConfig(), 2) != augmented_names(AugmentConfig(p=0.5), 2)
    assert len(set(augmented_names(AugmentConfig(), 3))) == 3


def test_fit_trains_on_cached_augmented_views_and_scores_originals_only(folder_data, tiny_config, tmp_path, monkeypatch):
    trained_rows = []
    original = families.fit_head_of
    monkeypatch.setattr(families, "fit_head_of", lambda kind, x, *a, **k: trained_rows.append(len(x)) or original(
        kind, x, *a, **k))
    config = tiny_config.updated({"features.train_views": 2, "finetune.augment": {"p": 1.0}, "head.kind": "linear",
                                  "head.c_grid": [1.0]})
    result = fit(folder_data, tmp_path / "run", config)
    n_train = result.results["n_train_images"]
    folds = config.head.folds
    assert trained_rows[:folds] and all(rows % 3 == 0 for rows in trained_rows[:folds])  # each kept row + 2 copies
    assert sum(trained_rows[:folds]) == 3 * n_train * (folds - 1)
    with np.load(RunFiles(tmp_path / "run").out_of_fold) as saved:
        assert len(saved["logits"]) == n_train  # only originals are predicted out of fold
    store = next(s for s in cache_info(config.features.cache_dir).stores if s.name == "test_efficientnet")
    assert store.rows == n_train + result.results["n_images"] + 2 * n_train  # every image, and 2 views per training one
    fit(folder_data, tmp_path / "again", config)  # the views are cached: nothing new is written
    assert next(s for s in cache_info(config.features.cache_dir).stores if s.name == "test_efficientnet").rows == \
        store.rows


def test_without_train_views_nothing_is_augmented(folder_data, tiny_config, tmp_path):
    result = fit(folder_data, tmp_path / "run", tiny_config).results
    store = next(s for s in cache_info(tiny_config.features.cache_dir).stores if s.name == "test_efficientnet")
    assert store.rows == result["n_train_images"] + result["n_images"]
