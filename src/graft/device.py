"""The device a command computes on: resolved once from ``--device`` (or the ``device`` setting), then passed down.

``auto`` is CUDA when torch sees a GPU, then Apple's MPS, else the CPU. One :class:`Device` answers every question a
stage asks of the hardware - the torch device, Lightning's accelerator, devices and precision, ONNX Runtime's
providers, a batch size that keeps the device busy - so no module guesses on its own. A device that was asked for
and is absent is an error (one line, exit 2), never a silent fall back to the CPU.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.errors import DeviceError

if TYPE_CHECKING:
    import torch

DEVICES = "auto, cpu, cuda, cuda:N or mps"
_SPEC = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")
# Images per extraction forward: a CPU runs best at small batches (bench/extract.py); a GPU needs many images in
# flight to be busy, and 256 Lite0 images at 320 px are ~0.3 GB of activations, nothing to a GPU's memory.
EXTRACTION_BATCH = {"cpu": 32, "cuda": 256, "mps": 64}


@dataclass(frozen=True)
class Device:
    """Where graft computes: ``type`` cpu, cuda or mps; ``index`` a pinned GPU (``cuda:1``) or None (the default
    one, or all of them for ``--devices N``); ``count`` how many of the type there are; ``bf16`` whether it
    multiplies bfloat16 natively (what ``precision: auto`` asks)."""

    type: str = "cpu"
    index: int | None = None
    name: str = "cpu"
    count: int = 1
    bf16: bool = False

    @property
    def spec(self) -> str:
        """How to ask for this device again: ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
        return self.type if self.index is None else f"{self.type}:{self.index}"

    @property
    def is_gpu(self) -> bool:
        return self.type != "cpu"

    def torch(self) -> torch.device:
        import torch

        return torch.device(self.spec)

    @property
    def accelerator(self) -> str:
        """Lightning's name for the device type."""
        return self.type

    def lightning_devices(self, requested: int = 1) -> int | list[int]:
        """Lightning's ``devices``: the pinned GPU, or ``requested`` of them (processes, on a CPU)."""
        if self.index is None:
            return requested
        if requested != 1:
            raise DeviceError(f"--device {self.spec} pins one GPU but --devices {requested} asks for {requested}; "
                              f"use --device cuda --devices {requested}")
        return [self.index]

    def precision(self, setting: str) -> str:
        """Lightning's precision for a ``precision`` setting: ``auto`` is bf16-mixed where the device multiplies
        bfloat16 natively, else 32-true; the explicit values pass through."""
        if setting != "auto":
            return setting
        return "bf16-mixed" if self.bf16 else "32-true"

    def extraction_batch(self, setting: int | None) -> int:
        """Images per backbone forward: the setting, or the device's own (``EXTRACTION_BATCH``)."""
        return setting if setting is not None else EXTRACTION_BATCH[self.type]

    def onnx_providers(self) -> list[str | tuple[str, dict[str, Any]]]:
        """ONNX Runtime's execution providers: the GPU's where onnxruntime-gpu offers them, always the CPU's last."""
        if self.type == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                return [("CUDAExecutionProvider", {"device_id": self.index or 0}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def describe(self, devices: int = 1) -> dict[str, Any]:
        """What did the work, for results.json: the device asked for, its name, and how many took part."""
        return {"device": self.spec, "device_name": self.name, "device_count": devices}


CPU = Device("cpu", None, f"cpu ({os.cpu_count() or 1} cores)", 1, False)


def resolve_device(spec: str | Device | None = "auto") -> Device:
    """The :class:`Device` for ``spec`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``; None = auto).

    Raises :class:`~graft.errors.DeviceError` when the device asked for is not there.

    Example:
        >>> resolve_device("cpu").accelerator
        'cpu'
    """
    if isinstance(spec, Device):
        return spec
    spec = (spec or "auto").strip().lower()
    match = _SPEC.match(spec)
    if match is None:
        raise DeviceError(f"unknown device {spec!r}; use {DEVICES}")
    kind, index = match.group(1), match.group(2)
    if index is not None and kind != "cuda":
        raise DeviceError(f"device {spec!r}: only CUDA devices take an index; use {DEVICES}")
    if kind == "cpu" or (kind == "auto" and not _gpu_possible()):
        return CPU
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if kind == "auto":
        kind = "cuda" if cuda else "mps" if mps else "cpu"
        if kind == "cpu":
            return CPU
    if kind == "mps":
        if not mps:
            raise DeviceError("--device mps: torch sees no Apple GPU (torch.backends.mps.is_available() is False); "
                              "use --device cpu or auto")
        return Device("mps", None, "Apple MPS", 1, False)
    if not cuda:
        raise DeviceError(f"--device {spec}: torch sees no CUDA GPU (torch {torch.__version__}, CUDA build "
                          f"{torch.version.cuda or 'none'}); use --device cpu or auto, or check the driver and "
                          "CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count()
    number = int(index) if index is not None else None
    if number is not None and number >= count:
        raise DeviceError(f"--device {spec}: only {count} CUDA GPU(s) are visible (cuda:0..cuda:{count - 1})")
    name = torch.cuda.get_device_name(number or 0)
    return Device("cuda", number, name, count, bool(torch.cuda.is_bf16_supported()))


# Device nodes a GPU driver creates: NVIDIA's, AMD's (ROCm builds of torch answer as CUDA), WSL's.
GPU_DRIVER_NODES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def _gpu_possible() -> bool:
    """Whether torch could see a GPU here, answered without importing torch while it is not loaded (it takes seconds,
    and ``graft predict`` on an export never needs it): no GPU driver's device node and not macOS means none."""
    if "torch" in sys.modules or sys.platform == "darwin":
        return True
    return any(Path(node).exists() for node in GPU_DRIVER_NODES)


@contextmanager
def exact_float32(device: Device) -> Iterator[None]:
    """Full float32 matmuls and convolutions on a GPU (no TF32) while extracting: cached features are shared by every
    device and engine, so a GPU must compute what a CPU computes, within the engines' tolerance."""
    if device.type != "cuda":
        yield
        return
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def is_device_spec(spec: str) -> bool:
    """Whether ``spec`` names a device at all (whether it is present is :func:`resolve_device`'s question)."""
    match = _SPEC.match(spec.strip().lower())
    return match is not None and (match.group(2) is None or match.group(1) == "cuda")
