"""graft: image classifiers on pretrained backbones, identifying a subject from several photos of it.

Example:
    >>> import graft
    >>> run = graft.fit("plants/", "runs/plants")          # extract + cache features, train head, evaluate
    >>> run.results["S"], run.results["top5"]
    >>> graft.load_run("runs/plants").identify(["flower.jpg", "leaf.jpg"]).ranking[:3]
"""

from graft.config import GraftConfig
from graft.data.manifest import ImageRecord, Manifest, load_manifest
from graft.data.splits import assign_splits
from graft.errors import BackboneError, ConfigError, DataError, GraftError, ImageError, RunError
from graft.evaluation.evaluate import evaluate
from graft.evaluation.metrics import lifeclef_score, top_k
from graft.features.backbones import Backbone, create_backbone
from graft.features.cache import FeatureCache
from graft.features.extract import extract_features
from graft.model.classifier import Classifier
from graft.model.fusion import fuse, fuse_observations
from graft.model.identification import Identification, Model, identify
from graft.run import load_model, load_run
from graft.training.fit import fit

__all__ = [
    "Backbone", "BackboneError", "Classifier", "ConfigError", "DataError", "FeatureCache", "GraftConfig", "GraftError",
    "Identification", "ImageError", "ImageRecord", "Manifest", "Model", "RunError", "assign_splits", "create_backbone",
    "evaluate", "extract_features", "fit", "fuse", "fuse_observations", "identify", "lifeclef_score", "load_manifest",
    "load_model", "load_run", "top_k",
]
__version__ = "0.1.0"
