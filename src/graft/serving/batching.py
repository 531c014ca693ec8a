"""Micro-batching: concurrent requests' images run through the network in one forward.

Each request hands its prepared batch to :meth:`MicroBatcher.run` and waits; one worker thread takes the first
waiting batch, gathers whatever else arrives within ``window`` seconds (up to ``max_images``), runs them as one
array, and hands each request its own rows back. Rows are independent (inference mode, no batch statistics), so a
request's answer does not depend on what it was batched with.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np


class MicroBatcher:
    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], window: float = 0.005, max_images: int = 32):
        self.forward, self.window, self.max_images = forward, window, max_images
        self._queue: queue.Queue[tuple[np.ndarray, Future]] = queue.Queue()
        self.forwards = 0  # how many forwards ran (bench/serve.py and the tests read it)
        threading.Thread(target=self._serve, daemon=True, name="graft-micro-batch").start()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """``forward(batch)``, possibly computed together with other callers' batches."""
        done: Future = Future()
        self._queue.put((batch, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            waiting = [self._queue.get()]
            size, deadline = len(waiting[0][0]), time.monotonic() + self.window
            while size < self.max_images:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                waiting.append(item)
                size += len(item[0])
            self._run(waiting)

    def _run(self, waiting: list[tuple[np.ndarray, Future]]) -> None:
        try:
            rows = self.forward(np.concatenate([batch for batch, _ in waiting]))
            self.forwards += 1
        except Exception as error:  # every waiting request learns of it; the worker lives on
            for _, done in waiting:
                done.set_exception(error)
            return
        start = 0
        for batch, done in waiting:
            done.set_result(rows[start : start + len(batch)])
            start += len(batch)
