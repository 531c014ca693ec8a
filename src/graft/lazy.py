"""Package names imported on first use (PEP 562), not by importing the package.

Python runs a package's ``__init__`` before any module in it, so a package that imported its exports eagerly would
make ``import graft.serving.inference`` load the HTTP app and ``import graft.model.identification`` load torch - and
the command line, the ONNX engine and the tests' subprocesses would wait for libraries they do not use. Each package
hands its name table to :class:`LazyExports` and exposes its ``__getattr__``, ``__dir__`` and ``__all__``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


class LazyExports:
    """``exports``: module -> the names of it that the package ``package`` offers."""

    def __init__(self, package: str, exports: dict[str, list[str]]):
        self.package = package
        self.module_of = {name: module for module, names in exports.items() for name in names}
        self.names = sorted(self.module_of)

    def getattr(self, name: str) -> Any:
        if name not in self.module_of:
            raise AttributeError(f"module {self.package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(self.module_of[name]), name)
        setattr(sys.modules[self.package], name, value)  # later lookups are plain attribute reads
        return value

    def dir(self) -> list[str]:
        return sorted({*vars(sys.modules[self.package]), *self.names})
