"""The ``graft`` command line (a thin wrapper over the Python API); ``graft.cli:run_app`` is the entry point."""

from graft.cli import data, train, use  # noqa: F401  (registers the commands)
from graft.cli.app import app, run_app

__all__ = ["app", "run_app"]
