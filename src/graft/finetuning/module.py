"""Fine-tuning (the founding recipe's step 3): put the trained head on the backbone and train the whole network further.

At a low learning rate, so the pretrained features are adjusted rather than overwritten: SGD with momentum for
BatchNorm networks (the founding recipe's reason for not using Adam there), AdamW with layer-wise decay and warm-up
for LayerNorm ones (:mod:`graft.finetuning.optimizers`). Lightning runs the loop: ReduceLROnPlateau and EarlyStopping
on validation loss, the best weights restored, a checkpoint every epoch for ``--resume``, one CSV row per epoch.
Under DDP the validation predictions of all ranks are gathered and de-duplicated by image index before S and top-k
are computed, so the padding a DistributedSampler adds is never counted twice.
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from timm.models import group_parameters
from torch import nn
from torch.utils.data import Dataset

from graft.config import FineTuneConfig
from graft.data.images import load_rgb
from graft.data.manifest import ImageRecord
from graft.device import CPU, Device
from graft.errors import ImageError
from graft.evaluation.metrics import UNKNOWN, observation_scores
from graft.features.preparation import Preparation
from graft.finetuning.optimizers import make_optimizer, plan
from graft.model.head import Standardize
from graft.views.decisions import DecisionCache

IGNORE = UNKNOWN  # label of an image that could not be decoded: contributes nothing


class ImageDataset(Dataset):
    """(image tensor, label index, dataset index); a broken image yields zeros with label IGNORE, never a crash.

    Images go through the shared preparation path - decoded as extraction and serving decode them (JPEGs only down
    to the side the framing needs, ``features.decode``) - and per-view crops come from ``decisions`` (cached) when
    given.
    """

    def __init__(self, records: list[ImageRecord], label_index: dict[str, int], preparation: Preparation,
                 decisions: DecisionCache | None = None):
        self.records, self.label_index, self.preparation = records, label_index, preparation
        self.decisions = decisions

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        try:
            image = load_rgb(record.path, min_side=self.preparation.side_for(record.view))
            decision = self.decisions.decision(image, record.path, record.view) if self.decisions else None
            tensor, _ = self.preparation.prepare(image, record.view, decision=decision)
            return tensor[0], self.label_index.get(record.label, IGNORE), index
        except (ImageError, OSError, ValueError):
            return torch.zeros(tuple(self.preparation.data_config["input_size"])), IGNORE, index


@dataclass
class ValidationInfo:
    """What the validation metrics need besides predictions, per validation-dataset index."""

    labels: np.ndarray  # label index or IGNORE
    observations: list[str]
    users: list[str]
    fusion: str


def observation_metrics(probabilities: np.ndarray, info: ValidationInfo, indices: np.ndarray) -> dict[str, float]:
    """S, top-k per observation and image top-1 for the images ``indices`` (rows of ``probabilities``)."""
    labels = info.labels[indices]
    keep = labels != IGNORE
    scores = observation_scores(probabilities[keep], labels[keep], [info.observations[i] for i in indices[keep]],
                                [info.users[i] for i in indices[keep]], info.fusion)
    named = {"val_S": "S", "val_top1": "top1", "val_top3": "top3", "val_top5": "top5", "val_image_top1": "image_top1"}
    return {name: scores[key] for name, key in named.items()} | {"val_images": float(keep.sum())}


class FineTuneModule(L.LightningModule):
    def __init__(self, backbone: nn.Module, head: nn.Module, config: FineTuneConfig, info: ValidationInfo,
                 class_weights: torch.Tensor | None = None):
        super().__init__()
        self.backbone, self.head, self.config, self.info = backbone, head, config, info
        self.loss = nn.CrossEntropyLoss(weight=class_weights, ignore_index=IGNORE)
        self._frozen = freeze_lower_stages(backbone, config.train_blocks)
        self.plan = plan(config, backbone)  # the family's optimizer, resolved once (results.json records it)
        self._outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        if config.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self._compiled = None  # the compiled training forward, made at the first step (after any process spawn)
        self.train()  # Lightning keeps the modes it finds; these modules come from an eval-mode run
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(images))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.config.freeze_bn:  # BatchNorm keeps its ImageNet statistics
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        for module in self.head.modules():
            if isinstance(module, Standardize):  # the standardisation layer(s) are fixed
                module.eval()
        return self

    def training_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The training step's forward: compiled when ``config.compile`` (the same fp32 computation, fused), eager
        if compiling fails here (no C++ compiler, an unsupported layer) - with a warning, once."""
        if not self.config.compile or self._compiled is False:
            return self(images)
        if self._compiled is None:
            self._compiled = torch.compile(self.forward)
        try:
            return self._compiled(images)
        except Exception as error:  # inductor raises many types; the run goes on in eager mode
            warnings.warn(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); fine-tuning goes on "
                          "without it (set finetune.compile: false to skip the attempt)", stacklevel=2)
            self._compiled = False
            return self(images)

    def training_step(self, batch, batch_idx):
        images, labels, _ = batch
        logits = self.training_forward(images)
        loss = self.loss(logits.float(), labels)
        known = labels != IGNORE  # no Python branch on it: that would wait for the GPU at every step
        accuracy = ((logits.argmax(1) == labels) & known).sum() / known.sum().clamp_min(1)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(labels))
        self.log("train_acc", accuracy, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch, batch_idx):
        images, _, indices = batch
        self._outputs.append((indices, torch.softmax(self(images).float(), dim=1)))

    def on_validation_epoch_end(self):
        indices = torch.cat([i for i, _ in self._outputs]) if self._outputs else torch.zeros(0, dtype=torch.long)
        probabilities = torch.cat([p for _, p in self._outputs]) if self._outputs else torch.zeros(0, 1)
        self._outputs.clear()
        if self.trainer.world_size > 1:  # gather every rank's rows, then drop the sampler's padding duplicates
            indices = self.all_gather(indices).reshape(-1)
            probabilities = self.all_gather(probabilities).reshape(len(indices), -1)
        indices, first = np.unique(indices.cpu().numpy(), return_index=True)
        probabilities = probabilities.cpu().numpy()[first]
        labels = self.info.labels[indices]
        known = labels != IGNORE
        picked = np.clip(probabilities[known, labels[known]], 1e-12, 1.0)
        self.log("val_loss", float(-np.log(picked).mean()) if known.any() else float("nan"), prog_bar=True)
        metrics = observation_metrics(probabilities, self.info, indices)
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name == "val_S")
        self.log("val_acc", metrics["val_image_top1"])  # the same curve name as the head stage

    def configure_optimizers(self):
        optimizer, _ = make_optimizer(self.backbone, self.head, self.config)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.config.plateau_factor, patience=self.config.plateau_patience)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}

    # Lightning restores optimizer, scheduler and loop state; the random streams are ours to keep.
    # (plain tensors and tuples only, so Lightning's weights_only checkpoint loading accepts them)
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        name, keys, position, has_gauss, gauss = np.random.get_state()
        checkpoint["graft_rng"] = {
            "torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("graft_rng")
        if state:
            torch.set_rng_state(state["torch"])
            random.setstate(state["python"])
            name, keys, position, has_gauss, gauss = state["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))


def freeze_lower_stages(backbone: nn.Module, train_blocks: int | None) -> int:
    """Freeze all but the top ``train_blocks`` parameter groups (timm's coarse stages); return how many froze."""
    if train_blocks is None:
        return 0
    groups = list(group_parameters(backbone, backbone.group_matcher(coarse=True)).values())
    frozen_names = {name for group in groups[: max(0, len(groups) - train_blocks)] for name in group}
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad = name not in frozen_names
    return len(frozen_names)


class EpochLines(Callback):
    """One plain line per epoch when output is not a terminal (logs, CI), instead of a progress bar."""

    def on_train_epoch_end(self, trainer, module):  # validation of this epoch has run and logged by now
        if trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            shown = " ".join(f"{k}={metrics[k]:.4f}" for k in ("train_loss", "val_loss", "val_S", "val_top1")
                             if k in metrics)
            print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {shown}", flush=True)


def default_workers(device: Device = CPU, processes: int = 1) -> int:
    """DataLoader worker processes per training process. On a CPU: none on <= 2 cores, where a worker only takes a
    core from torch's threads (bench/extract.py measured 0.74-0.82 of raw with 1 worker, 0.86-0.94 with 0); else one
    per spare core, up to 4. On a GPU the cores do nothing but decode and augment: all of a process's share but one."""
    cores = (os.cpu_count() or 1) // max(1, processes)
    if device.is_gpu:
        return max(1, cores - 1)
    return 0 if cores <= 2 else min(4, cores - 1)
