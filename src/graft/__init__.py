"""graft: image classifiers on pretrained backbones, identifying a subject from several photos of it.

Example:
    >>> import graft
    >>> run = graft.fit("plants/", "runs/plants")          # extract + cache features, train head, evaluate
    >>> run.results["S"], run.results["top5"]
    >>> graft.load_run("runs/plants").identify(["flower.jpg", "leaf.jpg"]).ranking[:3]

The names below are imported on first use (PEP 562), not by ``import graft``: the API reaches torch, timm and
Lightning, about 9 s of imports on a 2-core machine, and every ``graft`` command imports this package first - so
``graft --help`` and a mistyped command would otherwise wait for a network library they never use.
"""

from __future__ import annotations

from graft.lazy import LazyExports

_EXPORTS = LazyExports(__name__, {
    "graft.config": ["GraftConfig"],
    "graft.data.manifest": ["ImageRecord", "Manifest", "load_manifest"],
    "graft.data.splits": ["assign_splits"],
    "graft.errors": ["BackboneError", "ConfigError", "DataError", "GraftError", "ImageError", "RunError"],
    "graft.evaluation.evaluate": ["evaluate"],
    "graft.evaluation.metrics": ["lifeclef_score", "top_k"],
    "graft.finetuning.finetune": ["finetune"],
    "graft.features.backbones": ["Backbone", "create_backbone"],
    "graft.features.cache": ["FeatureCache"],
    "graft.features.extract": ["extract_features"],
    "graft.model.classifier": ["Classifier"],
    "graft.model.fusion": ["fuse", "fuse_observations"],
    "graft.model.identification": ["Identification", "Model", "identify"],
    "graft.run": ["load_model", "load_run"],
    "graft.training.fit": ["fit"],
})
__getattr__, __dir__, __all__ = _EXPORTS.getattr, _EXPORTS.dir, _EXPORTS.names
__version__ = "0.1.0"
