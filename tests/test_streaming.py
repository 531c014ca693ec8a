"""Head training that streams (issue 14): the heads trained from a row file on disk are the in-memory heads."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from graft.config import GraftConfig, HeadConfig
from graft.data.manifest import ImageRecord
from graft.errors import ConfigError
from graft.evaluation.metrics import score_logits, score_probabilities
from graft.model.fusion import softmax
from graft.model.head import build_head, predict_logits
from graft.rows import RowFile, write_rows
from graft.run import RunFiles, read_out_of_fold, write_out_of_fold
from graft.training.crossfit import cross_fit
from graft.training.families import Candidate, fit_head_of, out_of_fold
from graft.training.fit import fit
from graft.training.streaming import MinibatchStream, fit_linear, fit_standardize


def blobs(n: int = 600, classes: int = 6, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    return (rng.normal(size=(classes, dim))[labels] * 2 + rng.normal(size=(n, dim)) + 50).astype(np.float32), labels


def sklearn_objective(head: nn.Sequential, x: np.ndarray, y: np.ndarray, c: float) -> float:
    """scikit-learn's logistic-regression objective (mean cross-entropy + |W|^2 / 2Cn) at a fitted linear head."""
    with torch.no_grad():
        logits = head[1](head[0](torch.as_tensor(x)))
        loss = nn.functional.cross_entropy(logits, torch.as_tensor(y))
        return float(loss + (head[1].weight**2).sum() / (2 * c * len(y)))


def test_standardisation_and_prototypes_from_disk_equal_the_in_memory_ones(tmp_path):
    x, y = blobs()
    on_disk = write_rows(tmp_path / "x.npy", x)
    memory, _ = fit_head_of("prototype", x, y, 6, HeadConfig(), None, tmp_path)
    streamed, _ = fit_head_of("prototype", on_disk, y, 6, HeadConfig(), None, tmp_path)
    assert torch.allclose(memory[0].mean, streamed[0].mean, atol=1e-4)
    assert torch.allclose(memory[0].std, streamed[0].std, rtol=1e-4)
    assert np.allclose(predict_logits(memory, x), predict_logits(streamed, on_disk.take()), atol=1e-3)


def test_streamed_linear_head_is_the_in_memory_one(tmp_path):
    x, y = blobs(n=400, seed=1)
    y[y == 5] = 4  # a class the data lacks must stay impossible, as in memory
    on_disk = write_rows(tmp_path / "x.npy", x)
    config = HeadConfig(c=0.1)
    memory, _ = fit_head_of("linear", x, y, 6, config, None, tmp_path)
    streamed, _ = fit_head_of("linear", on_disk, y, 6, config, None, tmp_path)
    assert abs(sklearn_objective(streamed, x, y, 0.1) - sklearn_objective(memory, x, y, 0.1)) < 1e-4
    assert (predict_logits(streamed, x).argmax(1) == predict_logits(memory, x).argmax(1)).mean() >= 0.98
    assert (predict_logits(streamed, x)[:, 5] < -20).all() and (predict_logits(memory, x)[:, 5] < -20).all()


def test_an_epoch_of_a_stream_is_every_row_once_in_a_new_order(tmp_path):
    x, y = blobs(n=50)
    stream = MinibatchStream(write_rows(tmp_path / "x.npy", x), y, batch_size=8, seed=0)
    epochs = [list(stream), list(stream)]
    assert len(epochs[0]) == len(stream) == 7
    for batches in epochs:
        rows = torch.cat([features for features, _ in batches]).numpy()
        assert sorted(map(tuple, rows)) == sorted(map(tuple, x))
        assert all(np.array_equal(y[[np.flatnonzero((x == r).all(1))[0] for r in f.numpy()]], t.numpy())
                   for f, t in batches)
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])


def test_streamed_mlp_learns_like_the_in_memory_one(tmp_path):
    x, y = blobs(n=600, seed=2)
    on_disk = write_rows(tmp_path / "x.npy", x)
    config = HeadConfig(width=32, epochs=8)
    memory, _ = fit_head_of("mlp", x, y, 6, config, None, tmp_path)
    streamed, _ = fit_head_of("mlp", on_disk, y, 6, config, None, tmp_path)
    accuracy = [(predict_logits(h, x).argmax(1) == y).mean() for h in (memory, streamed)]
    assert accuracy[1] > 0.9 and abs(accuracy[0] - accuracy[1]) < 0.05


def test_out_of_fold_from_disk_equals_in_memory_for_a_deterministic_head(tmp_path):
    x, y = blobs(n=120)
    fold = np.arange(120) % 4
    family = [Candidate("prototype", 20.0)]
    memory = out_of_fold(family, x, y, fold, 6, HeadConfig(), None, tmp_path).logits[family[0]]
    streamed = out_of_fold(family, write_rows(tmp_path / "x.npy", x), y, fold, 6, HeadConfig(), None,
                           tmp_path).logits[family[0]]
    assert np.allclose(memory, streamed, atol=1e-3)


def streaming_config(config: GraftConfig, **head) -> GraftConfig:
    return config.model_copy(update={"head": config.head.model_copy(update={"memory_mb": 0, **head})})


