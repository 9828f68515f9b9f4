"""Background helpers for the loader: a prefetching thread and a chunk store with read-ahead.

Kept apart from the loader's indexing logic because they only move work off the training thread;
they never change which samples are produced, so batches are identical with or without them.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

import numpy as np

from armd_scale.data.errors import BadShardError

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


class ChunkStore:
    """The chunks a rank needs now or soon, loaded by running `task(key)()`: ahead of need on
    `executor` (worker processes or threads), or on demand in the calling thread when it is None.
    `task` returns a picklable callable (a `functools.partial` of a module-level function), so only
    one chunk's arguments cross the process boundary per load.

    acquire(key) announces a need (a reference count; the first one starts the load), release(key)
    ends one, and the chunk is dropped when none is left, so memory holds what the planned steps
    use and nothing more. get(key) returns the chunk, waiting for its load; a key that was never
    acquired (a stand-in for a bad chunk) is loaded on demand and kept among a few `spare` ones.
    A load that fails with `BadShardError` keeps that error and raises it on every get."""

    def __init__(self, task: Callable[[int], Callable[[], np.ndarray]], *, executor: Executor | None, spare: int = 4):
        self._task = task
        self._executor = executor
        self._refs: dict[int, int] = {}
        self._entries: dict[int, Future | np.ndarray | BadShardError] = {}
        self._spare: OrderedDict[int, np.ndarray | BadShardError] = OrderedDict()
        self._spare_size = spare

    def __len__(self) -> int:
        """Chunks held or loading."""
        return len(self._entries) + len(self._spare)

    def acquire(self, key: int) -> None:
        count = self._refs.get(key, 0)
        self._refs[key] = count + 1
        if count == 0 and key not in self._entries:
            spare = self._spare.pop(key, None)
            if spare is not None:
                self._entries[key] = spare
            elif self._executor is not None:
                self._entries[key] = self._executor.submit(self._task(key))

    def release(self, key: int) -> None:
        count = self._refs[key] - 1
        if count:
            self._refs[key] = count
            return
        del self._refs[key]
        entry = self._entries.pop(key, None)
        if isinstance(entry, Future):
            entry.cancel()

    def get(self, key: int) -> np.ndarray:
        entry = self._entries.get(key)
        if type(entry) is np.ndarray:  # the common case, kept cheap: it runs once per sample
            return entry
        if key in self._refs:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = self._load(key)
            elif isinstance(entry, Future):
                entry = self._entries[key] = self._result(entry)
        else:
            entry = self._spare.pop(key, None)
            if entry is None:
                entry = self._load(key)
            self._spare[key] = entry
            while len(self._spare) > self._spare_size:
                self._spare.popitem(last=False)
        if isinstance(entry, BadShardError):
            raise entry
        return entry

    def _load(self, key: int) -> np.ndarray | BadShardError:
        try:
            return self._task(key)()
        except BadShardError as e:
            return e

    @staticmethod
    def _result(future: Future) -> np.ndarray | BadShardError:
        try:
            return future.result()  # a worker's other errors are raised here, in order
        except BadShardError as e:
            return e

    def close(self) -> None:
        """Drop every chunk and cancel loads not yet started (the executor stays up)."""
        for entry in self._entries.values():
            if isinstance(entry, Future):
                entry.cancel()
        self._entries.clear()
        self._spare.clear()
        self._refs.clear()


def make_executor(workers: int, processes: bool) -> Executor | None:
    """Worker processes (spawned, so no forked copies of the trainer's threads or CUDA state) or,
    where processes cannot see the data (memory://), threads; None for workers == 0."""
    if workers <= 0:
        return None
    if processes:
        return ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    return ThreadPoolExecutor(workers, thread_name_prefix="armd-chunk")
