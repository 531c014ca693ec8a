"""Stage 3, bottleneck features: timm backbones (offline weights where a package ships them), one preprocessing
path per image, test-time views, and the content-addressed feature cache."""

from graft.features.backbones import Backbone, create_backbone
from graft.features.cache import FeatureCache
from graft.features.extract import FeatureSet, extract_features
from graft.features.preparation import Preparation
from graft.features.tta import DEFAULT_TTA, TTA_VIEWS

__all__ = ["DEFAULT_TTA", "TTA_VIEWS", "Backbone", "FeatureCache", "FeatureSet", "Preparation", "create_backbone",
           "extract_features"]
