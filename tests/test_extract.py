from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from graft.config import FeatureConfig
from graft.features.backbones import create_backbone
from graft.features.cache import FeatureCache
from graft.features.extract import extract_features
from graft.rows import RowFile
from graft.store import CACHE_ENV, default_cache_dir


@pytest.fixture
def backbone():
    return create_backbone("test_efficientnet", pretrained=False, image_size=32)


@pytest.fixture
def images(tmp_path) -> list[Path]:
    return [make_image(tmp_path / "img" / f"{i}.png", (30 * i % 255, 90, 160), i) for i in range(10)]


def extract(paths, backbone, cache, **kwargs):
    settings = FeatureConfig(cache_dir=str(cache), batch_size=4, num_workers=0, chunk_size=4)
    return extract_features(paths, backbone, settings, **kwargs)


def test_second_pass_is_bit_identical_and_extracts_nothing(tmp_path, images, backbone):
    first = extract(images, backbone, tmp_path / "cache")
    second = extract(images, backbone, tmp_path / "cache")
    assert first.extracted == 10 and second.extracted == 0
    assert np.array_equal(first.features, second.features)


def test_changed_image_is_re_extracted_alone(tmp_path, images, backbone):
    before = extract(images, backbone, tmp_path / "cache")
    make_image(images[3], (0, 0, 0), 99)
    after = extract(images, backbone, tmp_path / "cache")
    assert after.extracted == 1
    changed = ~np.all(before.features == after.features, axis=1)
    assert changed.tolist() == [i == 3 for i in range(10)]


def test_other_backbone_never_reads_these_features(tmp_path, images, backbone):
    extract(images, backbone, tmp_path / "cache")
    other = create_backbone("test_efficientnet", pretrained=False, image_size=32, pooling="max")
    assert extract(images, other, tmp_path / "cache").extracted == 10
    bigger = create_backbone("test_efficientnet", pretrained=False, image_size=48)
    assert extract(images, bigger, tmp_path / "cache").extracted == 10


def test_killed_run_keeps_finished_chunks(tmp_path, images, backbone):
    def die_after_two_batches(done, total):
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(images, backbone, tmp_path / "cache", progress=die_after_two_batches)
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # nothing half-written
    # chunks of 4 are written before progress is reported: both finished chunks survived, only 2 images remain
    assert extract(images, backbone, tmp_path / "cache").extracted == 2


def test_bad_image_is_skipped_and_listed(tmp_path, images, backbone):
    broken = tmp_path / "img" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    result = extract([*images, broken], backbone, tmp_path / "cache")
    assert result.paths == images and broken in result.failures
    assert "broken.png" in result.failures[broken]


def test_duplicate_bytes_extracted_once(tmp_path, images, backbone):
    copy = tmp_path / "copy.png"
    copy.write_bytes(images[0].read_bytes())
    result = extract([images[0], copy], backbone, tmp_path / "cache")
    assert result.extracted == 1 and np.array_equal(result.features[0], result.features[1])


def test_cache_location_from_environment(tmp_path, monkeypatch, backbone):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    assert FeatureCache(None, backbone).directory.parent == tmp_path / "env-cache"


def test_cache_reads_never_map_chunks_into_memory(tmp_path, images, backbone):
    """Mapped pages count as the process's memory once touched: a pass over a big cache must not grow RSS by it."""
    first = extract(images, backbone, tmp_path / "cache")
    cache = FeatureCache(tmp_path / "cache", backbone, FeatureConfig().decode)
    rows = cache.get(list(cache._index))
    mapped = Path("/proc/self/maps").read_text()
    assert len(rows) == len(images) and not any(str(chunk) in mapped for chunk in cache._arrays)
    assert np.array_equal(extract(images, backbone, tmp_path / "cache").features, first.features)


def test_features_can_go_to_a_row_file_instead_of_memory(tmp_path, images, backbone):
    in_memory = extract(images, backbone, tmp_path / "cache")
    on_disk = extract(images, backbone, tmp_path / "cache", rows_to=tmp_path / "rows.npy")
    assert isinstance(on_disk.features, RowFile) and np.array_equal(np.load(tmp_path / "rows.npy"), in_memory.features)
    assert np.array_equal(on_disk.rows_for(images[3:6]), in_memory.rows_for(images[3:6]))
    both = create_backbone("test_efficientnet+test_efficientnet", pretrained=False, image_size=32)
    concatenated = extract(images, both, tmp_path / "cache", rows_to=tmp_path / "both.npy")
    assert np.array_equal(concatenated.features.take(), np.hstack([in_memory.features, in_memory.features]))
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["both.npy", "rows.npy"]  # members' files removed


def test_concatenated_backbones_reuse_each_members_cache(tmp_path, images, backbone):
    alone = extract(images, backbone, tmp_path / "cache")
    both = create_backbone("test_efficientnet+test_efficientnet", pretrained=False, image_size=32)
    together = extract(images, both, tmp_path / "cache")
    assert together.extracted == 0  # each member's features were cached by the single-backbone pass
    assert np.array_equal(together.features, np.hstack([alone.features, alone.features]))
    assert both.num_features == 2 * backbone.num_features


def test_reduced_jpeg_decoding_is_close_to_full_decoding_and_cached_apart(tmp_path, backbone):
    from PIL import Image

    rng = np.random.default_rng(1)
    paths = []
    for i in range(3):
        small = np.clip(rng.normal(110 + 40 * i, 30, (24, 32, 3)), 0, 255).astype(np.uint8)
        path = tmp_path / f"photo{i}.jpg"
        Image.fromarray(small).resize((1600, 1200), Image.BICUBIC).save(path, quality=92)  # smooth, like a photo
        paths.append(path)

    def run(decode):
        settings = FeatureConfig(cache_dir=str(tmp_path / "cache"), batch_size=4, num_workers=0, decode=decode)
        return extract_features(paths, backbone, settings)

    full, reduced = run("full"), run("reduced")
    assert full.extracted == 3 and reduced.extracted == 3  # the decode mode is part of the cache key
    assert run("reduced").extracted == 0 and run("full").extracted == 0
    cosine = (full.features * reduced.features).sum(1) / (
        np.linalg.norm(full.features, axis=1) * np.linalg.norm(reduced.features, axis=1))
    assert cosine.min() > 0.99 and not np.array_equal(full.features, reduced.features)


def test_a_reused_open_cache_sees_the_chunks_other_writers_added(folder_data, tmp_path):
    paths = sorted(folder_data.rglob("*.png"))
    backbone = create_backbone("test_efficientnet", pretrained=False, image_size=32)
    settings = FeatureConfig(cache_dir=str(tmp_path / "cache"))
    mine = FeatureCache(settings.cache_dir, backbone, settings.decode)  # opened (indexed) while still empty
    assert extract_features(paths, backbone, settings).extracted == len(paths)  # another writer fills it
    assert extract_features(paths, backbone, settings, cache=mine).extracted == 0
