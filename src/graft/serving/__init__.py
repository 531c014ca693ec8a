"""Serving: the HTTP app and web page, the ONNX export, and the engines behind them."""

from graft.lazy import LazyExports

_EXPORTS = LazyExports(__name__, {
    "graft.serving.web": ["Limits", "create_app"],
    "graft.serving.inference": ["OnnxModel", "load_engine"],
    "graft.serving.onnx": ["export_onnx"],
})
__getattr__, __dir__, __all__ = _EXPORTS.getattr, _EXPORTS.dir, _EXPORTS.names
