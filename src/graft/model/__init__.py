"""The model: the head network, a trained classifier, ensembles, observation fusion, calibration, and the
one :class:`Identification` shape every interface answers with."""

from graft.lazy import LazyExports

_EXPORTS = LazyExports(__name__, {
    "graft.model.classifier": ["Classifier"],
    "graft.model.ensemble": ["Ensemble"],
    "graft.model.fusion": ["fuse", "fuse_observations"],
    "graft.model.identification": ["Identification", "Model", "Ranked", "identify", "identify_images"],
})
__getattr__, __dir__, __all__ = _EXPORTS.getattr, _EXPORTS.dir, _EXPORTS.names
