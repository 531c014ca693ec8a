"""Test-time augmentations (as in the founding recipe): realistic, deterministic, ONE transform per view, on [0, 1] images.

The original image is not a view here: it is the plain feature, so a TTA pass reuses the plain cache. Each view
takes torchvision's ``v2`` module as an argument, imported when views are made: naming them (the command line's
``--tta``) does not load torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TTA_VIEWS = {
    "hflip": lambda image, v2: v2.functional.horizontal_flip(image),
    "rotate": lambda image, v2: v2.functional.rotate(image, 10.0, interpolation=v2.InterpolationMode.BILINEAR),
    "zoom": lambda image, v2: v2.functional.resize(
        v2.functional.center_crop(image, [round(image.shape[-2] * 0.85), round(image.shape[-1] * 0.85)]),
        list(image.shape[-2:]), interpolation=v2.InterpolationMode.BICUBIC, antialias=True).clamp(0, 1),
    "bright": lambda image, v2: v2.functional.adjust_brightness(image, 1.2),
    "contrast": lambda image, v2: v2.functional.adjust_contrast(image, 1.2),
}
DEFAULT_TTA = ("hflip", "rotate", "zoom", "bright", "contrast")


def tta_views(normalized: torch.Tensor, names: Sequence[str], mean, std) -> torch.Tensor:
    """Extra views of an already transformed (normalised) image: undo the normalisation, apply one transform each,
    normalise again. Returns ``[len(names), C, H, W]``. The original is not included (it is the plain feature)."""
    import torch
    from torchvision.transforms import v2

    mean = torch.tensor(mean).view(-1, 1, 1)
    std = torch.tensor(std).view(-1, 1, 1)
    image = (normalized * std + mean).clamp(0, 1)
    return torch.stack([(TTA_VIEWS[name](image, v2) - mean) / std for name in names])
