"""Finished batches are written by a pool of threads while the caller generates the next batch.

PIL's PNG encoder and numpy's file writes release the GIL, so threads use every core. At most `max_pending`
batches wait or are being written, so memory stays flat whatever the speed of the disk. The first failure stops
the run: no new batch is accepted, the batches already handed over are finished (nothing finished is lost), and
the error, which names the file, is raised to the caller.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from .samples import Batch, SampleFolder


class BatchWriter:
    def __init__(self, folder: SampleFolder, png: bool, workers: int, max_pending: int | None = None):
        self.folder, self.png = folder, png
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sample-writer")
        self._slots = threading.BoundedSemaphore(max_pending or workers + 1)
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self.busy_s = 0.0  # seconds spent writing, summed over the workers
        self.blocked_s = 0.0  # seconds submit() waited for a free slot (the caller's producer idled)

    def submit(self, batch: Batch) -> None:
        """Hand a batch over; blocks while max_pending batches are in the pool. Raises a worker's error."""
        self.raise_error()
        start = time.perf_counter()
        self._slots.acquire()
        self.blocked_s += time.perf_counter() - start
        self.raise_error()
        future = self._pool.submit(self._write, batch)
        future.add_done_callback(self._done)

    def _write(self, batch: Batch) -> None:
        start = time.perf_counter()
        try:
            self.folder.write(batch, self.png)
        finally:
            with self._lock:
                self.busy_s += time.perf_counter() - start

    def _done(self, future: Future) -> None:
        if future.exception() is not None:
            with self._lock:
                self.error = self.error or future.exception()
        self._slots.release()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Wait for every batch handed over, then raise the first error, if any."""
        self._pool.shutdown(wait=True)
        self.raise_error()

    def __enter__(self) -> "BatchWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:  # the caller failed (or was interrupted): finish what was handed over, keep the caller's error
            self._pool.shutdown(wait=True)
