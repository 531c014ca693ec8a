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

import importlib
from typing import Any

_EXPORTS = {
    "graft.config": ["GraftConfig"],
    "graft.data.manifest": ["ImageRecord", "Manifest", "load_manifest"],
    "graft.data.splits": ["assign_splits"],
    "graft.errors": ["BackboneError", "ConfigError", "DataError", "GraftError", "ImageError", "RunError"],
    "graft.evaluation.evaluate": ["evaluate"],
    "graft.evaluation.metrics": ["lifeclef_score", "top_k"],
    "graft.features.backbones": ["Backbone", "create_backbone"],
    "graft.features.cache": ["FeatureCache"],
    "graft.features.extract": ["extract_features"],
    "graft.model.classifier": ["Classifier"],
    "graft.model.fusion": ["fuse", "fuse_observations"],
    "graft.model.identification": ["Identification", "Model", "identify"],
    "graft.run": ["load_model", "load_run"],
    "graft.training.fit": ["fit"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'graft' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
