"""Stage 7, serving: the HTTP app and web page, the ONNX export, and the engines behind them."""

from graft.serving.app import Limits, create_app
from graft.serving.engine import OnnxModel, load_engine
from graft.serving.onnx import export_onnx

__all__ = ["Limits", "OnnxModel", "create_app", "export_onnx", "load_engine"]
