"""Row files (issue 14): .npy tables read and written in blocks with positional I/O, never memory-mapped."""

import numpy as np
import pytest

from graft.rows import RowFile, RowWriter, write_rows


@pytest.fixture
def table(tmp_path):
    rows = np.random.default_rng(0).normal(size=(95, 6)).astype(np.float32)
    return rows, write_rows(tmp_path / "rows.npy", rows)


def test_a_row_file_is_an_ordinary_npy_both_ways(tmp_path, table):
    rows, row_file = table
    assert np.array_equal(np.load(row_file.path), rows) and row_file.shape == (95, 6)
    np.save(tmp_path / "saved.npy", rows)
    assert np.array_equal(RowFile(tmp_path / "saved.npy").take(), rows)


def test_take_and_subset_return_the_rows_asked_for_in_their_order(table):
    rows, row_file = table
    index = np.array([90, 3, 3, 41, 0, 17])  # unsorted, repeated, across blocks
    assert np.array_equal(row_file.take(index, block_rows=10), rows[index])
    inner = row_file.subset(np.arange(20, 80)).subset(np.array([5, 0, 59]))
    assert np.array_equal(inner.take(), rows[[25, 20, 79]]) and len(inner) == 3


def test_blocks_cover_every_row_once_shuffled_by_chunk_and_reproducibly(table):
    rows, row_file = table
    wanted = np.arange(0, 95, 2)
    epoch = list(row_file.blocks(wanted, seed=1, block_rows=10))
    seen = np.concatenate([index for index, _ in epoch])
    assert sorted(seen) == list(wanted)  # each wanted row exactly once
    assert all(np.array_equal(block, rows[index]) for index, block in epoch)
    assert all(len(set(index // 10)) == 1 for index, _ in epoch)  # a block never mixes file blocks
    again = np.concatenate([index for index, _ in row_file.blocks(wanted, seed=1, block_rows=10)])
    other = np.concatenate([index for index, _ in row_file.blocks(wanted, seed=2, block_rows=10)])
    in_order = np.concatenate([index for index, _ in row_file.blocks(wanted, block_rows=10)])
    assert np.array_equal(seen, again) and not np.array_equal(seen, other)
    assert np.array_equal(in_order, wanted) and not np.array_equal(seen, in_order)


def test_streamed_moments_equal_the_in_memory_ones_even_far_from_zero(tmp_path):
    rows = (1e4 + np.random.default_rng(1).normal(size=(1000, 4)) * [1, 1e-3, 10, 0]).astype(np.float32)
    mean, std = write_rows(tmp_path / "r.npy", rows).moments()
    exact = rows.astype(np.float64)
    assert np.allclose(mean, exact.mean(0), rtol=0, atol=1e-9)
    assert np.allclose(std, exact.std(0, ddof=1), rtol=1e-6, atol=1e-9)


def test_a_writer_shows_its_file_only_once_every_row_is_written(tmp_path):
    path = tmp_path / "out.npy"
    with pytest.raises(RuntimeError), RowWriter(path, 4, 2) as writer:
        writer.write(0, np.ones((2, 2)))
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="2 of 4 rows were never written"), RowWriter(path, 4, 2) as writer:
        writer.write(np.array([3, 1]), np.array([[3, 3], [1, 1]]))
    assert list(tmp_path.iterdir()) == []
    with RowWriter(path, 4, 2) as writer:
        writer.write(np.array([3, 1, 0, 2]), np.array([[3, 3], [1, 1], [0, 0], [2, 2]]))
    assert np.array_equal(np.load(path), np.repeat(np.arange(4.0), 2).reshape(4, 2))


def test_a_file_that_is_not_a_row_table_is_refused_by_name(tmp_path):
    np.save(tmp_path / "ints.npy", np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match=r"ints\.npy: not a row file"):
        RowFile(tmp_path / "ints.npy")
