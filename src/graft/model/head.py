"""Heads on bottleneck features: the networks, not their training (:mod:`graft.training.families`).

Three kinds, one storage format (safetensors) and one inference path (``predict_logits``):
  mlp        the founding recipe's dense head: 3 x 512 SELU, dropout 0.5, softmax
  linear     multinomial logistic regression on standardised features (what few-shot data needs)
  prototype  cosine similarity to each class's mean feature (nearest class mean), times a scale
An MLP may be a :class:`HeadBag` of several (cross-fitting's fold heads), whose output is their averaged probability.

Every kind starts with a :class:`Standardize` layer - power normalisation, then the training features' statistics -
stored with the weights, so a saved head needs no separate scaler.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from graft.config import HeadConfig
from graft.model.numpy_head import POWER_FLOOR, PRIOR_KEY, genus_matrix

ACTIVATIONS = {"selu": nn.SELU, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class Standardize(nn.Module):
    """Power normalisation, then feature-wise standardisation with statistics of the training features, stored with
    the head's weights.

    Power normalisation (``sign(x) |x|^power``; Perronnin et al. 2010, the power transform of few-shot transfer, Hu
    et al. 2021) evens out pooled ReLU features: on Lite0 about 40% of them are exactly 0 and a few are large, so
    standardising raw values leaves the head a heavy-tailed input. ``power`` 1 leaves features as they are. It is a
    buffer, so a saved head says what it was trained with; heads written before it existed load with 1."""

    def __init__(self, num_features: int, power: float = 1.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.register_buffer("power", torch.tensor(float(power)))
        self.exponent = float(power)  # the buffer's value as a float: forward branches on it without a graph break

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "power", torch.tensor(1.0))  # a head saved before power normalisation
        self.exponent = float(state_dict[prefix + "power"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The power normalisation alone: what the statistics are computed on. Magnitudes are floored at 1e-6 so
        that fine-tuning's gradient through it stays finite (exact zeros stay zero)."""
        if self.exponent == 1.0:
            return x
        return x.sign() * x.abs().clamp_min(POWER_FLOOR).pow(self.exponent)

    def fit(self, features: torch.Tensor) -> Standardize:
        """Mean and std per dimension of the normalised features; the std is floored at 1% of the median std. Some
        backbone dimensions are near-constant on a dataset (Lite0: 30 of 1,280 below 1e-5 on leafsnap): dividing by
        their tiny std turned noise into z-scores of 1e5 on new images, so such dimensions are scaled like ordinary
        ones instead."""
        features = self.normalise(features)
        std = features.std(0) if len(features) > 1 else torch.ones(features.shape[1])
        return self.set_statistics(features.mean(0), std, len(features))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor, count: int) -> Standardize:
        """Statistics of the normalised features computed elsewhere (block by block, for features on disk), floored
        as :meth:`fit` says."""
        std = std if count > 1 else torch.ones_like(std)
        floor = max(1e-6, 0.01 * float(std.median())) if len(std) else 1e-6
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(floor))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.normalise(x) - self.mean) / self.std


class Prototypes(nn.Module):
    """``scale * cos(standardised x, class prototype)``: logits of a nearest-class-mean classifier (the prototypes
    are fitted by :func:`graft.training.streaming.fit_prototypes`)."""

    def __init__(self, num_features: int, num_classes: int, scale: float = 20.0):
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(num_classes, num_features))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.normalize(x, dim=1) @ self.prototypes.T


class FastDropout(nn.Dropout):
    """``nn.Dropout``'s law - each unit zeroed with probability ``p``, the others scaled by ``1 / (1 - p)`` - with
    the mask drawn by ``torch.rand``. On CPU, the ``bernoulli_`` that ``nn.Dropout`` draws with took 650 us for one
    128 x 512 batch (forward + backward) against 190 us here: 16% of the MLP's training time, with 3 of them. The
    uniforms are float32 whatever the activations' type: drawn as bfloat16 (the MLP's bf16 matmuls) they took
    180 us for a 128 x 512 batch against 120 us."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * (keep.to(x.dtype) * (1 / (1 - self.p)))


class HeadBag(nn.Module):
    """Heads whose probabilities are averaged: the output is ``log(mean softmax)``, a log-probability that the rest of
    graft treats as logits (softmax of it is the mean probability). Cross-fitting's fold heads make one for free:
    each saw 4/5 of the data, and their average beat one head refit on all of it (``head.bag``)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probabilities = torch.stack([member(x).log_softmax(1) for member in self.members])
        return torch.logsumexp(log_probabilities, 0) - math.log(len(self.members))


