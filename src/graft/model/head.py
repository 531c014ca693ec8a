"""The dense head on bottleneck features (seed: 3 x 512 SELU, dropout 0.5, softmax): the network, not its training.

A :class:`Standardize` layer holds the training features' statistics with the weights, so a saved head needs no
separate scaler.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from graft.config import HeadConfig

ACTIVATIONS = {"selu": nn.SELU, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class Standardize(nn.Module):
    """Feature-wise standardisation with statistics of the training features, stored with the head's weights."""

    def __init__(self, num_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def fit(self, features: torch.Tensor) -> Standardize:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-6))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_head(num_features: int, num_classes: int, config: HeadConfig) -> nn.Sequential:
    """``Standardize`` then ``hidden_layers`` x (Linear, activation, Dropout), then a Linear to class logits."""
    layers: list[nn.Module] = [Standardize(num_features)]
    width_in = num_features
    for _ in range(config.hidden_layers):
        layers += [nn.Linear(width_in, config.width), ACTIVATIONS[config.activation](), nn.Dropout(config.dropout)]
        width_in = config.width
    layers.append(nn.Linear(width_in, num_classes))
    return nn.Sequential(*layers)


def predict_logits(head: nn.Module, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    head.eval()
    with torch.inference_mode():
        tensor = torch.as_tensor(features, dtype=torch.float32)
        return torch.cat([head(tensor[i : i + batch_size]) for i in range(0, len(tensor), batch_size)]).numpy()
