"""The ONNX engine's eval transform (PIL + numpy) is timm's to the bit, and declines what it does not reproduce."""

from __future__ import annotations

import numpy as np
import pytest
import timm
from PIL import Image

from graft.features.eval_transform import centre_crop_transform

LITE0 = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
         "crop_pct": 0.875, "crop_mode": "center"}
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@pytest.mark.parametrize("data_config", [
    LITE0,
    LITE0 | {"input_size": (3, 320, 320)},  # the recipe's size
    LITE0 | IMAGENET | {"interpolation": "bilinear"},
    LITE0 | {"crop_pct": 1.0, "input_size": (3, 32, 32)},
    LITE0 | {"crop_pct": 0.95, "input_size": (3, 240, 240), "crop_mode": None},
])
@pytest.mark.parametrize("size", [(341, 512), (512, 341), (256, 256), (300, 299), (257, 1000), (4000, 3000)])
def test_the_centre_crop_equals_timms_eval_transform(data_config, size):
    pixels = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    ours = centre_crop_transform(data_config)(image)
    theirs = timm.data.create_transform(**data_config, is_training=False)(image).numpy()
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("change", [{"crop_mode": "squash"}, {"crop_mode": "border"}, {"input_size": (3, 224, 256)},
                                    {"interpolation": "random"}, {"crop_pct": 1.2}])
def test_other_framings_are_left_to_timm(change):
    assert centre_crop_transform(LITE0 | change) is None
