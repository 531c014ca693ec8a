"""CLIP-style image towers (open_clip) as backbones: ``--backbone open_clip:NAME``, features = the image embedding.

NAME is an open_clip model (``ViT-B-16``; its pretrained weights by tag, ``open_clip:ViT-B-16@laion2b_s34b_b88k``, or
a file, ``--weights``), or a model on the Hugging Face hub or in a folder with open_clip's config and weights
(``open_clip:hf-hub:imageomics/bioclip``, BioCLIP: a ViT-B/16 trained on the Tree of Life; ``open_clip:local-dir:/p``).
Only the image tower is kept. Its preprocessing (size, mean/std, interpolation, how the image is fitted) becomes a
timm data config, so extraction, fine-tuning and serving prepare images as for any backbone, and the weights'
identity keys the feature cache as for timm models. open_clip is an optional extra: ``pip install 'graft[clip]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.errors import BackboneError

PREFIX = "open_clip:"
SCHEMAS = ("hf-hub:", "local-dir:")
# open_clip's resize_mode -> timm's crop_mode: resize the short side and crop the centre; fit whole and pad; squash
CROP_MODES = {"shortest": "center", "longest": "border", "squash": "squash"}


class ClipImageTower(nn.Module):
    """An open_clip image tower: images -> the embedding CLIP compares with text (``num_features`` wide)."""

    def __init__(self, visual: nn.Module, embed_dim: int):
        super().__init__()
        self.visual = visual
        self.num_features = embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter grouping (layer-wise LR decay, ``finetune.train_blocks``): the stem, then each block of
        a ViT tower (``resblocks.N``), a ResNet tower (``layerN``) or a timm trunk (``blocks.N``/``stages.N``);
        the pooling and projection come last."""
        return {"stem": r"^visual\.(?:conv1|class_embedding|positional_embedding|ln_pre|bn\d|conv\d|trunk\.patch_embed|"
                        r"trunk\.stem|trunk\.cls_token|trunk\.pos_embed)",
                "blocks": [(r"^visual\.transformer\.resblocks\.(\d+)", None), (r"^visual\.layer(\d+)", None),
                           (r"^visual\.trunk\.(?:blocks|stages)\.(\d+)", None)]}


def is_clip(name: str) -> bool:
    return name.startswith(PREFIX)


def build(name: str, weights: Path | None, pretrained: bool, image_size: int | None) -> tuple[ClipImageTower, dict]:
    """The image tower of ``open_clip:NAME`` and its preprocessing as a timm data config."""
    try:
        import open_clip
    except ImportError as error:
        raise BackboneError(f"{name} needs open_clip: pip install 'graft[clip]' (open-clip-torch)") from error
    model_name, _, tag = name[len(PREFIX):].partition("@")
    schema = model_name.startswith(SCHEMAS)
    if not schema and model_name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if model_name.split("-")[0].lower() in m.lower()][:5]
        raise BackboneError(f"unknown open_clip model {model_name!r}; names such as {close or open_clip.list_models()[:5]}"
                            ", or open_clip:hf-hub:ORG/REPO")
    source = str(weights) if weights else tag or None
    if weights is not None and not weights.is_file():
        raise BackboneError(f"weights file {weights} not found; pass an existing .pt/.bin/.safetensors file")
    if pretrained and not schema and source is None:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise BackboneError(f"open_clip:{model_name} names an architecture, not weights: add a pretrained tag "
                            f"(open_clip:{model_name}@{tags[0] if tags else 'TAG'}; its tags: {tags[:6]}) or --weights "
                            "FILE")
    options = {"force_image_size": image_size} if image_size else {}
    try:
        with torch.random.fork_rng():  # random weights (tests, smoke runs) are seeded, so a run reloads them
            torch.manual_seed(0)
            model = open_clip.create_model(model_name, pretrained=source if pretrained or weights else None,
                                           load_weights=pretrained or weights is not None, weights_only=True, **options)
    except Exception as error:  # hub, file and config errors come in many types
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise BackboneError(f"cannot build {name} ({type(error).__name__}: {first[:200]}); offline, use a local "
                            "file with --weights or open_clip:local-dir:/path") from error
    tower = ClipImageTower(model.visual, int(model.visual.output_dim)).eval()
    return tower, data_config(open_clip.get_model_preprocess_cfg(model), image_size)


def data_config(preprocess: dict[str, Any], image_size: int | None) -> dict[str, Any]:
    """open_clip's preprocessing as timm's data config (what :class:`~graft.features.backbones.Backbone` carries)."""
    size = preprocess.get("size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if image_size is not None:
        height = width = image_size
    mode = preprocess.get("resize_mode", "shortest")
    return {"input_size": (3, int(height), int(width)), "interpolation": preprocess.get("interpolation", "bicubic"),
            "mean": tuple(float(v) for v in preprocess.get("mean", (0.48145466, 0.4578275, 0.40821073))),
            "std": tuple(float(v) for v in preprocess.get("std", (0.26862954, 0.26130258, 0.27577711))),
            "crop_pct": 1.0, "crop_mode": CROP_MODES.get(mode, "center")}
