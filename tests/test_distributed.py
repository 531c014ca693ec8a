"""Extraction on a local Ray cluster (2 worker processes on this machine): the cached rows are bit-identical to one
process's, a later fit performs no forwards, and a worker killed mid-run is retried with the cache left whole."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import ray

from graft.config import BackboneConfig, FeatureConfig
from graft.features.backbones import create_backbone
from graft.features.cache import FeatureCache
from graft.features.distributed import extract_on_ray
from graft.features.extract import extract_features
from graft.files import file_digest

TINY = BackboneConfig(name="test_efficientnet", pretrained=False, image_size=32)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _rows(cache: Path, paths: list[Path]) -> np.ndarray:
    store = FeatureCache(cache, create_backbone(**TINY.model_dump()), FeatureConfig().decode)
    return store.get([file_digest(p) for p in paths])


def test_ray_rows_are_bit_identical_to_one_process_and_fit_then_extracts_nothing(cluster, folder_data, tmp_path):
    paths = sorted(folder_data.rglob("*.png"))
    result = extract_on_ray(paths, TINY, FeatureConfig(cache_dir=str(tmp_path / "ray"), chunk_size=4), actors=2)
    assert (result.images, result.extracted, result.failures) == (24, 24, {})
    alone = extract_features(paths, create_backbone(**TINY.model_dump()), FeatureConfig(cache_dir=str(tmp_path / "one")))
    np.testing.assert_array_equal(_rows(tmp_path / "ray", paths), alone.features)
    again = extract_features(paths, create_backbone(**TINY.model_dump()), FeatureConfig(cache_dir=str(tmp_path / "ray")))
    assert again.extracted == 0
    assert extract_on_ray(paths, TINY, FeatureConfig(cache_dir=str(tmp_path / "ray"), chunk_size=4)).extracted == 0


def test_a_bad_image_is_listed_not_the_end_of_the_run(cluster, folder_data, tmp_path):
    broken = folder_data / "red" / "broken.png"
    broken.write_bytes(b"not a png")
    paths = sorted(folder_data.rglob("*.png"))
    result = extract_on_ray(paths, TINY, FeatureConfig(cache_dir=str(tmp_path), chunk_size=4), actors=2)
    assert list(result.failures) == [str(broken)] and "replace or remove" in result.failures[str(broken)]
    assert result.extracted == 24


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and "_Extractor" in title:
            pids.append(int(entry.name))
    return pids


def test_a_worker_killed_mid_run_is_retried_and_the_cache_stays_whole(cluster, folder_data, tmp_path):
    paths = sorted(folder_data.rglob("*.png"))
    killed = []

    def kill_one_after_the_first_batch(done: int, total: int) -> None:
        if not killed and done < total and _actor_pids():
            killed.append(_actor_pids()[0])
            os.kill(killed[0], signal.SIGKILL)

    result = extract_on_ray(paths, TINY, FeatureConfig(cache_dir=str(tmp_path / "ray"), chunk_size=2), actors=2,
                            progress=kill_one_after_the_first_batch)
    assert killed and result.failures == {}
    alone = extract_features(paths, create_backbone(**TINY.model_dump()), FeatureConfig(cache_dir=str(tmp_path / "one")))
    np.testing.assert_array_equal(_rows(tmp_path / "ray", paths), alone.features)
    chunks = list((tmp_path / "ray").rglob("*.npy"))
    assert all(chunk.with_suffix(".keys").exists() for chunk in chunks if not chunk.name.startswith("."))
