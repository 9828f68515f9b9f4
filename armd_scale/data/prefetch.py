"""Background helpers for the loader: a prefetching thread and a shard cache with read-ahead.

Kept apart from the loader's indexing logic because they only move work off the training thread;
they never change which samples are produced, so batches are identical with or without them.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
_END = object()


class Background(Iterator[T]):
    """Runs `source` in a daemon thread, `size` items ahead of the consumer.

    Errors raised by the source are re-raised in the consumer. `close()` stops the thread at its
    next item boundary and closes the source in that thread (so its cleanup runs there)."""

    def __init__(self, source: Iterator[T], size: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
        self._stop = threading.Event()
        self._source = source
        self._thread = threading.Thread(target=self._run, name="armd-data-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)  # wake up periodically to notice close()
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # delivered to the consumer, not lost in the thread
            self._put(_Raise(e))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def __next__(self) -> T:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # stay exhausted
            raise StopIteration
        if isinstance(item, _Raise):
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _Raise:
    def __init__(self, error: BaseException):
        self.error = error


class ShardCache:
    """Loads shards by running `task(index)()`, ahead of need on `executor` (worker processes or
    threads; None loads on demand in the calling thread). `task` returns a picklable callable (a
    `functools.partial` of a module-level function), so only one shard's arguments cross the
    process boundary per load.

    `want(indices)` announces the shards needed next (in order); `get(index)` returns one, waiting
    for it if necessary. Errors (a bad shard) are raised by `get`, in the consumer's order."""

    def __init__(self, task: Callable[[int], Callable[[], np.ndarray]], *, executor: Executor | None, capacity: int):
        self._task = task
        self._executor = executor
        self._capacity = max(2, capacity)
        self._entries: OrderedDict[int, Future | np.ndarray] = OrderedDict()

    def want(self, indices: Iterable[int]) -> None:
        if self._executor is None:
            return
        for index in indices:
            if index not in self._entries:
                self._entries[index] = self._executor.submit(self._task(index))
        self._trim()

    def get(self, index: int) -> np.ndarray:
        entry = self._entries.pop(index, None)
        if entry is None:
            entry = self._task(index)()
        elif isinstance(entry, Future):
            entry = entry.result()  # raises the worker's error here, in order
        self._entries[index] = entry
        self._trim()
        return entry

    def _trim(self) -> None:
        while len(self._entries) > self._capacity:
            _, old = self._entries.popitem(last=False)
            if isinstance(old, Future):
                old.cancel()

    def close(self) -> None:
        """Drop cached shards and cancel loads not yet started (the executor stays up)."""
        for entry in self._entries.values():
            if isinstance(entry, Future):
                entry.cancel()
        self._entries.clear()


def make_executor(workers: int, processes: bool) -> Executor | None:
    """Worker processes (spawned, so no forked copies of the trainer's threads or CUDA state) or,
    where processes cannot see the data (memory://), threads; None for workers == 0."""
    if workers <= 0:
        return None
    if processes:
        return ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    return ThreadPoolExecutor(workers, thread_name_prefix="armd-shard")
