"""graft: image classifiers on pretrained backbones, identifying a subject from several photos of it.

Example:
    >>> import graft
    >>> run = graft.fit("plants/", "runs/plants")          # extract + cache features, train head, evaluate
    >>> run.results["S"], run.results["top5"]
    >>> graft.load_run("runs/plants").identify(["flower.jpg", "leaf.jpg"]).ranking[:3]
"""

from graft.backbones import Backbone, create_backbone
from graft.config import GraftConfig
from graft.errors import BackboneError, ConfigError, DataError, GraftError, ImageError, RunError
from graft.features import FeatureCache, extract_features
from graft.manifest import ImageRecord, Manifest, load_manifest
from graft.metrics import lifeclef_score, top_k
from graft.pipeline import Classifier, evaluate, fit, load_run
from graft.predict import fuse, fuse_observations
from graft.splits import assign_splits

__all__ = [
    "Backbone", "BackboneError", "Classifier", "ConfigError", "DataError", "FeatureCache", "GraftConfig", "GraftError",
    "ImageError", "ImageRecord", "Manifest", "RunError", "assign_splits", "create_backbone", "evaluate",
    "extract_features", "fit", "fuse", "fuse_observations", "lifeclef_score", "load_manifest", "load_run", "top_k",
]
__version__ = "0.1.0"
