"""Stage 4, the model: the head network, a trained classifier, ensembles, observation fusion, calibration, and the
one :class:`Identification` shape every interface answers with."""

from graft.model.classifier import Classifier
from graft.model.ensemble import Ensemble
from graft.model.fusion import fuse, fuse_observations
from graft.model.identification import Identification, Model, Ranked, identify, identify_images

__all__ = ["Classifier", "Ensemble", "Identification", "Model", "Ranked", "fuse", "fuse_observations", "identify",
           "identify_images"]
