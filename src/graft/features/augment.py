"""Training augmentation as in the founding recipe: realistic transforms in groups, at most ONE group per image.

With probability ``p`` (0.8) one group is drawn at random and applied; otherwise the network sees the real image.
Stacking many transforms at once makes images the network never meets in reality and slows convergence.
Transforms are torchvision v2 and run on the float image framed as the eval transform frames it, before normalisation.
"""

from __future__ import annotations

import hashlib
import random
import threading
import zlib
from collections.abc import Sequence

import timm
import torch
from timm.data.transforms import MaybeToTensor
from torch import nn
from torchvision.transforms import Normalize, v2

from graft.config import AugmentConfig


def build_groups(config: AugmentConfig) -> dict[str, nn.Module]:
    available = {
        "hflip": lambda: v2.RandomHorizontalFlip(p=1.0),
        "rotate": lambda: v2.RandomRotation(config.rotate_degrees),
        "zoom": lambda: v2.RandomAffine(degrees=0, scale=(1.0, config.zoom)),
        "contrast": lambda: v2.ColorJitter(contrast=config.contrast),
        "brightness": lambda: v2.ColorJitter(brightness=config.brightness),
        "noise": lambda: v2.GaussianNoise(sigma=config.noise_sigma, clip=True),
    }
    return {name: available[name]() for name in config.groups}


class OneGroupAugment(nn.Module):
    """Apply one randomly chosen group with probability ``p``, else nothing. ``last_group`` tells which (tests)."""

    def __init__(self, groups: dict[str, nn.Module], p: float = 0.8, weights: list[float] | None = None):
        super().__init__()
        if weights is not None and len(weights) != len(groups):
            raise ValueError(f"{len(weights)} weights for {len(groups)} groups {list(groups)}")
        self.groups = nn.ModuleDict(groups)
        self.p, self.weights = p, weights
        self.last_group: str | None = None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.last_group = None
        if not self.groups or random.random() >= self.p:
            return image
        name = random.choices(list(self.groups), weights=self.weights)[0]
        self.last_group = name
        return self.groups[name](image)


def training_transform(data_config: dict, config: AugmentConfig) -> v2.Compose:
    """Frame the image as the weights' eval transform does (timm's own resize and crop steps, so ``crop_mode`` and
    ``crop_pct`` hold here too), augment (one group or none), then normalise."""
    eval_steps = timm.data.create_transform(**data_config, is_training=False).transforms
    framing = [step for step in eval_steps if not isinstance(step, MaybeToTensor | Normalize)]  # ours follow
    return v2.Compose([
        *framing,
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        OneGroupAugment(build_groups(config), config.p, config.weights),
        v2.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"])),
    ])


AUGMENTED = "aug"  # view names "aug<i>-<settings key>": the i-th cached augmented copy of an image
_rng_lock = threading.Lock()  # torchvision and OneGroupAugment draw from the global RNGs, shared by decode threads


def augmented_names(config: AugmentConfig, count: int) -> tuple[str, ...]:
    """Names of ``count`` augmented copies; the key of the augmentation settings is in each, so changing them (or
    graft's augmentation) makes new cache entries instead of serving stale ones."""
    key = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:10]
    return tuple(f"{AUGMENTED}{i}-{key}" for i in range(count))


def augmented_views(normalized: torch.Tensor, names: Sequence[str], config: AugmentConfig, mean, std) -> torch.Tensor:
    """The one-group augmentation (p = ``config.p``) applied to an already transformed image, once per name:
    ``[len(names), C, H, W]``. Deterministic: each view's random draws are seeded by the image's pixels and the
    view's name, under a lock, with the global RNG states restored after - so a cache entry never depends on which
    thread made it or on what ran before."""
    mean, std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    image = (normalized * std + mean).clamp(0, 1)
    augment = OneGroupAugment(build_groups(config), config.p, config.weights)
    content = zlib.crc32(image.numpy().tobytes())
    views = []
    with _rng_lock, torch.random.fork_rng(devices=[]):
        state = random.getstate()
        try:
            for name in names:
                seed = zlib.crc32(f"{content}:{name}".encode())
                torch.manual_seed(seed)
                random.seed(seed)
                views.append((augment(image).clamp(0, 1) - mean) / std)
        finally:
            random.setstate(state)
    return torch.stack(views)
