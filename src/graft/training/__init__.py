"""Stage 5, training: the head on cached features (``fit``), fine-tuning the whole network, one-group augmentation,
ensembles, and the training history. Both trainers share :mod:`graft.training.lightning`."""

from graft.training.ensemble import make_ensemble
from graft.training.finetune import finetune
from graft.training.fit import RunResult, fit, prepare_manifest

__all__ = ["RunResult", "finetune", "fit", "make_ensemble", "prepare_manifest"]
