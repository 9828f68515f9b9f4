"""The loader's saved state: its versions, and what a resume accepts, warns about or refuses.

Version 2 (written now) is plain JSON, small and the same on every rank:

    {"version": 2, "epoch": 3, "cursor": 4096, "seed": 1234, "global_batch_size": 512,
     "fingerprint": "...", "num_samples": 9000000, "url": "s3://b/owt/train", "shuffle_chunks": 4,
     "sources": [{"url": ..., "fingerprint": ..., "weight": 1.0, "epochs": 1.0,
                  "samples_per_epoch": 9000000, "chunk_samples": 51,
                  "bad_chunks": {"shard-000003.tar": [0, 7]}}]}

Version 1 (before chunked reads) has no `shuffle_chunks` and no `sources`; it is accepted for a
single shard set with the same fingerprint. What must match and what may change:

- the data (fingerprint: the shard sets, in order) must match; otherwise the state is refused;
- the seed and the shuffle window of the state win over the configured ones (with a warning), so
  the interrupted epoch keeps its order;
- a changed global batch, chunk size, mixture weight or a version-1 state (another order) continues
  at the same position of the same epoch with a warning: the rest of that epoch is then not
  exactly the samples not yet seen (some repeat, some are left out); from the next epoch on the run
  is exact again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from armd_scale.data.errors import DataError, DataMismatchError
from armd_scale.data.loading.mixture import MixtureSource
from armd_scale.data.loading.sample_order import ChunkTable, SampleOrder
from armd_scale.data.manifest import Manifest

log = logging.getLogger(__name__)

STATE_VERSION = 2
READABLE_VERSIONS = (1, 2)


class LoaderView(Protocol):
    """What the state format reads of a loader (ShardLoader has it). A protocol rather than an
    import of the loader, which imports this module."""

    @property
    def url(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def num_samples(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def shuffle_chunks(self) -> int: ...
    @property
    def global_batch_size(self) -> int: ...
    @property
    def sources(self) -> Sequence[MixtureSource]: ...
    @property
    def manifests(self) -> Sequence[Manifest]: ...
    @property
    def tables(self) -> Sequence[ChunkTable]: ...
    @property
    def order(self) -> SampleOrder: ...


@dataclass(frozen=True)
class Position:
    epoch: int
    cursor: int
    seed: int
    shuffle_chunks: int


def restore_state(loader: LoaderView, state: dict[str, Any]) -> Position:
    """Check `state` against `loader` and return the position to continue from (see module doc)."""
    if not isinstance(state, dict):
        raise DataError(f"loader state must be a mapping, got {type(state).__name__}")
    version = state.get("version", 1)
    if version not in READABLE_VERSIONS:
        raise DataError(
            f"loader state version {version!r} is not one this armd_scale reads ({READABLE_VERSIONS}); "
            "it was saved by a newer release"
        )
    missing = [k for k in ("epoch", "cursor", "seed", "fingerprint") if k not in state]
    if missing:
        raise DataError(f"loader state lacks {', '.join(missing)} (got keys {sorted(state)})")
    if state["fingerprint"] != loader.fingerprint:
        raise DataMismatchError(
            f"loader state was saved for data fingerprint {state['fingerprint']} "
            f"({state.get('url', '?')}, {state.get('num_samples', '?')} samples) but {loader.url} has "
            f"fingerprint {loader.fingerprint} ({loader.num_samples} samples): the shards differ from "
            "those the run started with"
        )
    epoch, cursor, seed = int(state["epoch"]), int(state["cursor"]), int(state["seed"])
    saved_samples = int(state.get("num_samples", loader.num_samples))
    if not (epoch >= 0 and 0 <= cursor <= saved_samples):
        raise DataError(f"loader state epoch={epoch} cursor={cursor} is outside the epoch of {saved_samples} samples")
    if seed != loader.seed:
        log.warning(
            "data seed %d from the loader state replaces the configured seed %d, so the "
            "interrupted epoch continues in its own order",
            seed,
            loader.seed,
        )
    shuffle_chunks = int(state.get("shuffle_chunks", loader.shuffle_chunks))
    if shuffle_chunks != loader.shuffle_chunks:
        log.warning(
            "shuffle window of %d chunks from the loader state replaces the configured %d, so the "
            "interrupted epoch continues in its own order",
            shuffle_chunks,
            loader.shuffle_chunks,
        )
    changes = _order_changes(loader, state, version)
    if changes and cursor > 0:
        log.warning(
            "%s since the loader state was saved: epoch %d continues at sample %d of the new order, so the "
            "rest of this epoch is not exactly the samples not yet seen; from epoch %d on the order is exact",
            "; ".join(changes),
            epoch,
            cursor,
            epoch + 1,
        )
    return Position(epoch, cursor, seed, shuffle_chunks)


def _order_changes(loader: LoaderView, state: dict[str, Any], version: int) -> list[str]:
    """What differs between the saved order and this loader's, in words."""
    changes = []
    if version == 1:
        changes.append("the state is from the shard-by-shard order of loader state version 1")
    saved_batch = state.get("global_batch_size", loader.global_batch_size)
    if saved_batch != loader.global_batch_size:
        changes.append(f"the global batch changed from {saved_batch} to {loader.global_batch_size}")
    for i, (saved, source, manifest) in enumerate(
        zip(state.get("sources") or [], loader.sources, loader.manifests, strict=False)
    ):
        for key, now in (
            ("weight", source.weight),
            ("epochs", source.epochs),
            ("chunk_samples", manifest.chunk_samples),
        ):
            if key in saved and saved[key] != now:
                changes.append(f"source {i} ({source.url}) {key} changed from {saved[key]} to {now}")
    return changes


def encode_bad_chunks(loader: LoaderView, bad: dict[int, str]) -> list[dict[str, list[int]]]:
    """Per source, {shard name: [chunk numbers]} of the chunk keys in `bad`."""
    out: list[dict[str, list[int]]] = [{} for _ in loader.sources]
    for key in sorted(bad):
        source, chunk = loader.order.locate(key)
        table = loader.tables[source]
        name = loader.manifests[source].shards[int(table.shard[chunk])].name
        out[source].setdefault(name, []).append(int(table.index[chunk]))
    return out


def decode_bad_chunks(loader: LoaderView, state: dict[str, Any]) -> list[int]:
    """The chunk keys of `loader` that the bad chunks listed in `state` cover. Chunks listed for
    another chunk size (the set was re-chunked since) mark every chunk holding one of their samples."""
    if state.get("fingerprint", loader.fingerprint) != loader.fingerprint:
        raise DataMismatchError(f"bad chunks of data {state['fingerprint']} cannot apply to {loader.fingerprint}")
    keys: list[int] = []
    for source, entry in enumerate(state.get("sources") or []):
        names = {s.name: i for i, s in enumerate(loader.manifests[source].shards)}
        table = loader.tables[source]
        theirs = int(entry.get("chunk_samples") or loader.manifests[source].require_chunks())
        for name, indices in (entry.get("bad_chunks") or {}).items():
            if name not in names:
                raise DataError(f"loader state names bad chunks of {name}, which {loader.sources[source].url} lacks")
            for index in indices:
                first, stop = int(index) * theirs, (int(index) + 1) * theirs
                hit = np.flatnonzero(
                    (table.shard == names[name]) & (table.first < stop) & (table.first + table.size > first)
                )
                if not len(hit):
                    raise DataError(f"loader state names chunk {index} of {name}, which has no such chunk")
                keys += [int(loader.order.key_base[source] + chunk) for chunk in hit]
    return keys
