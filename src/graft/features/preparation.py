"""One preprocessing path per image: decode -> per-view crop -> the backbone's transform -> test-time augmentations.

Extraction, fine-tuning and serving all prepare images through :class:`Preparation`, so a model is never served an
image prepared differently from the ones it was trained on. A transform may give torch tensors (timm's) or numpy
arrays (:mod:`graft.features.eval_transform`, for an ONNX export): torch is imported only for test-time and
augmented copies, so serving the original view of an export never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from graft.config import AugmentConfig, ViewsConfig
from graft.data.images import MAX_PIXELS, decode_rgb, load_rgb
from graft.views.preprocess import Decision, apply, decide, params_key

if TYPE_CHECKING:
    import torch

ORIGINAL = ""  # the name of the untransformed view among test-time augmentation names


def view_names(tta: Sequence[str]) -> tuple[str, ...]:
    """The original, then the test-time augmentations: the rows :meth:`Preparation.prepare` gives per image."""
    return (ORIGINAL, *tta)


def resize_side(data_config: dict) -> int:
    """The shorter side timm's eval transform resizes to (224 px at crop_pct 0.875 -> 256)."""
    return math.floor(max(data_config["input_size"][1:]) / data_config.get("crop_pct", 1.0))


def decode_side(data_config: dict, decode: str) -> int | None:
    """The shorter side JPEGs are decoded down to: the resize side under ``reduced``, every pixel (None) under ``full``."""
    return resize_side(data_config) if decode == "reduced" else None


@dataclass
class Preparation:
    """``transform``: the backbone's eval transform (or the training transform when fine-tuning)."""

    transform: Callable[[Image.Image], torch.Tensor | np.ndarray]
    data_config: dict
    views: ViewsConfig
    decode_side: int | None = None  # decode JPEGs only down to this shorter side (None: every pixel)
    augment: AugmentConfig | None = None  # for cached augmented copies ("aug..." names)

    def prepare(self, image: Image.Image, view: str, names: Sequence[str] = (ORIGINAL,),
                decision: Decision | None = None) -> tuple[torch.Tensor | np.ndarray, Decision]:
        """``[len(names), C, H, W]`` for the view names (``""`` = the original), and the crop decision used; of the
        transform's type for the original alone, a torch tensor once other views are asked.

        ``decision``: a cached one; None decides here (the contour runs only for views that have a method).
        """
        decision = decision if decision is not None else decide(image, view, self.views)
        original = self.transform(apply(image, decision))
        if names and all(name == ORIGINAL for name in names):
            return original[None], decision
        import torch

        from graft.features.augment import AUGMENTED, augmented_views
        from graft.features.tta import tta_views

        original = torch.as_tensor(original)
        stacks = [original[None]] if ORIGINAL in names else []
        mean, std = self.data_config["mean"], self.data_config["std"]
        for name in names:  # in the order asked, so rows match names
            if name == ORIGINAL:
                continue
            if name.startswith(AUGMENTED):
                if self.augment is None:
                    raise ValueError(f"view {name!r} needs the augmentation settings")
                stacks.append(augmented_views(original, [name], self.augment, mean, std))
            else:
                stacks.append(tta_views(original, [name], mean, std))
        return torch.cat(stacks), decision

    def load(self, path: Path, view: str, names: Sequence[str] = (ORIGINAL,),
             decision: Decision | None = None) -> tuple[torch.Tensor | np.ndarray, Decision]:
        """Decode ``path`` (raises :class:`~graft.errors.ImageError` naming the file) and :meth:`prepare` it."""
        return self.prepare(load_rgb(path, min_side=self.side_for(view)), view, names, decision)

    def side_for(self, view: str) -> int | None:
        """A view that is cropped decodes every pixel: its cached box is in full-resolution coordinates."""
        return None if params_key(view, self.views) else self.decode_side

    def batch(self, images: Sequence[Image.Image], views: Sequence[str],
              names: Sequence[str]) -> torch.Tensor | np.ndarray:
        """Decoded images (uploads) -> one ``[n * len(names), C, H, W]`` batch; crops decided here, nothing cached."""
        prepared = [self.prepare(image, view, names)[0] for image, view in zip(images, views, strict=True)]
        if all(isinstance(rows, np.ndarray) for rows in prepared):
            return np.concatenate(prepared)
        import torch

        return torch.cat([torch.as_tensor(rows) for rows in prepared])

    def empty(self) -> torch.Tensor:
        """No views: what a failed image contributes to a batch."""
        import torch

        return torch.zeros(0, *self.data_config["input_size"])


def decode_upload(data: bytes, name: str, view: str, preparations: Sequence[Preparation],
                  max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode uploaded bytes the way extraction decodes files, down to the largest side any of ``preparations``
    needs (several backbones differ in resolution), so serving sees what training saw, as fast."""
    sides = [preparation.side_for(view) for preparation in preparations]
    return decode_rgb(data, name, max_pixels, None if None in sides else max(sides))
