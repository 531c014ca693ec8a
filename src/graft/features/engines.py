"""Feature engines: the backbone's forward under ONNX Runtime or torch, for extraction and prediction.

ONNX Runtime runs the same network ~2x faster on this CPU (Lite0, batch 32: 160 vs 72 img/s, ``bench/extract.py``)
and gives features equal to torch's within 1.3e-5 (``tests/test_engines.py`` holds it to 1e-4). That difference is
far below anything a head can see, so the engine is *not* part of the feature-cache key: a cache filled by one engine
serves the other. Fine-tuning keeps torch (it needs gradients).

The graph is exported once per weights identity, input size and pooling, into ``<cache root>/graphs/`` (temp file +
rename), and one session per graph is kept for the life of the process. ONNX files are protobuf: loading one runs no
Python code.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from graft.device import CPU, Device, exact_float32
from graft.errors import BackboneError
from graft.files import atomic_write, atomic_write_text, file_digest, read_text
from graft.store import cache_root

if TYPE_CHECKING:
    import torch
    from torch import nn

    from graft.features.backbones import Backbone

ENGINES = ("auto", "onnx", "torch")
OPSET = 17

log = logging.getLogger(__name__)
_sessions: dict[str, object] = {}  # by graph file name (weights identity, size, pooling): one per network, whatever
# the cache directory - measure_throughput's empty cache reuses the run's session rather than exporting again
_lock = threading.Lock()


@dataclass(frozen=True)
class FeatureEngine:
    """``engine(images [B, C, H, W]) -> features [B, D]`` (float32 numpy); ``name`` is "onnx" or "torch"."""

    name: str
    forward: Callable[[torch.Tensor], np.ndarray]

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self.forward(images)


def feature_engine(backbone: Backbone, engine: str = "auto", cache_dir: str | Path | None = None,
                   device: Device = CPU) -> FeatureEngine:
    """The backbone's forward under ``engine`` on ``device``: ``auto`` = ONNX Runtime where it runs on that device
    (the CPU; a GPU only with onnxruntime-gpu) and the backbone exports, else torch on the device (with a logged
    reason); ``onnx`` raises :class:`BackboneError` when it cannot export.
    """
    def in_torch() -> FeatureEngine:
        backbone.to(device.torch())
        return FeatureEngine("torch", lambda images: torch_features(backbone, images, device))

    if engine_for(engine, device) == "torch":
        return in_torch()
    if device.is_gpu and not onnx_runs_on(device):
        log.warning("ONNX Runtime has no provider for %s here (pip install onnxruntime-gpu): it runs on the CPU",
                    device.spec)
    try:
        session = onnx_session(backbone, cache_dir, device)
    except BackboneError as error:
        if engine == "onnx":
            raise
        log.warning("features run under torch: %s", error)
        return in_torch()
    return FeatureEngine("onnx", lambda images: session.run(None, {"images": images.numpy()})[0])


def engine_for(engine: str, device: Device) -> str:
    """The engine that runs: ``torch`` or ``onnx`` as asked; for ``auto``, ONNX Runtime where it computes on ``device``
    (on a CPU it runs the network ~2x faster than torch; a GPU it reaches only through onnxruntime-gpu), else torch."""
    if engine not in ENGINES:
        raise BackboneError(f"unknown feature engine {engine!r}; use auto, onnx or torch")
    if engine == "auto":
        return "onnx" if onnx_runs_on(device) else "torch"
    return engine


def onnx_runs_on(device: Device) -> bool:
    """Whether ONNX Runtime computes on ``device`` itself (a GPU needs onnxruntime-gpu's provider)."""
    try:
        return device.onnx_providers()[0] != "CPUExecutionProvider" or not device.is_gpu
    except ImportError:
        return False


def torch_features(backbone: Backbone, images: torch.Tensor, device: Device = CPU) -> np.ndarray:
    """Features in float32 on the backbone's device (no TF32 on a GPU: :func:`~graft.device.exact_float32`)."""
    import torch

    with torch.inference_mode(), exact_float32(device):
        return backbone(images).float().cpu().numpy()


def graph_path(backbone: Backbone, cache_dir: str | Path | None = None) -> Path:
    """Where the exported graph of exactly these weights, input size and pooling lives."""
    return graph_file(backbone.describe(), cache_dir)


def graph_file(described: dict, cache_dir: str | Path | None = None) -> Path:
    """:func:`graph_path` from a backbone's description (:meth:`Backbone.describe`, a run's ``backbone.json``),
    without building the backbone: a run finds its backbone's graph with neither torch nor timm."""
    size = "x".join(str(s) for s in described["data_config"]["input_size"][1:])
    network = re.sub(r"[^A-Za-z0-9._-]+", "_", described["name"])  # hf-hub:org/name, open_clip:... as a file name
    name = f"{network}-{described['identity']}-{size}-{described['pooling']}.onnx"
    return cache_root(cache_dir) / "graphs" / name


def onnx_session(backbone: Backbone, cache_dir: str | Path | None = None, device: Device = CPU):
    """The onnxruntime session for ``backbone`` on ``device``: exported on first use, then reused (process-wide)."""
    path = graph_path(backbone, cache_dir)
    providers = device.onnx_providers()
    key = path.name if providers == ["CPUExecutionProvider"] else f"{path.name}@{device.spec}"
    with _lock:
        session = _sessions.get(key)
        if session is None:
            if importlib.util.find_spec("onnxruntime") is None:  # before an export that could not be used
                raise BackboneError("onnxruntime is not installed; pip install onnxruntime")
            if not graph_intact(path):  # missing, or changed since it was written (truncated, tampered)
                export_backbone(backbone, path)
            import torch

            session = inference_session(path, device, torch.get_num_threads())  # a Ray actor's share, or all cores
            _sessions[key] = session
        return session


def inference_session(path: Path, device: Device = CPU, threads: int | None = None):
    """graft's one ONNX Runtime session factory: ``path`` on ``device``'s providers, ``threads`` intra-op threads
    (None: onnxruntime's own choice, one per core)."""
    try:
        import onnxruntime
    except ImportError as error:
        raise BackboneError("onnxruntime is not installed; pip install onnxruntime") from error
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=device.onnx_providers())