def test_fit_streams_the_training_features_beyond_head_memory_mb_and_cleans_up(folder_data, tiny_config, tmp_path):
    result = fit(folder_data, tmp_path / "run", streaming_config(tiny_config))
    assert result.results["features_streamed"] is True
    assert not list(Path(tiny_config.features.cache_dir).glob("rows-*"))  # the row file went with the fit
    kept = fit(folder_data, tmp_path / "run2", tiny_config).results
    assert kept["features_streamed"] is False
    for index in range(3):  # the linear head's C grid, on disk and in memory
        scores = [{k: v for k, v in row.items() if k != "seconds"} for row in
                  (result.results["head_selection"][index], kept["head_selection"][index])]
        assert scores[0]["head"].startswith("linear") and scores[0] == scores[1]  # the same numbers


def test_augmented_views_with_streaming_is_refused_before_any_work(folder_data, tiny_config, tmp_path):
    config = streaming_config(tiny_config)
    config = config.model_copy(update={"features": config.features.model_copy(update={"train_views": 1})})
    with pytest.raises(ConfigError, match=r"raise head\.memory_mb or set train_views 0"):
        fit(folder_data, tmp_path / "run", config)
    assert not (Path(tiny_config.features.cache_dir)).exists()


def observation_records(n_observations: int, images: int, classes: int, seed: int = 0) -> list[ImageRecord]:
    labels = np.random.default_rng(seed).integers(0, classes, n_observations)
    return [ImageRecord(Path(f"o{o}/{i}.jpg"), f"L{labels[o]}", f"o{o}", user=f"u{o % 7}")
            for o in range(n_observations) for i in range(images)]


def test_scores_of_logits_on_disk_equal_the_in_memory_scores(tmp_path):
    records = observation_records(40, 3, 5)
    logits = np.random.default_rng(1).normal(size=(len(records), 5)).astype(np.float32) * 3
    names = [f"L{k}" for k in range(5)]
    on_disk = write_rows(tmp_path / "logits.npy", logits)
    for rule in ("mean", "geometric"):
        memory = score_probabilities(softmax(logits), records, names, rule)
        chunked = score_logits(on_disk, records, names, rule, rows_per_chunk=10)  # 4 chunks of whole observations
        assert chunked.keys() == memory.keys()
        for key in ("S", "top1", "top3", "top5", "image_top1"):
            assert chunked[key] == pytest.approx(memory[key], abs=1e-9), key
        for key in ("n_observations", "n_images", "n_users", "fusion"):
            assert chunked[key] == memory[key], key
        for ours, theirs in zip(chunked["coverage"], memory["coverage"], strict=True):
            assert ours == pytest.approx(theirs, nan_ok=True)


def test_out_of_fold_logits_of_features_on_disk_go_to_disk_and_only_the_chosen_stay(tmp_path):
    records = observation_records(60, 2, 4)
    y = np.array([int(r.label[1:]) for r in records])
    x = (np.random.default_rng(0).normal(size=(4, 8))[y] + np.random.default_rng(1).normal(size=(len(y), 8)))
    on_disk = write_rows(tmp_path / "x.npy", x.astype(np.float32))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    config = HeadConfig(kind="linear", c_grid=[0.01, 1.0], folds=3)
    streamed = cross_fit(on_disk, y, records, [f"L{k}" for k in range(4)], config, None, "mean", scratch=scratch)
    memory = cross_fit(x.astype(np.float32), y, records, [f"L{k}" for k in range(4)], config, None, "mean")
    assert isinstance(streamed.logits, RowFile) and list(scratch.iterdir()) == [streamed.logits.path]
    assert streamed.chosen == memory.chosen
    assert (streamed.logits.take().argmax(1) == memory.logits.argmax(1)).mean() > 0.95
    run = RunFiles(tmp_path / "run")
    run.root.mkdir()
    write_out_of_fold(run, [r.path for r in records], streamed.logits, streamed.fold)
    paths, saved = read_out_of_fold(run.root)
    assert paths == [r.path.resolve() for r in records] and np.array_equal(saved, streamed.logits.take())


def test_a_linear_head_started_from_the_previous_c_reaches_the_same_optimum_in_fewer_evaluations():
    x, y = blobs(n=400, seed=2)
    head = build_head(x.shape[1], 6, HeadConfig(kind="linear"))
    fit_standardize(head[0], x)
    previous = nn.Linear(x.shape[1], 6)
    fit_linear(previous, x, y, 0.01, None, -30.0, head[0])  # the C grid's previous point
    cold, warm = nn.Linear(x.shape[1], 6), nn.Linear(x.shape[1], 6)
    cold_evaluations = fit_linear(cold, x, y, 0.1, None, -30.0, head[0])
    warm_evaluations = fit_linear(warm, x, y, 0.1, None, -30.0, head[0], start=previous)
    assert warm_evaluations < cold_evaluations
    objectives = [sklearn_objective(nn.Sequential(head[0], linear), x, y, 0.1) for linear in (cold, warm)]
    assert objectives[1] == pytest.approx(objectives[0], abs=1e-4)
