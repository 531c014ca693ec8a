"""graft on a GPU beside the bare torch pipeline on the same images, measured side by side in one run (issue 35).

  extraction   graft: `graft fit`'s extraction (hash, decode + prepare in threads, forward, cache write) into an
               empty cache; bare: PIL's reduced decode + timm's transform in --threads threads, pinned batches,
               the fp32 forward (no TF32), overlapped; and the forward alone (fp32, bf16) on tensors on the GPU
  fine-tuning  graft: the training epoch of `graft finetune` (default batch and --batch-size); bare: forward +
               loss + backward + SGD, bf16 autocast, channels_last, on tensors already on the GPU (eager and
               torch.compile'd); loading: the epoch's DataLoader alone (decode + augment), which bounds it when slower
  decode       --phone N generated 12 MP JPEGs: PIL's reduced decode in threads vs nvJPEG (torchvision, batched)
  accuracy     `graft fit` on the CPU and on the GPU, --seeds seeds: S and the chosen head side by side
Targets: extraction graft / bare >= 0.7; an epoch >= 0.5 x the bare bf16 step, or >= 0.8 x loading where loading
is slower; S on the GPU within the CPU's seed noise. Writes bench/results/gpu.csv.

    python bench/gpu.py [--data ../shared/datasets/flavia] [--images 2048] [--phone 64] [--seeds 3]
    (on a CPU host, --device cpu runs every row but nvJPEG: a smoke test of the script)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from graft.config import GraftConfig
from graft.data.images import load_rgb
from graft.data.manifest import load_manifest
from graft.device import exact_float32, resolve_device
from graft.features.backbones import create_backbone
from graft.features.preparation import decode_side, resize_side
from graft.finetuning.finetune import _loaders, _training_records, finetune
from graft.training.fit import fit
from record import record

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flavia"


def rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_extraction(paths: list[Path], backbone, device, threads: int, batch: int) -> float:
    """PIL reduced decode + timm's eval transform in a thread pool, overlapped with the fp32 forward on the GPU."""
    transform, side = backbone.transform(), decode_side(backbone.data_config, "reduced")
    model = backbone.model.to(device).eval()
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool, torch.inference_mode(), exact_float32(resolve_device(str(device))):
        prepared = pool.map(lambda p: transform(load_rgb(p, min_side=side)), paths)  # runs ahead of the forwards
        pending = []
        for index, tensor in enumerate(prepared):
            pending.append(tensor)
            if len(pending) == batch or index == len(paths) - 1:
                images = torch.stack(pending)
                images = images.pin_memory() if device.type == "cuda" else images
                model(images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)).float().cpu()
                pending = []
    return rate(len(paths), time.perf_counter() - start)


def forward_alone(backbone, device, size: int, batch: int, dtype: torch.dtype, steps: int = 20) -> float:
    model = backbone.model.to(device).eval()
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        model(images)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            model(images)
        synchronize(device)
    return rate(batch * steps, time.perf_counter() - start)


def bare_step(backbone, classes: int, device, size: int, batch: int, compiled: bool, steps: int = 20) -> float:
    """forward + cross-entropy + backward + SGD on tensors already on the device, bf16 autocast where it has it."""
    model = nn.Sequential(backbone.model, nn.Linear(backbone.num_features, classes)).to(device).train()
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch,), device=device)
    bf16 = resolve_device(str(device)).precision("auto") == "bf16-mixed"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step = torch.compile(step) if compiled else step
    for _ in range(3):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return rate(batch * steps, time.perf_counter() - start)