class GenusPrior(nn.Module):
    """Genus-aware ranking as the head's last step: ``log p(s) + weight * log(mean of p over s's genus)``, p the
    softmax of the head's logits (temperature 1), returned as logits. Out of fold - a new photographer's photos - the
    head knows a species' genus far more often than the species (leafsnap-dev: top-1 38-41% against 4-6%), so a
    species of a likely genus should rank higher; the genus mean, not its sum, keeps large genera from winning by
    size. The numpy head computes the same (:func:`graft.model.numpy_head.genus_prior`)."""

    def __init__(self, mean_of_genus: torch.Tensor, weight: float):
        super().__init__()
        self.register_buffer("mean_of_genus", mean_of_genus.float())
        self.register_buffer("weight", torch.tensor(float(weight)))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        log_p = logits.float().log_softmax(1)
        genus = (log_p.exp() @ self.mean_of_genus).clamp_min(torch.finfo(torch.float32).tiny).log()
        return log_p + self.weight * genus @ (self.mean_of_genus > 0).float().T


class PriorHead(nn.Module):
    """A trained head followed by its :class:`GenusPrior` (saved as ``head.*`` and ``prior.*``)."""

    def __init__(self, head: nn.Module, prior: GenusPrior):
        super().__init__()
        self.head, self.prior = head, prior

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prior(self.head(x))


def with_genus_prior(head: nn.Module, genus_of: list[str], weight: float) -> nn.Module:
    """``head`` followed by the genus prior of labels whose genera are ``genus_of`` (index order), or ``head`` itself
    when ``weight`` is 0 or no genus holds two of the labels."""
    matrix = genus_matrix(genus_of) if weight > 0 else None
    return head if matrix is None else PriorHead(head, GenusPrior(torch.from_numpy(matrix), weight))


def prior_of(head: nn.Module) -> GenusPrior | None:
    return head.prior if isinstance(head, PriorHead) else None


def base_of(head: nn.Module) -> nn.Module:
    """The trained head without its genus prior (what fold heads, bags and the numpy head are built from)."""
    return head.head if isinstance(head, PriorHead) else head


def rebuild_head(num_features: int, num_classes: int, config: HeadConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    """The head that ``state`` (a saved head's tensors) was saved from, its weights loaded: with a genus prior when
    the file holds one, whatever the config says (runs from before the prior load as they were)."""
    head = build_head(num_features, num_classes, config)
    if PRIOR_KEY in state:
        head = PriorHead(head, GenusPrior(state[PRIOR_KEY], float(state["prior.weight"])))
    head.load_state_dict(state)
    return head.eval()


def build_head(num_features: int, num_classes: int, config: HeadConfig) -> nn.Module:
    """``Standardize``, then by ``config.kind``: the MLP (``hidden_layers`` x (Linear, activation, Dropout), then a
    Linear to class logits) - a :class:`HeadBag` of ``config.members`` of them when more than one -, a single Linear
    (``linear``), or :class:`Prototypes` (``prototype``)."""
    if config.kind in ("mlp", "auto") and config.members > 1:
        single = config.model_copy(update={"members": 1})
        return HeadBag([build_head(num_features, num_classes, single) for _ in range(config.members)])
    layers: list[nn.Module] = [Standardize(num_features, config.power)]
    if config.kind == "prototype":
        return nn.Sequential(*layers, Prototypes(num_features, num_classes, config.scale))
    width_in = num_features
    for _ in range(config.hidden_layers if config.kind in ("mlp", "auto") else 0):
        layers += [nn.Linear(width_in, config.width), ACTIVATIONS[config.activation](), FastDropout(config.dropout)]
        width_in = config.width
    layers.append(nn.Linear(width_in, num_classes))
    return nn.Sequential(*layers)


def members_of(head: nn.Module) -> int:
    """How many heads ``head`` averages (``head.members`` in a config that rebuilds it)."""
    head = base_of(head)
    return len(head.members) if isinstance(head, HeadBag) else 1


def predict_logits(head: nn.Module, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """float32 logits on the host, computed where the head is (a fold head being trained on a GPU: there)."""
    head.eval()
    device = next(head.buffers()).device  # every kind starts with a Standardize, which has buffers
    with torch.inference_mode():
        tensor = torch.as_tensor(features, dtype=torch.float32)
        chunks = [head(tensor[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(tensor), batch_size)]
        return torch.cat(chunks or [head(tensor[:0].to(device)).float().cpu()]).numpy()  # no rows: [0, C], no error
