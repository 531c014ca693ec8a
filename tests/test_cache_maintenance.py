"""graft cache info / prune / verify on a real cache of features and view decisions."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from graft.cli import app
from graft.config import FeatureConfig, ViewsConfig
from graft.errors import GraftError
from graft.features.backbones import create_backbone
from graft.features.cache_maintenance import cache_info, prune, verify
from graft.features.extract import extract_features


@pytest.fixture
def cache(folder_data, tmp_path):
    paths = sorted(folder_data.rglob("*.png"))
    backbone = create_backbone("test_efficientnet", pretrained=False, image_size=32)
    settings = FeatureConfig(cache_dir=str(tmp_path / "cache"), chunk_size=8, batch_size=8)

    def extracted() -> int:
        """Extract (again): how many images needed the backbone."""
        return extract_features(paths, backbone, settings, views=["Leaf"] * len(paths),
                                view_config=ViewsConfig(enabled=True)).extracted

    assert extracted() == 24
    return tmp_path / "cache", extracted


def test_info_counts_rows_chunks_and_names_each_store(cache):
    root, *_ = cache
    report = cache_info(root)
    features = next(s for s in report.stores if s.name == "test_efficientnet")
    decisions = next(s for s in report.stores if s.name == "view decisions")
    assert (features.rows, features.chunks) == (24, 3) and decisions.rows == 24
    assert features.bytes > 24 * features.rows


def test_verify_finds_truncated_and_mismatched_chunks_and_removes_them(cache):
    root, extracted = cache
    assert verify(root) == []
    chunks = sorted(root.glob("*/*.npy"))
    chunks[0].write_bytes(chunks[0].read_bytes()[:100])  # truncated
    np.save(chunks[1], np.zeros((3, 4), np.float32))  # rows no longer match its keys
    problems = verify(root)
    assert len(problems) == 2 and "unreadable" in " ".join(problems) and "3 rows for 8 keys" in " ".join(problems)
    assert len(verify(root, remove=True)) == 2 and verify(root) == []
    assert extracted() == 16  # the dropped rows come back


def test_prune_drops_old_chunks_only_and_the_cache_still_reads(cache):
    root, extracted = cache
    old = sorted(root.glob("*/*.keys"))[0]
    week_ago = time.time() - 7 * 86_400
    os.utime(old, (week_ago, week_ago))
    removed, freed = prune(root, older_than_days=3)
    assert removed == 1 and freed > 0 and not old.exists() and not old.with_suffix(".npy").exists()
    assert extracted() == 8


def test_prune_removes_the_row_files_a_killed_streamed_fit_left_but_not_a_running_ones(tmp_path):
    week_ago = time.time() - 7 * 86_400
    dead, running = tmp_path / "rows-dead", tmp_path / "rows-running"
    for directory in (dead, running):
        directory.mkdir()
        (directory / "features.npy").write_bytes(b"x" * 1000)
        os.utime(directory / "features.npy", (week_ago, week_ago))
        os.utime(directory, (week_ago, week_ago))
    (running / "oof-linear-0.1.npy").write_bytes(b"y")  # written just now: that fit is alive
    assert prune(tmp_path, older_than_days=30) == (0, 1000)
    assert not dead.exists() and running.exists()


def test_the_cache_commands(cache):
    root, *_ = cache
    runner = CliRunner()
    shown = runner.invoke(app, ["cache", "info", "--cache-dir", str(root)])
    assert shown.exit_code == 0 and "test_efficientnet" in shown.output
    assert runner.invoke(app, ["cache", "verify", "--cache-dir", str(root)]).exit_code == 0
    sorted(root.glob("*/*.npy"))[0].write_bytes(b"junk")
    refused = runner.invoke(app, ["cache", "verify", "--cache-dir", str(root)])  # run_app turns it into exit 2
    assert isinstance(refused.exception, GraftError) and "graft cache verify --remove" in str(refused.exception)
    assert runner.invoke(app, ["cache", "prune", "--older-than", "30", "--cache-dir", str(root)]).exit_code == 0