def export_backbone(backbone: Backbone, path: Path) -> Path:
    """Write the pooled-feature network as ONNX (dynamic batch), atomically, and its SHA-256 beside it
    (:func:`graph_intact`); BackboneError when it won't export."""
    export_graph(backbone.model, backbone.data_config["input_size"], path, "features", backbone.name)
    atomic_write_text(graph_digest_file(path), file_digest(path))
    return path


def graph_digest_file(graph: Path) -> Path:
    return graph.with_name(graph.name + ".sha256")


def graph_intact(graph: Path) -> bool:
    """Whether a cached graph is the one graft wrote: it exists and its bytes match the SHA-256 written with it (a
    truncated or changed graph is exported again, never loaded)."""
    digest = graph_digest_file(graph)
    try:
        return graph.is_file() and digest.is_file() and read_text(digest, 128).strip() == file_digest(graph)
    except (OSError, ValueError):
        return False


def export_graph(network: nn.Module, input_size: Sequence[int], path: Path, output: str, name: str,
                 opset: int = OPSET) -> Path:
    """graft's one ONNX exporter: a copy of ``network`` on the host, traced on a ``[1, *input_size]`` batch (the batch
    axis dynamic), input ``images``, output ``output``; written to ``path`` atomically. :class:`BackboneError` naming
    ``name`` when a layer will not export."""
    import torch

    network = copy.deepcopy(network).cpu().to(memory_format=torch.contiguous_format).eval()
    dummy = torch.zeros(1, *input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
            atomic_write(path, lambda handle: torch.onnx.export(
                network, (dummy,), handle, input_names=["images"], output_names=[output],
                dynamic_axes={"images": {0: "batch"}, output: {0: "batch"}}, opset_version=opset, dynamo=False))
    except Exception as error:  # the exporter raises many types for unsupported layers
        raise BackboneError(f"{name} does not export to ONNX ({type(error).__name__}: {error})") from error
    return path
