"""The training-data loader: one global sample order, a global cursor as its only state.

Order. Epoch e has one deterministic order of all N samples of the shard set, from (seed, e)
(see `order.GlobalOrder`). Optimizer step s of the epoch uses positions
[s*G, (s+1)*G) of that order (G = global batch size); rank r of W takes the contiguous slice
[r*G/W, (r+1)*G/W) of it and yields it as G/(W*m) micro-batches of m sequences. The last N mod G
positions of each epoch are dropped (a different tail each epoch, since the order is reshuffled).

State. `state_dict()` holds the epoch and the cursor (positions consumed in the epoch, counted in
whole optimizer steps), the seed and the shard set's fingerprint: nothing per rank. Resuming on any
world size with the same global batch therefore continues with exactly the samples not yet seen.
Micro-batches of a step that was not completed are produced again after a resume.

Work off the training thread: a background thread prepares `prefetch` micro-batches ahead, and
with `num_workers > 0` shards are fetched, checksummed and decoded by worker processes ahead of
need. Neither changes what is produced. With `pin_memory=True` (the trainer asks for it when it
computes on CUDA) batches are made in page-locked memory by that same thread, so the trainer's
`.to(device, non_blocking=True)` is a real asynchronous copy rather than a synchronous one.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

import numpy as np
import torch

from armd_scale.data.errors import BadShardError, DataError, DataMismatchError
from armd_scale.data.manifest import check_expectations, read_manifest
from armd_scale.data.prefetch import Background, ShardCache, make_executor
from armd_scale.data.sample_order import GlobalOrder
from armd_scale.data.shardio import load_shard
from armd_scale.data.urls import StorageOptions, protocol_of

log = logging.getLogger(__name__)

STATE_VERSION = 1
# How far ahead (in optimizer steps) the loader looks for shards to read ahead.
_MAX_PEEK_STEPS = 256


class ShardLoader:
    """Yields LongTensor micro-batches [micro_batch_size, seq_len] for one data-parallel rank."""

    def __init__(
        self,
        url: str,
        *,
        global_batch_size: int,
        micro_batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int = 0,
        prefetch: int = 2,
        on_bad_shard: str = "error",
        expect_tokenizer_sha: str | None = None,
        expect_seq_len: int | None = None,
        loop: bool = True,
        storage_options: StorageOptions = None,
        pin_memory: bool = False,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank={rank} must be in [0, world_size={world_size})")
        if global_batch_size < 1 or micro_batch_size < 1:
            raise DataError(
                f"global_batch_size={global_batch_size} and micro_batch_size={micro_batch_size} must be >= 1"
            )
        if global_batch_size % world_size:
            raise DataError(f"global_batch_size={global_batch_size} is not divisible by world_size={world_size}")
        if (global_batch_size // world_size) % micro_batch_size:
            raise DataError(
                f"the per-rank batch global_batch_size/world_size = {global_batch_size // world_size} is not "
                f"divisible by micro_batch_size={micro_batch_size}"
            )
        if on_bad_shard not in ("error", "skip"):
            raise DataError(f"on_bad_shard={on_bad_shard!r} must be 'error' or 'skip'")
        if num_workers < 0 or prefetch < 0:
            raise DataError(f"num_workers={num_workers} and prefetch={prefetch} must be >= 0")
        self.url = url.rstrip("/")
        self.storage_options = storage_options
        self.manifest = read_manifest(self.url, storage_options)
        check_expectations(self.manifest, tokenizer_sha=expect_tokenizer_sha, seq_len=expect_seq_len)
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.on_bad_shard = on_bad_shard
        self.loop = loop
        self.pin_memory = pin_memory
        self.order = GlobalOrder([s.samples for s in self.manifest.shards], seed)
        if self.order.num_samples < global_batch_size:
            raise DataError(
                f"shard set {self.url} has {self.order.num_samples} samples, fewer than one global batch "
                f"({global_batch_size}); use a smaller batch or more data"
            )
        self.epoch = 0
        self.cursor = 0
        # shard index -> reason, for shards found bad (on_bad_shard="skip")
        self.bad_shards: dict[int, str] = {}
        self.skipped_samples = 0
        self._active: Iterator[torch.Tensor] | None = None
        self._executor: Executor | None = None  # started on first use, kept across iterators

    # -- facts ------------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.order.seed

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len

    @property
    def num_samples(self) -> int:
        return self.order.num_samples

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch_size

    @property
    def micro_batches_per_step(self) -> int:
        return self.global_batch_size // (self.world_size * self.micro_batch_size)

    @property
    def num_bad_shards(self) -> int:
        return len(self.bad_shards)

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Global position in the data, at optimizer-step granularity; plain JSON-able types."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "num_samples": self.num_samples,
            "global_batch_size": self.global_batch_size,
            "url": self.url,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position. Refuses state saved for another shard set."""
        missing = [k for k in ("epoch", "cursor", "seed", "fingerprint") if k not in state]
        if missing:
            raise DataError(f"loader state lacks {', '.join(missing)} (got keys {sorted(state)})")
        if state["fingerprint"] != self.fingerprint:
            raise DataMismatchError(
                f"loader state was saved for shard set fingerprint {state['fingerprint']} "
                f"({state.get('url', '?')}, {state.get('num_samples', '?')} samples) but {self.url} has "
                f"fingerprint {self.fingerprint} ({self.num_samples} samples): the shards differ from "
                "those the run started with"
            )
        epoch, cursor, seed = int(state["epoch"]), int(state["cursor"]), int(state["seed"])
        if not (epoch >= 0 and 0 <= cursor <= self.num_samples):
            raise DataError(
                f"loader state epoch={epoch} cursor={cursor} is outside the shard set of {self.num_samples} samples"
            )
        if seed != self.seed:
            log.warning(
                "data seed %d from the loader state replaces the configured seed %d, so the "
                "interrupted epoch continues in its own order",
                seed,
                self.seed,
            )
            self.order = GlobalOrder([s.samples for s in self.manifest.shards], seed)
        if state.get("global_batch_size", self.global_batch_size) != self.global_batch_size:
            log.warning(
                "global batch size changed from %s to %d on resume; continuing at sample %d of epoch %d",
                state["global_batch_size"],
                self.global_batch_size,
                cursor,
                epoch,
            )
        self._stop_active()
        self.epoch, self.cursor = self._normalise(epoch, cursor)

    def _normalise(self, epoch: int, cursor: int) -> tuple[int, int]:
        """An epoch with less than a global batch left is over: move to the next one."""
        if self.num_samples - cursor < self.global_batch_size:
            return epoch + 1, 0
        return epoch, cursor

    # -- iteration --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[torch.Tensor]:
        """Micro-batches from the current state on (only one iterator is active at a time)."""
        self._stop_active()
        self._active = self._iterate()
        return self._active

    def _stop_active(self) -> None:
        if self._active is not None:
            self._active.close()  # type: ignore[attr-defined]
            self._active = None

    def close(self) -> None:
        """Stop the active iterator, its background thread and the worker processes."""
        self._stop_active()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> ShardLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _iterate(self) -> Iterator[torch.Tensor]:
        self.epoch, self.cursor = self._normalise(self.epoch, self.cursor)
        source: Iterator[torch.Tensor] = self._as_tensors(self._produce(self.epoch, self.cursor))
        if self.prefetch > 0:
            source = Background(source, self.prefetch)
        per_step = self.micro_batches_per_step
        start_epoch = self.epoch
        count = 0
        try:
            for micro in source:
                count += 1
                if count % per_step == 0:  # the step is complete once its last micro-batch is handed out
                    self.epoch, self.cursor = self._normalise(self.epoch, self.cursor + self.global_batch_size)
                yield micro
                if not self.loop and self.epoch != start_epoch:
                    return
        finally:
            source.close()  # type: ignore[attr-defined]

    def _as_tensors(self, rows: Iterator[np.ndarray]) -> Iterator[torch.Tensor]:
        """int64 tensors of the micro-batches, page-locked when asked (in the prefetch thread if there is one)."""
        try:
            for micro in rows:
                batch = torch.from_numpy(micro.astype(np.int64))
                yield batch.pin_memory() if self.pin_memory else batch
        finally:
            rows.close()  # type: ignore[attr-defined]

    def _steps(self, epoch: int, cursor: int) -> Iterator[tuple[int, int]]:
        while True:
            yield epoch, cursor
            epoch2, cursor = self._normalise(epoch, cursor + self.global_batch_size)
            if epoch2 != epoch and not self.loop:
                return
            epoch = epoch2

    def _plan(self, epoch: int, cursor: int) -> tuple[int, list[tuple[int, int, np.ndarray]]]:
        """This rank's slice of the step at (epoch, cursor) as (slot, shard, sample indices) segments."""
        local = self.global_batch_size // self.world_size
        start = cursor + self.rank * local
        return epoch, self.order.locate(epoch, start, start + local)

    def _produce(self, epoch: int, cursor: int) -> Iterator[np.ndarray]:
        if self._executor is None and self.num_workers > 0:
            # the memory:// filesystem lives in this process: worker processes would not see it
            self._executor = make_executor(self.num_workers, processes=protocol_of(self.url) != "memory")
        cache = ShardCache(self._shard_task, executor=self._executor, capacity=self.num_workers + 3)
        plans = (self._plan(e, c) for e, c in self._steps(epoch, cursor))
        window: deque[tuple[int, list[tuple[int, int, np.ndarray]]]] = deque()
        ahead = self.num_workers + 1
        m = self.micro_batch_size
        try:
            while True:
                upcoming = self._peek(plans, window, ahead)
                if not window:
                    return
                cache.want(upcoming)
                plan_epoch, segments = window.popleft()
                rows = np.concatenate([self._rows(cache, plan_epoch, *seg) for seg in segments])
                for i in range(0, len(rows), m):
                    yield rows[i : i + m]
        finally:
            cache.close()

    @staticmethod
    def _peek(plans: Iterator, window: deque, ahead: int) -> list[int]:
        """Extend `window` with future plans until it names more than `ahead` distinct shards (or
        enough steps are queued); return those shards in order of first use."""
        while True:
            shards: list[int] = []
            for _, segments in window:
                for _, shard, _ in segments:
                    if shard not in shards:
                        shards.append(shard)
            if len(shards) > ahead or len(window) >= _MAX_PEEK_STEPS:
                return shards[: ahead + 1]
            nxt = next(plans, None)
            if nxt is None:
                return shards[: ahead + 1]
            window.append(nxt)

    def _shard_task(self, index: int) -> functools.partial:
        m = self.manifest
        return functools.partial(
            load_shard,
            m.shard_url(index),
            m.shards[index],
            seq_len=m.seq_len,
            dtype=m.dtype,
            storage_options=self.storage_options,
        )

    def _rows(self, cache: ShardCache, epoch: int, slot: int, shard: int, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` of `shard`; with on_bad_shard='skip', rows of a bad shard come from the next good
        shard of the epoch's shard order instead (same for every rank, so shapes stay fixed)."""
        n = len(self.manifest.shards)
        for k in range(n):
            candidate = shard if k == 0 else self.order.shard_at(epoch, slot + k)
            if candidate in self.bad_shards:
                continue
            try:
                data = cache.get(candidate)
            except BadShardError as e:
                if self.on_bad_shard == "error":
                    raise
                self.bad_shards[candidate] = e.reason
                log.warning("skipping %s (%d bad shard(s) so far)", e, len(self.bad_shards))
                continue
            if k:
                self.skipped_samples += len(idx)
                return data[idx % len(data)]
            return data[idx]
        raise DataError(f"every shard of {self.url} is bad: {sorted(self.bad_shards.items())[:3]}...")
