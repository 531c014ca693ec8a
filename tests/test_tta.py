import numpy as np
import pytest
import torch

import graft.features.preparation
from conftest import make_image
from graft.config import FeatureConfig
from graft.features.backbones import create_backbone
from graft.features.extract import extract_features
from graft.features.tta import DEFAULT_TTA, TTA_VIEWS, tta_views
from graft.run import load_run
from graft.training.fit import fit


@pytest.fixture
def backbone():
    return create_backbone("test_efficientnet", pretrained=False, image_size=32)


@pytest.fixture
def images(tmp_path):
    return [make_image(tmp_path / f"{i}.png", (40 * i % 255, 120, 60), i) for i in range(5)]


def extract(paths, backbone, cache, tta=()):
    return extract_features(paths, backbone, FeatureConfig(cache_dir=str(cache), batch_size=4, num_workers=0), tta=tta)


def test_original_view_is_the_plain_feature_bit_for_bit(tmp_path, images, backbone):
    plain = extract(images, backbone, tmp_path / "cache")
    with_tta = extract(images, backbone, tmp_path / "cache", DEFAULT_TTA)
    assert with_tta.features.shape == (5, 6, backbone.num_features)
    assert np.array_equal(with_tta.features[:, 0], plain.features)
    assert with_tta.extracted == 5 * 5  # only the five new views per image: the originals came from the cache


def test_identity_only_tta_equals_plain_prediction(folder_data, tiny_config, tmp_path):
    fit(folder_data, tmp_path / "run", tiny_config)
    model = load_run(tmp_path / "run")
    plain = model.features(sorted((folder_data / "red").glob("*.png")))
    stacked = plain.features[:, None, :]  # one view: the original
    assert np.array_equal(model.predict_proba(stacked), model.predict_proba(plain.features))


def test_each_image_is_decoded_once_and_views_are_cached(tmp_path, images, backbone, monkeypatch):
    decoded = []
    original = graft.features.preparation.load_rgb
    monkeypatch.setattr(graft.features.preparation, "load_rgb",
                        lambda path, **options: decoded.append(path) or original(path, **options))
    first = extract(images, backbone, tmp_path / "cache", DEFAULT_TTA)
    assert sorted(decoded) == sorted(images) and first.extracted == 30
    assert extract(images, backbone, tmp_path / "cache", DEFAULT_TTA).extracted == 0


def test_each_view_is_one_transform_of_the_original():
    torch.manual_seed(0)
    image = torch.rand(3, 24, 24)
    views = tta_views(image * 2 - 1, list(TTA_VIEWS), (0.5,) * 3, (0.5,) * 3)
    assert views.shape == (5, 3, 24, 24)
    assert torch.allclose((views[0] + 1) / 2, image.flip(-1), atol=1e-6)  # hflip, nothing else
    for view in views[1:]:
        assert not torch.allclose(view, image * 2 - 1)
