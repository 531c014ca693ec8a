"""The weights' eval transform in PIL and numpy, for serving an ONNX export without torch.

timm's eval transform (resize the shorter side to ``input / crop_pct``, crop the centre, scale to [0, 1], normalise)
is torchvision's PIL resize and crop followed by float32 arithmetic, so it can be written without torch and agree to
the bit (tests/test_eval_transform.py compares the two). Importing timm means importing torch and torchvision - about
6 s of a 2-core machine's time before ``graft predict`` can answer for one photo; an ONNX export needs neither.
Framings other than the centre crop, and interpolations PIL names differently, return None: the caller uses timm's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def centre_crop_transform(data_config: dict) -> Callable[[Image.Image], np.ndarray] | None:
    """``image -> [C, H, W]`` float32, equal to ``timm.data.create_transform(**data_config, is_training=False)``
    for a square input, centre crop and no padding; None where timm's transform must be used instead."""
    _, height, width = data_config["input_size"]
    crop_pct = data_config.get("crop_pct") or 0.875
    side = math.floor(height / crop_pct)
    resample = _RESAMPLE.get(data_config.get("interpolation", "bilinear"))
    if (height != width or data_config.get("crop_mode", "center") not in (None, "center") or side < height
            or resample is None):
        return None
    mean = np.asarray(data_config["mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(data_config["std"], np.float32).reshape(-1, 1, 1)

    def transform(image: Image.Image) -> np.ndarray:
        w, h = image.size  # torchvision's shorter-side resize: the longer side is truncated, not rounded
        size = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
        resized = image.resize(size, resample)
        top, left = round((size[1] - height) / 2.0), round((size[0] - width) / 2.0)  # torchvision: round half even
        pixels = np.asarray(resized.crop((left, top, left + width, top + height)), np.uint8)
        return (pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255) - mean) / std

    return transform
