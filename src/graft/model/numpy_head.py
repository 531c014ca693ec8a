"""A saved head's forward in numpy: a run answers without torch when its backbone's graph is in the feature cache.

``graft predict RUN`` spent most of its time importing torch and timm to rebuild the head and the backbone
(7.8-12.5 s for one photo, against 1.2-1.3 s for the same run exported; README, Serving). The backbone has an ONNX
graph already wherever its features were extracted under ONNX Runtime (:mod:`graft.features.engines`), and the head
is a few matrix products, so the serving engine pairs the two (:mod:`graft.serving.inference`). This module mirrors
:func:`graft.model.head.build_head` layer by layer on the same ``head.safetensors``; ``tests/test_head.py`` holds
every kind to the torch head's logits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from graft.config import HeadConfig

POWER_FLOOR = 1e-6  # Standardize.normalise: the smallest magnitude raised to the power
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946  # torch.nn.SELU's
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "selu": lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
    "relu": lambda x: np.maximum(x, 0),
    "silu": lambda x: x / (1 + np.exp(-x)),
}  # GELU needs erf, which numpy lacks: such heads are served by torch

Forward = Callable[[np.ndarray], np.ndarray]


def load_numpy_head(path: Path, config: HeadConfig) -> Forward | None:
    """``features [B, D] -> logits [B, C]`` for the head saved at ``path`` and built by ``config`` (the run's); None
    for an activation without a numpy form here."""
    from safetensors.numpy import load_file

    return numpy_head(load_file(path), config)


def numpy_head(tensors: dict[str, np.ndarray], config: HeadConfig) -> Forward | None:
    """:func:`load_numpy_head` on a saved head's tensors already in memory."""
    if config.kind in ("mlp", "auto") and config.activation not in ACTIVATIONS:
        return None
    state = {name: array.astype(np.float32) for name, array in tensors.items()}
    if PRIOR_KEY in state:  # a PriorHead: the head's own tensors under "head.", then the genus prior
        base = _base_head({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}, config)
        matrix, weight = state[PRIOR_KEY], float(state["prior.weight"])
        return lambda x: genus_prior(base(x), matrix, weight)
    return _base_head(state, config)


PRIOR_KEY = "prior.mean_of_genus"  # in a head saved with a genus prior (graft.model.head.PriorHead)


def _base_head(state: dict[str, np.ndarray], config: HeadConfig) -> Forward:
    if config.kind in ("mlp", "auto") and config.members > 1:
        members = [_sequential(state, f"members.{i}.", config) for i in range(config.members)]
        return lambda x: _log_mean_probability([member(x) for member in members])
    return _sequential(state, "", config)


def _sequential(state: dict[str, np.ndarray], prefix: str, config: HeadConfig) -> Forward:
    """One ``nn.Sequential`` head: Standardize, then the prototypes, or (Linear, activation, Dropout) x hidden layers
    and a last Linear (indices as build_head numbers them; dropout is the identity at inference)."""
    standardize = _standardize(state, prefix + "0.")
    if config.kind == "prototype":
        prototypes, scale = state[prefix + "1.prototypes"], state[prefix + "1.scale"]

        def prototype(x: np.ndarray) -> np.ndarray:
            z = standardize(x)
            return scale * (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)) @ prototypes.T
        return prototype
    hidden = config.hidden_layers if config.kind in ("mlp", "auto") else 0
    layers = [(state[f"{prefix}{1 + 3 * i}.weight"], state[f"{prefix}{1 + 3 * i}.bias"]) for i in range(hidden + 1)]
    activation = ACTIVATIONS.get(config.activation)

    def forward(x: np.ndarray) -> np.ndarray:
        z = standardize(x)
        for i, (weight, bias) in enumerate(layers):
            z = z @ weight.T + bias
            if i < hidden:
                z = activation(z)
        return z
    return forward


def _standardize(state: dict[str, np.ndarray], prefix: str) -> Forward:
    mean, std = state[prefix + "mean"], state[prefix + "std"]
    power = float(state.get(prefix + "power", 1.0))  # heads saved before power normalisation: 1

    def standardize(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if power != 1.0:
            x = np.sign(x) * np.maximum(np.abs(x), POWER_FLOOR) ** np.float32(power)
        return (x - mean) / std
    return standardize


def _log_mean_probability(logits: list[np.ndarray]) -> np.ndarray:
    """HeadBag's output: log of the members' mean softmax."""
    stacked = np.stack(logits)
    log_probabilities = stacked - _logsumexp(stacked, axis=2)
    return _logsumexp(log_probabilities, axis=0)[0] - np.float32(np.log(len(logits)))


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))


def genus_prior(logits: np.ndarray, mean_of_genus: np.ndarray, weight: float) -> np.ndarray:
    """Genus-aware scores: ``log p(s) + weight * log(mean of p over s's genus)`` with ``p = softmax(logits)`` (the
    head's own temperature, 1), as logits (their softmax renormalises). ``mean_of_genus``: ``[species, genera]``,
    each column one-hot on its genus's species divided by their count (a mean, so large genera are not favoured)."""
    log_p = logits - _logsumexp(logits, axis=1)
    genus = np.log(np.maximum(np.exp(log_p) @ mean_of_genus, np.finfo(np.float32).tiny))
    return (log_p + np.float32(weight) * genus @ (mean_of_genus > 0).T.astype(np.float32)).astype(np.float32)


def genus_matrix(genus_of: list[str]) -> np.ndarray | None:
    """``[species, genera]`` for :func:`genus_prior` (a label without a genus is a genus of its own); None when no
    genus holds two species: the prior would then rank exactly as the head does."""
    genera = sorted({genus or f"\0{i}" for i, genus in enumerate(genus_of)})
    if len(genera) == len(genus_of):
        return None
    column = {genus: j for j, genus in enumerate(genera)}
    member = np.zeros((len(genus_of), len(genera)), np.float32)
    member[np.arange(len(genus_of)), [column[genus or f"\0{i}"] for i, genus in enumerate(genus_of)]] = 1.0
    return member / member.sum(axis=0)
