"""The training-data loader: one global sample order, a global cursor as its only position.

Order. Epoch e of the data (one shard set, or a weighted mixture of several) has one deterministic
order, a function of (seed, e, the global batch size G) and of nothing else (`sample_order`).
Optimizer step k uses one sample of each of G lanes; rank r of W takes lanes [r*G/W, (r+1)*G/W)
and yields them as G/(W*m) micro-batches of m sequences. A rank's lanes are a contiguous stretch
of the epoch's chunk stream, so it reads each chunk it uses once, with one ranged request, and
hardly any chunk it does not use: about 1/W of the data, whatever W is.

State. `state_dict()` holds the epoch and the cursor (positions consumed in the epoch, counted in
whole optimizer steps), the seed, the shuffle window, the data's fingerprint and the chunks found
bad: nothing per rank. Resuming on any world size with the same global batch therefore continues
with exactly the samples not yet seen. Micro-batches of a step that was not completed are produced
again after a resume.

Work off the training thread: a background thread prepares `prefetch` micro-batches ahead, and
with `num_workers > 0` chunks are fetched, checksummed and decoded by worker processes ahead of
need. Neither changes what is produced. With `pin_memory=True` (the trainer asks for it when it
computes on CUDA) batches are made in page-locked memory by that same thread, so the trainer's
`.to(device, non_blocking=True)` is a real asynchronous copy rather than a synchronous one.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np
import torch

from armd_scale.data.chunk_cache import ChunkCache
from armd_scale.data.errors import BadShardError, DataError
from armd_scale.data.loading.loader_state import STATE_VERSION, decode_bad_chunks, encode_bad_chunks, restore_state
from armd_scale.data.loading.mixture import MixtureSource, as_sources, check_compatible, mixture_fingerprint, quotas
from armd_scale.data.loading.prefetch import Background, ChunkStore, make_executor
from armd_scale.data.loading.read_plan import StepPlan, plan_steps
from armd_scale.data.loading.sample_order import ChunkTable, SampleOrder
from armd_scale.data.manifest import check_expectations, read_manifest
from armd_scale.data.shardio import chunk_ref, read_chunk
from armd_scale.data.urls import DEFAULT_RETRY, RetryPolicy, StorageOptions, protocol_of

log = logging.getLogger(__name__)

# How far ahead (in optimizer steps) the loader may plan reads.
_MAX_PEEK_STEPS = 256


class ShardLoader:
    """Yields LongTensor micro-batches [micro_batch_size, seq_len] for one data-parallel rank.

    `url`: a shard-set URL, or a list of `MixtureSource(url, weight, epochs)` (or URLs) to mix.
    `shuffle_chunks`: samples are shuffled within windows of this many chunks of a lane.
    `cache_dir`/`cache_bytes`: a node-local `ChunkCache` for remote shards (None: no cache).
    `retry`: how remote read errors are retried before a chunk counts as bad."""

    def __init__(
        self,
        url: str | MixtureSource | Sequence[str | MixtureSource],
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
        shuffle_chunks: int = 4,
        cache_dir: str | None = None,
        cache_bytes: int = 20 << 30,
        retry: RetryPolicy = DEFAULT_RETRY,
    ):
        _check_geometry(global_batch_size, micro_batch_size, rank, world_size)
        if on_bad_shard not in ("error", "skip"):
            raise DataError(f"on_bad_shard={on_bad_shard!r} must be 'error' or 'skip'")
        if num_workers < 0 or prefetch < 0:
            raise DataError(f"num_workers={num_workers} and prefetch={prefetch} must be >= 0")
        if shuffle_chunks < 1:
            raise DataError(f"shuffle_chunks={shuffle_chunks} must be >= 1")
        self.sources = as_sources(url)
        self.storage_options = storage_options
        self.manifests = [read_manifest(s.url, storage_options) for s in self.sources]
        for m in self.manifests:
            check_expectations(m, tokenizer_sha=expect_tokenizer_sha, seq_len=expect_seq_len)
            m.require_chunks()
        check_compatible(self.manifests)
        self.url = self.sources[0].url if len(self.sources) == 1 else " + ".join(s.url for s in self.sources)
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.on_bad_shard = on_bad_shard
        self.loop = loop
        self.pin_memory = pin_memory
        self.retry = retry
        self.cache = ChunkCache(cache_dir, cache_bytes) if cache_dir else None
        self.tables = [ChunkTable.of([s.samples for s in m.shards], m.require_chunks()) for m in self.manifests]
        self.quotas = quotas(
            [t.num_samples for t in self.tables], [s.weight for s in self.sources], [s.epochs for s in self.sources]
        )
        self.order = self._make_order(seed, shuffle_chunks)
        if self.order.num_samples < global_batch_size:
            raise DataError(
                f"shard set {self.url} has {self.order.num_samples} samples, fewer than one global batch "
                f"({global_batch_size}); use a smaller batch or more data"
            )
        self.epoch = 0
        self.cursor = 0
        self._bad: dict[int, str] = {}  # chunk key -> reason (on_bad_shard="skip")
        self.skipped_samples = 0
        self._active: Iterator[torch.Tensor] | None = None
        self._executor: Executor | None = None  # started on first use, kept across iterators

    def _make_order(self, seed: int, shuffle_chunks: int) -> SampleOrder:
        self.shuffle_chunks = shuffle_chunks
        largest_chunk = max(m.require_chunks() for m in self.manifests)
        return SampleOrder(
            self.tables,
            self.quotas,
            seed=seed,
            global_batch_size=self.global_batch_size,
            window=shuffle_chunks * largest_chunk,
        )

    # -- facts ------------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.order.seed

    @property
    def seq_len(self) -> int:
        return self.manifests[0].seq_len

    @property
    def num_samples(self) -> int:
        """Samples in one epoch (of the mixture)."""
        return self.order.num_samples

    @property
    def fingerprint(self) -> str:
        return mixture_fingerprint([m.fingerprint for m in self.manifests])

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch

    @property
    def micro_batches_per_step(self) -> int:
        return self.global_batch_size // (self.world_size * self.micro_batch_size)

    @property
    def lanes(self) -> range:
        local = self.global_batch_size // self.world_size
        return range(self.rank * local, (self.rank + 1) * local)

    def chunk_name(self, key: int) -> tuple[int, str, int]:
        """(source, shard URL, chunk number in the shard) of a chunk key."""
        source, chunk = self.order.locate(key)
        table = self.tables[source]
        return source, self.manifests[source].shard_url(int(table.shard[chunk])), int(table.index[chunk])

    @property
    def bad_chunks(self) -> dict[str, str]:
        """`<shard URL>#chunk=<i>` -> why, for the chunks found bad (on_bad_shard='skip')."""
        out = {}
        for key, reason in sorted(self._bad.items()):
            _, url, index = self.chunk_name(key)
            out[f"{url}#chunk={index}"] = reason
        return out

    @property
    def num_bad_chunks(self) -> int:
        return len(self._bad)

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Global position in the data, at optimizer-step granularity; plain JSON (docs/DATA.md)."""
        bad = encode_bad_chunks(self, self._bad)
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "num_samples": self.num_samples,
            "global_batch_size": self.global_batch_size,
            "url": self.url,
            "shuffle_chunks": self.shuffle_chunks,
            "sources": [
                {
                    "url": s.url,
                    "fingerprint": m.fingerprint,
                    "weight": s.weight,
                    "epochs": s.epochs,
                    "samples_per_epoch": q,
                    "chunk_samples": m.chunk_samples,
                    "bad_chunks": b,
                }
                for s, m, q, b in zip(self.sources, self.manifests, self.quotas, bad, strict=True)
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (on any world size). Refuses state of other data."""
        restored = restore_state(self, state)
        if restored.seed != self.seed or restored.shuffle_chunks != self.shuffle_chunks:
            self.order = self._make_order(restored.seed, restored.shuffle_chunks)
        self._stop_active()
        self._bad = {}
        self.add_bad_chunks(state)
        cursor = restored.cursor // self.global_batch_size * self.global_batch_size
        self.epoch, self.cursor = self._normalise(restored.epoch, cursor)

    def add_bad_chunks(self, state: dict[str, Any]) -> None:
        """Treat the chunks that `state` (this data's state, maybe from another rank) lists as bad
        as bad here too, without reading them: ranks read different chunks, and a resumed run must
        skip all that the interrupted one skipped."""
        for key in decode_bad_chunks(self, state):
            self._bad.setdefault(key, "listed as bad in the loader state")

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

    def _produce(self, epoch: int, cursor: int) -> Iterator[np.ndarray]:
        if self._executor is None and self.num_workers > 0:
            # the memory:// filesystem lives in this process: worker processes would not see it
            self._executor = make_executor(self.num_workers, processes=protocol_of(self.sources[0].url) != "memory")
        store = ChunkStore(self._chunk_task, executor=self._executor)
        plans = plan_steps(self.order, self.lanes, epoch, cursor // self.global_batch_size, loop=self.loop)
        queued: deque[StepPlan] = deque()
        ahead = 2 * self.num_workers + 2 if self._executor is not None else 0
        loads_ahead = 0  # chunks acquired for queued steps after the one being produced
        m = self.micro_batch_size
        try:
            while True:
                while (not queued or loads_ahead < ahead) and len(queued) < _MAX_PEEK_STEPS:
                    plan = next(plans, None)
                    if plan is None:
                        break
                    for key in plan.acquire:
                        store.acquire(key)
                    loads_ahead += len(plan.acquire) if queued else 0
                    queued.append(plan)
                if not queued:
                    return
                plan = queued.popleft()
                if queued:
                    loads_ahead -= len(queued[0].acquire)
                for key in plan.release:
                    store.release(key)
                rows = self._rows(store, plan)
                for i in range(0, len(rows), m):
                    yield rows[i : i + m]
        finally:
            plans.close()
            store.close()

    def _chunk_task(self, key: int) -> functools.partial:
        source, chunk = self.order.locate(key)
        table, m = self.tables[source], self.manifests[source]
        return functools.partial(
            read_chunk,
            chunk_ref(m, int(table.shard[chunk]), int(table.index[chunk])),
            seq_len=m.seq_len,
            dtype=m.dtype,
            storage_options=self.storage_options,
            retry=self.retry,
            cache=self.cache,
            vocab_size=m.vocab_size,  # an id the model has no row for is named here, not an IndexError later
        )

    def _rows(self, store: ChunkStore, plan: StepPlan) -> np.ndarray:
        """The step's samples for this rank's places, in place order."""
        get = store.get
        if not self._bad:
            try:  # one chunk lookup per sample: no per-sample checks while no chunk is bad
                return np.stack([get(k)[r] for k, r in zip(plan.keys.tolist(), plan.rows.tolist(), strict=True)])
            except BadShardError:
                pass  # _row below finds it again and handles it
        return np.stack([self._row(store, plan, i) for i in range(len(plan.keys))])

    def _row(self, store: ChunkStore, plan: StepPlan, place: int) -> np.ndarray:
        """The sample at `place` of this rank's part of the step; with on_bad_shard='skip', one of a
        bad chunk comes from the next good piece of the epoch stream instead (the same stand-in on
        every rank and in every resumed run that knows the same bad chunks)."""
        key, row = int(plan.keys[place]), int(plan.rows[place])
        if key not in self._bad:
            try:
                return store.get(key)[row]
            except BadShardError as e:
                self._found_bad(key, e)
        piece = int(plan.pieces[place])
        offset = row - int(self.order.pieces(plan.epoch).lo[piece])
        while True:
            stand_in, stand_in_row = self.order.next_piece(plan.epoch, piece, offset, set(self._bad))
            try:
                data = store.get(stand_in)
            except BadShardError as e:
                self._found_bad(stand_in, e)
                continue
            self.skipped_samples += 1
            return data[stand_in_row]

    def _found_bad(self, key: int, error: BadShardError) -> None:
        if self.on_bad_shard == "error":
            raise error
        self._bad[key] = error.reason
        log.warning("skipping %s (%d bad chunk(s) so far)", error, len(self._bad))


def _check_geometry(global_batch_size: int, micro_batch_size: int, rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank={rank} must be in [0, world_size={world_size})")
    if global_batch_size < 1 or micro_batch_size < 1:
        raise DataError(f"global_batch_size={global_batch_size} and micro_batch_size={micro_batch_size} must be >= 1")
    if global_batch_size % world_size:
        raise DataError(f"global_batch_size={global_batch_size} is not divisible by world_size={world_size}")
    if (global_batch_size // world_size) % micro_batch_size:
        raise DataError(
            f"the per-rank batch global_batch_size/world_size = {global_batch_size // world_size} is not "
            f"divisible by micro_batch_size={micro_batch_size}"
        )
