"""Feature engines: ONNX Runtime gives torch's features (so caches are shared), exported once per weights identity;
decoding overlaps the forward in threads without changing a bit or holding more than a few batches."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from graft.config import FeatureConfig, ViewsConfig
from graft.data.images import MAX_PIXELS
from graft.errors import BackboneError
from graft.features import engines
from graft.features.backbones import create_backbone
from graft.features.extract import extract_features, prepared_batches
from graft.features.preparation import Preparation, decode_upload


@pytest.fixture(autouse=True)
def fresh_sessions(monkeypatch):
    """Sessions are kept per process by graph name; each test starts with none."""
    monkeypatch.setattr(engines, "_sessions", {})


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "test_efficientnet"])
def test_onnx_features_equal_torch_features_within_1e_4(name, tmp_path):
    pretrained = name == "tf_efficientnet_lite0"  # the offline ImageNet weights: the real default backbone
    backbone = create_backbone(name, pretrained=pretrained, channels_last=True)
    images = torch.randn(6, *backbone.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    onnx = engines.feature_engine(backbone, "onnx", tmp_path)
    torch_engine = engines.feature_engine(backbone, "torch", tmp_path)
    assert (onnx.name, torch_engine.name) == ("onnx", "torch")
    assert np.abs(onnx(images) - torch_engine(images)).max() < 1e-4


def test_the_graph_is_exported_once_per_weights_identity(tmp_path, monkeypatch):
    exports = []
    original = engines.export_backbone
    monkeypatch.setattr(engines, "export_backbone", lambda b, p: exports.append(p) or original(b, p))
    first = create_backbone("test_efficientnet", pretrained=False, image_size=32)
    engines.feature_engine(first, "onnx", tmp_path)
    monkeypatch.setattr(engines, "_sessions", {})  # a new process: the graph on disk is reused
    engines.feature_engine(create_backbone("test_efficientnet", pretrained=False, image_size=32), "onnx", tmp_path)
    assert len(exports) == 1 and exports[0].is_file()
    other = create_backbone("test_efficientnet", pretrained=False, image_size=32)
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)
    other.identity = "changed"  # what create_backbone computes from different weights
    engines.feature_engine(other, "onnx", tmp_path)
    assert len(exports) == 2 and exports[1] != exports[0]


def test_torch_engine_exports_nothing_and_auto_falls_back_when_export_fails(tmp_path, monkeypatch):
    backbone = create_backbone("test_efficientnet", pretrained=False, image_size=32)
    assert engines.feature_engine(backbone, "torch", tmp_path).name == "torch"
    assert not (tmp_path / "graphs").exists()

    def refuse(backbone, path):
        raise BackboneError("no ONNX for this layer")

    monkeypatch.setattr(engines, "export_backbone", refuse)
    assert engines.feature_engine(backbone, "auto", tmp_path).name == "torch"
    with pytest.raises(BackboneError, match="no ONNX"):
        engines.feature_engine(backbone, "onnx", tmp_path)
    with pytest.raises(BackboneError, match="unknown feature engine"):
        engines.feature_engine(backbone, "tensorrt", tmp_path)


def test_one_cache_serves_both_engines(folder_data, tmp_path):
    paths = sorted(folder_data.rglob("*.png"))[:6]
    backbone = create_backbone("test_efficientnet", pretrained=False, image_size=32)
    by_torch = extract_features(paths, backbone, FeatureConfig(cache_dir=str(tmp_path), engine="torch"))
    by_onnx = extract_features(paths, backbone, FeatureConfig(cache_dir=str(tmp_path), engine="onnx"))
    assert by_torch.extracted == 6 and by_onnx.extracted == 0
    fresh = extract_features(paths, backbone, FeatureConfig(cache_dir=str(tmp_path / "other"), engine="onnx"))
    assert np.abs(fresh.features - by_torch.features).max() < 1e-4


def test_decode_threads_change_no_bit_of_the_features(folder_data, tmp_path):
    paths = sorted(folder_data.rglob("*.png"))
    backbone = create_backbone("test_efficientnet", pretrained=False, image_size=32)
    results = [extract_features(paths, backbone, FeatureConfig(cache_dir=str(tmp_path / str(threads)), batch_size=4,
                                                               num_workers=threads)).features for threads in (0, 2)]
    np.testing.assert_array_equal(results[0], results[1])


class _Counting(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n, self.prepared = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        self.prepared += 1
        return index, torch.zeros(1, 3, 2, 2), "", np.zeros(4, np.float32)


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_prepared_batches_keep_order_and_hold_at_most_threads_plus_one_batches(threads):
    dataset, batch = _Counting(40), 4
    seen = []
    for consumed, (indices, *_rest) in enumerate(prepared_batches(dataset, batch, threads), start=1):
        seen.extend(indices)
        assert dataset.prepared <= (consumed + threads) * batch
    assert seen == list(range(40))


def _jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_uploads_decode_down_to_what_the_backbone_needs_but_cropped_views_keep_every_pixel():
    config = {"input_size": (3, 224, 224), "crop_pct": 0.875, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    views = ViewsConfig(enabled=True)
    reduced = Preparation(lambda image: image, config, views, decode_side=256)
    full = Preparation(lambda image: image, config, views, decode_side=None)
    photo = _jpeg(4000, 3000)
    assert decode_upload(photo, "p.jpg", "", [reduced], MAX_PIXELS).size == (500, 375)  # 1/8 scale, >= 256 px
    assert decode_upload(photo, "p.jpg", "", [full], MAX_PIXELS).size == (4000, 3000)
    assert decode_upload(photo, "p.jpg", "", [reduced, full], MAX_PIXELS).size == (4000, 3000)
    assert decode_upload(photo, "p.jpg", "Leaf", [reduced], MAX_PIXELS).size == (4000, 3000)  # its crop box is full-res
