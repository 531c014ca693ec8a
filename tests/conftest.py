"""Shared fixtures: tiny generated datasets and a tiny seeded backbone so the suite stays fast on 2 CPUs."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.config import GraftConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def shared_dataset(name: str) -> Path:
    """``../shared/datasets/<name>``, the real plant data beside the checkout. A fresh clone has none: the test is
    skipped there with the folder named; in CI (``CI`` set), where it must exist, its absence fails the test."""
    folder = SHARED / name
    if not folder.is_dir():
        message = f"needs the real data in {folder} (absent: a clone without ../shared beside it)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must have it")
        pytest.skip(message)
    return folder
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def fixture_seed(label_index: int, image_index: int) -> int:
    """A fixed seed per fixture image (string hashing is salted per process: fixtures would differ run to run)."""
    return 1000 * label_index + image_index


def make_image(path: Path, colour: tuple[int, int, int], seed: int, size: int = 40) -> Path:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height pixels with almost no data: a decompression bomb's shape."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


@pytest.fixture
def folder_data(tmp_path: Path) -> Path:
    """root/<colour>/<n>.png: 3 classes x 8 images, separable by colour."""
    root = tmp_path / "data"
    for label_index, (label, colour) in enumerate(COLOURS.items()):
        for i in range(8):
            make_image(root / label / f"{i}.png", colour, seed=fixture_seed(label_index, i))
    return root


@pytest.fixture
def tiny_config(tmp_path: Path) -> GraftConfig:
    """timm's test_efficientnet with seeded random weights at 32 px, a short head schedule, a private cache; one
    cross-fitting pass (auto would repeat it 3 times on these 8 images per class: tests that need it say so)."""
    return GraftConfig.from_dict({
        "backbone": {"name": "test_efficientnet", "pretrained": False, "image_size": 32},
        "features": {"cache_dir": str(tmp_path / "cache"), "batch_size": 8, "num_workers": 0, "chunk_size": 8},
        "head": {"epochs": 6, "min_epochs": 2, "patience": 3, "width": 32, "repeats": 1},
    })


# -- a served app, for the serving tests ------------------------------------------------------------------------------

def ready_client(app):
    """A TestClient of ``app`` whose model has loaded (/health 200)."""
    from fastapi.testclient import TestClient

    client = TestClient(app)
    client.__enter__()
    return loaded(client)


def loaded(client):
    for _ in range(2400):  # 120 s: loading competes for 2 cores with the rest of a full test run
        health = client.get("/health")
        if health.status_code == 200:
            return client
        time.sleep(0.05)
    raise AssertionError(f"model never loaded: {health.status_code} {health.text}")


def png(colour=(200, 40, 40), size=(40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()
