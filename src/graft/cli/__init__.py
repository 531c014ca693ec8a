"""The ``graft`` command line (a thin wrapper over the Python API); ``graft.cli:run_app`` is the entry point.

Commands are registered in the order ``graft --help`` lists them: train, then use, then look at data.
"""
# isort: skip_file

from graft.cli import train  # noqa: F401  fit, finetune, ensemble, demo
from graft.cli import use  # noqa: F401  evaluate, predict, report, export, serve
from graft.cli import data  # noqa: F401  inspect, preview-views
from graft.cli import cache_commands  # noqa: F401  extract, cache info|prune|verify
from graft.cli.main import app, run_app

__all__ = ["app", "run_app"]
