"""Fine-tuning throughput: graft's Lightning step vs a bare timm forward+backward+SGD step on the same images,
and the speed of bf16 autocast / channels_last / torch.compile against fp32 (side by side, one run).

pipeline = decode + one-group augmentation + forward + loss + backward + SGD (Lightning, DataLoader)
raw      = forward + loss + backward + SGD on the same images already decoded into tensors
Target: pipeline / raw >= 0.85.

    python bench/finetune.py [--images 64] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

from graft.config import FineTuneConfig, HeadConfig, ViewsConfig
from graft.data.manifest import load_manifest
from graft.device import resolve_device
from graft.features.augment import training_transform
from graft.features.backbones import create_backbone
from graft.features.preparation import Preparation
from graft.finetuning.module import FineTuneModule, ImageDataset, ValidationInfo
from graft.model.head import build_head

sys.path.insert(0, str(Path(__file__).parent))
from record import record

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "leafsnap-dev"


class StepOnly(FineTuneModule):
    """The same module without ReduceLROnPlateau, which needs a validation loss this benchmark does not compute."""

    def configure_optimizers(self):
        return super().configure_optimizers()["optimizer"]


class EpochClock(Callback):
    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.seconds.append(time.perf_counter() - self._start)


def pipeline(module, records, label_index, preparation, config) -> float:
    loader = DataLoader(ImageDataset(records, label_index, preparation), batch_size=config.batch_size,
                        shuffle=True, num_workers=0)
    clock = EpochClock()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        precision=config.precision, callbacks=[clock])
    trainer.fit(module, loader)
    return len(records) / clock.seconds[-1]  # the second epoch: no start-up cost


def raw(model: nn.Module, batches, labels, precision: str, channels_last: bool, compiled: bool = False) -> float:
    model = copy.deepcopy(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(x, y):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = nn.functional.cross_entropy(forward(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step(batches[0], labels[0])  # warm-up (and compilation)
    step(batches[0], labels[0])
    start = time.perf_counter()
    for x, y in zip(batches, labels, strict=True):
        step(x, y)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    records = load_manifest(args.data).records[: args.images]
    labels_sorted = sorted({r.label for r in records})
    label_index = {label: i for i, label in enumerate(labels_sorted)}
    backbone = create_backbone()
    head = build_head(backbone.num_features, len(labels_sorted), HeadConfig())
    config = FineTuneConfig(batch_size=args.batch_size, num_workers=0)
    preparation = Preparation(training_transform(backbone.data_config, config.augment), backbone.data_config,
                              ViewsConfig())
    size = backbone.data_config["input_size"]
    dataset = ImageDataset(records, label_index, preparation)
    items = [dataset[i] for i in range(len(dataset))]
    images, targets = torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items])
    batches, labels = list(images.split(args.batch_size)), list(targets.split(args.batch_size))
    model = nn.Sequential(backbone.model, head)
    info = ValidationInfo(np.zeros(0, dtype=int), [], [], "mean")

    results = {}
    for precision, channels_last, compiled in (("32-true", False, False), ("32-true", True, False),
                                               ("bf16-mixed", False, False), ("bf16-mixed", True, False),
                                               ("32-true", True, True), ("bf16-mixed", True, True)):
        results[(precision, channels_last, compiled)] = raw(model, batches, labels, precision, channels_last, compiled)
    module = StepOnly(copy.deepcopy(backbone.model), copy.deepcopy(head), config, info)  # graft's defaults
    pipe = pipeline(module, records, label_index, preparation, config)
    precision_used = resolve_device("cpu").precision(config.precision)  # what `auto` means on this CPU
    same = results[(precision_used, config.channels_last, False)]
    base = results[("32-true", False, False)]
    print(f"tf_efficientnet_lite0 at {size[-1]} px, {len(records)} images, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    for (precision, channels_last, compiled), speed in results.items():
        layout = ("channels_last" if channels_last else "contiguous") + (" compiled" if compiled else "")
        print(f"raw fwd+bwd+SGD  {precision:10s} {layout:22s} {speed:7.2f} img/s   x{speed / base:.2f} vs fp32")
    layout = "channels_last" if config.channels_last else "contiguous"
    print(f"graft fine-tune step (defaults: {precision_used}, {layout}; decode + augmentation + Lightning) "
          f"{pipe:7.2f} img/s")
    print(f"ratio pipeline/raw, same precision and layout = {pipe / same:.3f}  (target >= 0.85)")
    rows = [{"step": "raw fwd+bwd+SGD", "precision": precision,
             "layout": ("channels_last" if channels_last else "contiguous") + (" compiled" if compiled else ""),
             "img_per_s": round(speed, 2), "vs_fp32": round(speed / base, 3)}
            for (precision, channels_last, compiled), speed in results.items()]
    rows.append({"step": "graft fine-tune step", "precision": precision_used, "layout": layout,
                 "img_per_s": round(pipe, 2), "vs_fp32": round(pipe / base, 3)})
    print(f"rows appended to {record('finetune', rows)}")


if __name__ == "__main__":
    main()
