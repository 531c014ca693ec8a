"""Row files: ``.npy`` tables of float32 rows read and written in blocks with positional I/O, never memory-mapped.

Why not ``np.load(mmap_mode="r")``: every page a memory map touches stays in the process's resident set until the
kernel wants it back, so one pass over a 5 GB table shows - to schedulers and OOM killers alike - as 5 GB of RSS.
``pread`` leaves those pages to the page cache, where they cost the process nothing: an epoch over a row file holds
one block at a time, and memory stays flat however many rows there are (``bench/scale.py``). The files are ordinary
``.npy`` files (``np.load`` reads them), written to a temporary name and renamed once complete.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

BLOCK_ROWS = 8192  # rows per read: ~40 MB of 1,280-d features; shuffling is by block, then within it


class RowFile:
    """A read-only ``[n, d]`` float32 table on disk, or the rows ``positions`` of one (:meth:`subset`)."""

    def __init__(self, path: str | Path, positions: np.ndarray | None = None):
        self.path = Path(path)
        with self.path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(handle)
            self.offset = handle.tell()
        if dtype != np.float32 or fortran or len(shape) != 2:
            raise ValueError(f"{self.path}: not a row file (float32 [n, d] C-order .npy); was it written by graft?")
        self.rows_in_file, self.dim = int(shape[0]), int(shape[1])
        self.positions = np.arange(self.rows_in_file) if positions is None else np.asarray(positions, np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    @property
    def nbytes(self) -> int:
        return len(self) * self.dim * 4

    def subset(self, positions: np.ndarray) -> RowFile:
        """The rows ``positions`` of this table (a view: nothing is read or copied)."""
        return RowFile(self.path, self.positions[np.asarray(positions, np.int64)])

    def _read_span(self, handle, first: int, stop: int) -> np.ndarray:
        size = (stop - first) * self.dim * 4
        data = os.pread(handle.fileno(), size, self.offset + first * self.dim * 4)
        if len(data) != size:
            raise OSError(f"{self.path}: truncated row file (wanted rows {first}..{stop}); delete it and re-run")
        return np.frombuffer(data, np.float32).reshape(stop - first, self.dim)

    @staticmethod
    def _groups(file_rows: np.ndarray, block_rows: int) -> list[np.ndarray]:
        """Indices into ``file_rows`` grouped by the file block each row lies in, blocks in file order."""
        order = np.argsort(file_rows, kind="stable")
        cuts = np.flatnonzero(np.diff(file_rows[order] // block_rows)) + 1
        return np.split(order, cuts) if len(order) else []

    def block_sizes(self, block_rows: int = BLOCK_ROWS) -> list[int]:
        """Rows per block, as :meth:`blocks` will yield them (a minibatch count needs it before the first read)."""
        return [len(group) for group in self._groups(self.positions, block_rows)]

    def take(self, indices: np.ndarray | slice = slice(None), block_rows: int = BLOCK_ROWS) -> np.ndarray:
        """Rows ``indices`` of this table, in memory (one read per file block they touch)."""
        file_rows = self.positions[np.arange(len(self))[indices]]
        out = np.empty((len(file_rows), self.dim), np.float32)
        with self.path.open("rb") as handle:
            for group in self._groups(file_rows, block_rows):
                rows = file_rows[group]
                out[group] = self._read_span(handle, int(rows.min()), int(rows.max()) + 1)[rows - rows.min()]
        return out

    def blocks(self, indices: np.ndarray | None = None, seed: int | None = None,
               block_rows: int = BLOCK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(indices, rows)`` pairs covering ``indices`` (default: all) one file block at a time. With ``seed``,
        the blocks come in a shuffled order and rows are shuffled within each: "shuffled by chunk", the usual
        compromise between an epoch's randomness and reading the disk in long runs."""
        wanted = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        file_rows = self.positions[wanted]
        groups = self._groups(file_rows, block_rows)
        rng = np.random.default_rng(seed) if seed is not None else None
        if rng is not None:
            groups = [rng.permutation(groups[i]) for i in rng.permutation(len(groups))]
        with self.path.open("rb") as handle:
            for group in groups:
                rows = file_rows[group]
                first = int(rows.min())
                yield wanted[group], self._read_span(handle, first, int(rows.max()) + 1)[rows - first]

    def moments(self, indices: np.ndarray | None = None,
                transform: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and (n - 1) standard deviation per column in float64, one block at a time (Chan's pairwise update,
        which does not lose precision the way sum-of-squares does on features with a large mean), of the rows or of
        ``transform`` applied to each block."""
        count, mean, m2 = 0, np.zeros(self.dim), np.zeros(self.dim)
        for _, rows in self.blocks(indices):
            rows = rows if transform is None else transform(rows)
            n, block_mean = len(rows), rows.mean(0, dtype=np.float64)
            delta = block_mean - mean
            m2 += ((rows - block_mean) ** 2).sum(0) + delta**2 * count * n / (count + n)
            mean += delta * n / (count + n)
            count += n
        return mean, np.sqrt(m2 / max(count - 1, 1)) if count > 1 else np.ones(self.dim)


class RowWriter:
    """Writes an ``[n, d]`` row file block by block, at any rows; it appears under ``path`` only when every row was
    written and the writer closed without an error (a temporary name until then)."""

    def __init__(self, path: str | Path, rows: int, dim: int):
        self.path, self.rows, self.dim = Path(path), rows, dim
        self.temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.handle = self.temporary.open("wb+")
        np.lib.format.write_array_header_1_0(self.handle, {"descr": "<f4", "fortran_order": False,
                                                           "shape": (rows, dim)})
        self.offset = self.handle.tell()
        self.handle.truncate(self.offset + rows * dim * 4)
        self.written = np.zeros(rows, bool)

    def write(self, indices: np.ndarray | int, block: np.ndarray) -> None:
        """Rows ``indices`` (an array, or the first row of a contiguous block) get ``block``."""
        block = np.ascontiguousarray(block, np.float32).reshape(-1, self.dim)
        if isinstance(indices, int | np.integer):
            indices = np.arange(indices, indices + len(block))
        indices = np.asarray(indices, np.int64)
        order = np.argsort(indices, kind="stable")
        cuts = np.flatnonzero(np.diff(indices[order]) != 1) + 1
        for run in np.split(order, cuts):  # one write per run of consecutive rows
            os.pwrite(self.handle.fileno(), block[run].tobytes(), self.offset + int(indices[run[0]]) * self.dim * 4)
        self.written[indices] = True

    def close(self) -> RowFile:
        self.handle.close()
        if not self.written.all():
            self.temporary.unlink(missing_ok=True)
            raise ValueError(f"{self.path}: {int((~self.written).sum())} of {self.rows} rows were never written")
        os.replace(self.temporary, self.path)
        return RowFile(self.path)

    def abort(self) -> None:
        self.handle.close()
        self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_blocks(path: str | Path, rows: int, dim: int, blocks: Iterable[tuple[int, np.ndarray]]) -> RowFile:
    """A row file of ``rows`` x ``dim`` from ``(first row, block)`` pairs, one block in memory at a time."""
    with RowWriter(path, rows, dim) as writer:
        for start, block in blocks:
            writer.write(start, block)
    return RowFile(path)


def write_rows(path: str | Path, rows: np.ndarray) -> RowFile:
    """A row file holding ``rows`` (small tables and tests)."""
    return write_blocks(path, len(rows), rows.shape[1], [(0, rows)])
