"""Files: atomic writes (a reader sees the old file or the new one, never half of one), content digests, and reads
that open only regular files.

Every file graft reads that someone else may have made (images, manifests, configs, a run's files, API keys) is
opened with :func:`open_regular`: a FIFO, a device such as ``/dev/zero`` or a socket named like a photo would
otherwise block a read forever or never end.
"""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class NotRegularFile(OSError):
    """The path names a FIFO, a device, a socket or a folder, not a file's bytes."""


def open_regular(path: str | Path) -> BinaryIO:
    """Open ``path`` for reading in binary, only if it is a regular file (links are followed).

    The file is opened without blocking (a FIFO would otherwise wait for a writer) and checked with ``fstat`` on the
    open descriptor, so it cannot be swapped for something else between the check and the read.
    """
    path = Path(path)
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
            raise NotRegularFile(f"{path} is {kind}, not a file")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_regular(path: str | Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file; more than ``limit`` bytes is a :class:`ValueError` naming the file."""
    with open_regular(path) as handle:
        data = handle.read() if limit is None else handle.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise ValueError(f"{path} is larger than {limit:,} bytes")
    return data


def read_text(path: str | Path, limit: int | None = None) -> str:
    """A regular file's text as UTF-8 (:class:`UnicodeDecodeError` otherwise), at most ``limit`` bytes."""
    return read_regular(path, limit).decode("utf-8")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, flush it to disk, then rename it into place: after
    a crash or power loss the path holds the old bytes or the new ones, never a zero-length or partial file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temporary.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))


_DIGESTS: dict[tuple[int, ...], str] = {}
_DIGESTS_KEPT = 1_000_000  # ~150 MB of keys at most; past it the memo starts again


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes: the content key of an image in every cache.

    Remembered for the process by the file's identity and change stamps (device, inode, size, mtime and ctime in ns,
    from ``fstat`` on the open file): ``graft fit`` hashes every image to find copies under two labels and again to
    key its features, and a rewritten file gets new stamps, so it is hashed anew."""
    with open_regular(path) as handle:
        stamp = os.fstat(handle.fileno())
        key = (stamp.st_dev, stamp.st_ino, stamp.st_size, stamp.st_mtime_ns, stamp.st_ctime_ns)
        digest = _DIGESTS.get(key)
        if digest is None:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
            if len(_DIGESTS) >= _DIGESTS_KEPT:
                _DIGESTS.clear()
            _DIGESTS[key] = digest
        return digest
