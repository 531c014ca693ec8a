"""graft's exceptions: each message says what was received, what was expected, and how to fix it."""

from __future__ import annotations


class GraftError(Exception):
    """Base class; the CLI prints these without a traceback (exit code 2) unless --debug."""


class DataError(GraftError):
    """The dataset cannot be used as given (missing files, bad manifest rows, too few classes...)."""


class ConfigError(GraftError):
    """A configuration value or file is invalid."""


class BackboneError(GraftError):
    """A backbone name, weights file or download could not be resolved."""


class RunError(GraftError):
    """A run directory is missing an artefact or was written by an incompatible version."""


class ImageError(GraftError):
    """One image could not be decoded; pipelines skip the image and list it instead of stopping."""


class ImageTooLarge(ImageError):
    """An image's header announces more pixels than graft decodes (a decompression bomb, or a huge scan)."""


class DeviceError(GraftError):
    """The device asked for (``--device cuda``...) is not there, or cannot do what was asked of it."""


def first_line(error: BaseException) -> str:
    """The first line of a library's error message (some run to pages), for a one-line error of graft's own."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
