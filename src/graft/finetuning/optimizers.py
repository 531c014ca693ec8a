"""Fine-tuning's optimizer per family: what the network was trained with and is fine-tuned with in its papers.

  sgd    networks with BatchNorm (EfficientNet, MobileNet, ResNet): SGD with momentum at a low learning rate, the
         founding recipe's, measured on graft's data (``FineTuneConfig``)
  adamw  LayerNorm networks (ViT, DINOv2, ConvNeXt, CLIP towers): AdamW, weight decay 0.05 on weights only (not norms,
         biases, position embeddings), layer-wise LR decay 0.75 (block i of n trains at lr x 0.75^(n - i): the lower
         layers' general features move least) and a one-epoch linear warm-up - MAE's fine-tuning recipe (He et al.
         2022; BEiT's and ConvNeXt's are alike), its base LR 5e-4 per 256 images taken at graft's batch of 16: 3e-5.
         Not measured here: no pretrained transformer weights can be had offline on graft's hosts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from graft.config import FineTuneConfig
from graft.features.timm_models import normalization

DEFAULTS = {  # per optimizer: lr, weight decay, layer decay, warm-up epochs
    "sgd": {"lr": 1e-4, "weight_decay": 1e-4, "layer_decay": 1.0, "warmup_epochs": 0.0},
    "adamw": {"lr": 3e-5, "weight_decay": 0.05, "layer_decay": 0.75, "warmup_epochs": 1.0},
}


@dataclass(frozen=True)
class OptimizerPlan:
    """The resolved optimizer settings of one fine-tuning (what results.json records)."""

    kind: str
    lr: float
    weight_decay: float
    layer_decay: float
    warmup_epochs: float


FAMILY_OPTIMIZER = {"batchnorm": "sgd", "layernorm": "adamw"}  # by the network's norms (timm_models.normalization)


def family_optimizer(network: nn.Module) -> str:
    """``sgd`` for a network with BatchNorm, ``adamw`` for a LayerNorm one (ConvNeXt's LayerNorm2d included)."""
    return FAMILY_OPTIMIZER[normalization(network)]


def plan(config: FineTuneConfig, network: nn.Module) -> OptimizerPlan:
    """``config``'s optimizer settings with every ``auto``/None resolved for ``network``'s family."""
    kind = family_optimizer(network) if config.optimizer == "auto" else config.optimizer
    chosen = {key: getattr(config, key) for key in DEFAULTS[kind]}
    return OptimizerPlan(kind, **{key: DEFAULTS[kind][key] if value is None else value for key, value in chosen.items()})


def parameter_groups(backbone: nn.Module, head: nn.Module, settings: OptimizerPlan,
                     backbone_lr_scale: float = 1.0) -> list[dict]:
    """Parameter groups with their own ``lr`` (and the ``base_lr`` warm-up scales): the head at ``lr``; the trainable
    backbone at ``lr x backbone_lr_scale``, times its layer's decay under layer-wise LR decay (timm's grouping), and
    without weight decay on 1-d parameters (norms, biases) under AdamW."""
    groups: list[dict] = [{"params": list(head.parameters()), "lr": settings.lr}]
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    if trainable and settings.kind == "adamw" and hasattr(backbone, "group_matcher"):
        from timm.optim import param_groups_layer_decay

        exempt = getattr(backbone, "no_weight_decay", set)()  # position embeddings, class token
        for group in param_groups_layer_decay(backbone, settings.weight_decay, no_weight_decay_list=exempt,
                                              layer_decay=settings.layer_decay):
            scale = group.pop("lr_scale", 1.0)
            groups.append(group | {"lr": settings.lr * backbone_lr_scale * scale})
    elif trainable:
        groups.append({"params": trainable, "lr": settings.lr * backbone_lr_scale})
    for group in groups:
        group["base_lr"] = group["lr"]
    return groups


def make_optimizer(backbone: nn.Module, head: nn.Module, config: FineTuneConfig) -> tuple[torch.optim.Optimizer,
                                                                                           OptimizerPlan]:
    """The optimizer for ``backbone`` + ``head`` under ``config`` (family defaults resolved), and its plan."""
    settings = plan(config, backbone)
    groups = parameter_groups(backbone, head, settings, config.backbone_lr_scale)
    if settings.kind == "adamw":
        return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay), settings
    return torch.optim.SGD(groups, lr=settings.lr, momentum=config.momentum, weight_decay=settings.weight_decay), settings


class WarmUp(Callback):
    """Linear learning-rate warm-up over the first ``epochs`` epochs' steps: every group's LR rises from
    ``base_lr / steps`` to ``base_lr``; afterwards the LR is the scheduler's (ReduceLROnPlateau) alone."""

    def __init__(self, epochs: float):
        self.epochs = epochs

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        steps = max(1, round(self.epochs * trainer.num_training_batches))
        step = trainer.global_step
        if self.epochs <= 0 or step >= steps:  # after it, the LR is the scheduler's alone
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * (step + 1) / steps  # base_lr at the last warm-up step
