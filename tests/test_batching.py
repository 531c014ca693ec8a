"""Micro-batching: concurrent callers share forwards, each gets exactly its own rows, failures reach every caller."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from graft.serving.batching import MicroBatcher


def test_concurrent_callers_share_forwards_and_get_their_own_rows():
    calls = []
    release = threading.Event()

    def forward(batch: np.ndarray) -> np.ndarray:
        release.wait(5)  # hold the first forward so the other callers queue up behind it
        calls.append(len(batch))
        return batch * 2.0

    batcher = MicroBatcher(forward, window=0.05, max_images=64)
    batches = [np.full((3, 2), i, np.float32) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(batcher.run, batch) for batch in batches]
        release.set()
        results = [future.result() for future in futures]
    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_array_equal(result, batch * 2.0)
    assert sum(calls) == 24 and len(calls) < 8 and batcher.forwards == len(calls)


def test_a_failed_forward_reaches_every_caller_and_the_batcher_lives_on():
    failing = {"on": True}

    def forward(batch: np.ndarray) -> np.ndarray:
        if failing["on"]:
            raise RuntimeError("engine fell over")
        return batch

    batcher = MicroBatcher(forward, window=0.01)
    with pytest.raises(RuntimeError, match="fell over"):
        batcher.run(np.zeros((1, 2)))
    failing["on"] = False
    np.testing.assert_array_equal(batcher.run(np.ones((2, 2))), np.ones((2, 2)))
