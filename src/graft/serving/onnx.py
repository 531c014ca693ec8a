"""``graft export RUN --format onnx``: backbone + head as one ONNX graph (dynamic batch) for onnxruntime on CPU, with
its metadata (preprocessing, labels, temperature) beside it; both written atomically into the run."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from graft.errors import RunError
from graft.features.backbones import ConcatBackbone
from graft.features.engines import OPSET, export_graph
from graft.model.ensemble import Ensemble
from graft.run import RunFiles, load_model, write_json


def export_onnx(run_dir: str | Path, opset: int = OPSET) -> Path:
    """Write ``model.onnx`` + its ``.json`` metadata into the run (atomically)."""
    files = RunFiles(run_dir)
    model = load_model(files.root, "cpu")  # the graph is traced on the host; it runs wherever ONNX Runtime does
    if isinstance(model, Ensemble) or isinstance(model.backbone, ConcatBackbone):
        raise RunError(f"{files.root} combines several backbones; export single-backbone runs, or serve this one "
                       "with --engine torch")
    network = nn.Sequential(model.backbone.model, model.head)
    export_graph(network, model.backbone.data_config["input_size"], files.onnx, "logits", model.backbone.name, opset)
    write_json(files.onnx_metadata, {"labels": model.labels, "data_config": model.backbone.data_config,
                                     "temperature": model.temperature, "backbone": model.backbone.describe(),
                                     "opset": opset})
    return files.onnx