class TrainClock(Callback):
    """Seconds of each training epoch (validation excluded), and the images it trained on."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, module):
        synchronize(module.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        synchronize(module.device)
        self.seconds.append(time.perf_counter() - self.start)


def graft_epoch(run: Path, scratch: Path, batch: int, spec: str) -> tuple[float, float]:
    """(train img/s of a fine-tuning epoch, img/s of its DataLoader alone) on a copy of ``run``."""
    copy = scratch / f"finetune-{batch}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    clock = TrainClock()
    overrides = {"finetune.epochs": 1, "finetune.batch_size": batch, "device": spec}
    finetune(copy, overrides, progress=False, callbacks=[clock])
    from graft.run import load_run, read_manifest

    classifier = load_run(copy, spec)
    config = classifier.config.updated(overrides)
    manifest = read_manifest(copy)
    train = _training_records(manifest, None)
    labels = {label: i for i, label in enumerate(classifier.labels)}
    loader, _ = _loaders(classifier, config, train, manifest.where("val").records, labels)
    start = time.perf_counter()
    seen = sum(len(batch_[1]) for batch_ in loader)
    return rate(len(train), clock.seconds[-1]), rate(seen, time.perf_counter() - start)


def decode_rates(paths: list[Path], backbone, threads: int, gpu: bool) -> dict[str, float]:
    side = resize_side(backbone.data_config)
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: load_rgb(p, min_side=side), paths))
    rates = {"decode 12 MP: PIL reduced, threads": rate(len(paths), time.perf_counter() - start)}
    if gpu:
        from torchvision.io import decode_jpeg, read_file
        from torchvision.transforms.v2.functional import resize

        data = [read_file(str(p)) for p in paths]
        decode_jpeg(data[:2], device="cuda")  # warm-up: nvJPEG's handles
        torch.cuda.synchronize()
        start = time.perf_counter()
        for first in range(0, len(data), 32):
            [resize(image, side, antialias=True) for image in decode_jpeg(data[first : first + 32], device="cuda")]
        torch.cuda.synchronize()
        rates["decode 12 MP: nvJPEG on the GPU, batches of 32, + resize"] = rate(len(paths), time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=None, help="decode threads (default: one per core)")
    parser.add_argument("--batch-size", type=int, default=128, help="fine-tuning batch beside graft's default")
    parser.add_argument("--phone", type=int, default=64, help="12 MP JPEGs for the decode rows (0 = none)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time the bare step under torch.compile")
    args = parser.parse_args()
    device = resolve_device(args.device)
    on = device.torch()
    threads = args.threads or __import__("os").cpu_count()
    scratch = Path(tempfile.mkdtemp(prefix="graft-gpu-"))
    rows: list[tuple[str, float, str]] = []

    manifest = load_manifest(args.data)
    paths = [r.path for r in manifest]
    backbone = create_backbone("tf_efficientnet_lite0", channels_last=True)
    size = backbone.data_config["input_size"][-1]
    # accuracy and graft's extraction: fit on the device (empty cache) and on the CPU, per seed
    fits: dict[str, list[dict]] = {"cpu": [], device.spec: []}
    for seed in range(args.seeds):
        for spec in fits:
            config = GraftConfig().updated({"device": spec, "data.seed": seed, "head.seed": seed,
                                            "features.cache_dir": str(scratch / f"cache-{spec}-{seed}")})
            fits[spec].append(fit(args.data, scratch / f"run-{spec}-{seed}", config).results)
    gpu_fit = fits[device.spec][0]
    graft_rate = rate(gpu_fit["features_extracted"], gpu_fit["extraction_seconds"])
    bare_rate = bare_extraction(paths, create_backbone("tf_efficientnet_lite0", channels_last=True), on, threads,
                                device.extraction_batch(None))
    rows += [("extraction: graft fit", graft_rate, "img/s"), ("extraction: bare decode+forward", bare_rate, "img/s"),
             ("extraction: graft / bare (target >= 0.7)", graft_rate / bare_rate, "ratio")]
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        batch = device.extraction_batch(None)
        rows.append((f"forward alone {name}, batch {batch}", forward_alone(backbone, on, size, batch, dtype), "img/s"))
    for spec, results in fits.items():
        scores = [r["S"] for r in results]
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        rows.append((f"S, fit on {spec} ({len(scores)} seeds; heads {', '.join(r['head'] for r in results)})",
                     statistics.mean(scores), f"+- {spread:.4f}"))
    # fine-tuning: graft's epoch (default batch and --batch-size) against the bare step and its own loader
    classes = len({r.label for r in manifest})
    default_batch = GraftConfig().finetune.batch_size
    for batch in dict.fromkeys((default_batch, args.batch_size)):
        epoch, loading = graft_epoch(scratch / f"run-{device.spec}-0", scratch, batch, device.spec)
        step = bare_step(create_backbone("tf_efficientnet_lite0"), classes, on, size, batch, False)
        rows += [(f"finetune batch {batch}: graft epoch", epoch, "img/s"),
                 (f"finetune batch {batch}: loading alone (decode+augment)", loading, "img/s"),
                 (f"finetune batch {batch}: bare step, bf16 where the device has it", step, "img/s"),
                 (f"finetune batch {batch}: epoch / bare step (target >= 0.5)", epoch / step, "ratio"),
                 (f"finetune batch {batch}: epoch / loading (target >= 0.8 where loading < step)", epoch / loading,
                  "ratio")]
        if args.compile:
            rows.append((f"finetune batch {batch}: bare step, torch.compile",
                         bare_step(create_backbone("tf_efficientnet_lite0"), classes, on, size, batch, True), "img/s"))
    if args.phone:
        from extract import phone_photo

        phones = [phone_photo(p, scratch / f"phone-{i}.jpg", i) for i, p in enumerate(paths[: args.phone])]
        rows += [(name, value, "img/s") for name, value in
                 decode_rates(phones, backbone, threads, device.type == "cuda").items()]
    print(f"{device.name} ({device.spec}); {len(paths)} images from {args.data.name}; {threads} decode threads")
    for name, value, unit in rows:
        print(f"{name:75s} {value:10.3f} {unit}")
    path = record("gpu", [{"data": args.data.name, "device": device.name, "measure": name, "value": round(value, 4),
                           "unit": unit} for name, value, unit in rows])
    print(f"rows appended to {path}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
