"""Bottleneck features: timm backbones (offline weights where a package ships them), one preprocessing
path per image, test-time augmentations, and the content-addressed feature cache."""

from graft.lazy import LazyExports

_EXPORTS = LazyExports(__name__, {
    "graft.features.backbones": ["Backbone", "create_backbone"],
    "graft.features.cache": ["FeatureCache"],
    "graft.features.extract": ["FeatureSet", "extract_features"],
    "graft.features.preparation": ["Preparation"],
    "graft.features.tta": ["DEFAULT_TTA", "TTA_VIEWS"],
})
__getattr__, __dir__, __all__ = _EXPORTS.getattr, _EXPORTS.dir, _EXPORTS.names
