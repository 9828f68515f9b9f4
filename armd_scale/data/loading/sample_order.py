"""The global sample order: which sample fills each place of each global batch.

It is built so that a data-parallel rank reads only (about) the bytes it trains on, while the order
stays one global order that does not depend on the number of ranks (so a run resumes exactly on
any world size from a cursor alone):

1. Chunks. A chunk is `chunk_samples` consecutive records of a shard (set at build time; the
   manifest has a checksum per chunk). It is the unit of reading: one ranged request.
2. Chunk streams. Pass f over source s visits the source's chunks in a permutation keyed by
   (seed, s, f); the source's stream is its passes one after another.
3. Epoch stream. Epoch e of the mixture takes samples [e*M_s, (e+1)*M_s) of each source's stream
   (M_s from `mixture.quotas`; one source: M = N, the whole pass e) as pieces: whole chunks, and
   parts of a chunk at the two ends. The pieces of all sources, permuted by (seed, e) and laid end
   to end, are the epoch stream of T = sum(M_s) samples.
4. Lanes. The epoch stream is cut into G lanes of L = T // G consecutive samples (G = global batch
   size; the last T mod G samples are dropped, different ones each epoch). Place j of the global
   batch of step k is a sample of lane j; step k+1 takes the lane's next sample. Rank r of W takes
   places [r*G/W, (r+1)*G/W): a contiguous range of the epoch stream, hence whole chunks, read
   once. Only the two chunks at the ends of its range are shared with a neighbouring rank.
5. Windows. Inside a lane, samples are shuffled within windows of `window` consecutive lane
   positions (a few chunks). Without them a lane would hand out consecutive records of a document
   on consecutive steps. Each lane's window grid is shifted by (j * window) // G, so the ranks' reads
   are spread over steps rather than all falling on the same step.

What this gives up against a full shuffle of all samples: a global batch draws its G samples from
G lanes, that is from G different places of a random chunk order (more spread than a batch drawn
from one shard), but consecutive steps draw from the same windows of chunks, so a lane's samples
over `window` steps are correlated (nearby text). docs/DATA.md has measurements.

Everything is a pure function of (seed, sources' chunk geometry, quotas, G, window), computed
lazily per epoch and per window; nothing here reads data.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from armd_scale.data.errors import DataError
from armd_scale.data.permutations import LANE_WINDOW, MIXTURE_EPOCH, SOURCE_PASS, permutation


@dataclass(frozen=True)
class ChunkTable:
    """The chunks of one shard set, in manifest order: chunk c is rows [first[c], first[c] + size[c])
    of shard `shard[c]`, the `index[c]`-th chunk of that shard."""

    shard: np.ndarray
    index: np.ndarray
    first: np.ndarray
    size: np.ndarray

    @classmethod
    def of(cls, shard_samples: Sequence[int], chunk_samples: int) -> ChunkTable:
        shard, index, first, size = [], [], [], []
        for s, n in enumerate(shard_samples):
            starts = np.arange(0, n, chunk_samples, dtype=np.int64)
            shard.append(np.full(len(starts), s, dtype=np.int64))
            index.append(np.arange(len(starts), dtype=np.int64))
            first.append(starts)
            size.append(np.minimum(chunk_samples, n - starts))
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
        return cls(cat(shard), cat(index), cat(first), cat(size))

    @property
    def num_samples(self) -> int:
        return int(self.size.sum())

    def __len__(self) -> int:
        return len(self.size)


@dataclass(frozen=True)
class EpochPieces:
    """The epoch stream: piece p is rows [lo[p], lo[p] + length) of chunk key[p], ending at stream
    offset ends[p]."""

    key: np.ndarray
    lo: np.ndarray
    ends: np.ndarray

    def length(self, p: int) -> int:
        return int(self.ends[p] - (self.ends[p - 1] if p else 0))


@dataclass(frozen=True)
class LaneWindow:
    """Lane positions [start, stop) of one lane in one epoch: the chunk key, the row within that
    chunk and the epoch-stream piece of each position."""

    epoch: int
    lane: int
    start: int
    stop: int
    keys: np.ndarray
    rows: np.ndarray
    pieces: np.ndarray

    def distinct_keys(self) -> list[int]:
        """The chunks this window reads, in order of first use."""
        _, first = np.unique(self.keys, return_index=True)
        return [int(k) for k in self.keys[np.sort(first)]]


class SampleOrder:
    """The order of epochs of a mixture of chunked sources (one source: weight 1, quota N)."""

    def __init__(
        self,
        tables: Sequence[ChunkTable],
        quotas: Sequence[int],
        *,
        seed: int,
        global_batch_size: int,
        window: int,
    ):
        if len(tables) != len(quotas) or not tables:
            raise ValueError("one quota per source, and at least one source")
        if window < 1:
            raise DataError(f"shuffle window of {window} samples must be >= 1")
        self.tables = list(tables)
        self.quotas = [int(q) for q in quotas]
        self.seed = int(seed)
        self.global_batch_size = int(global_batch_size)
        self.window = int(window)
        self.key_base = np.concatenate([[0], np.cumsum([len(t) for t in self.tables])]).astype(np.int64)
        self.num_samples = sum(self.quotas)  # per epoch
        self.steps_per_epoch = self.num_samples // self.global_batch_size
        self._passes: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._epochs: OrderedDict[int, EpochPieces] = OrderedDict()

    # -- keys -------------------------------------------------------------------------------------
    def locate(self, key: int) -> tuple[int, int]:
        """(source, chunk number in that source's table) of a chunk key."""
        source = int(np.searchsorted(self.key_base, key, side="right")) - 1
        return source, int(key - self.key_base[source])

    # -- streams ----------------------------------------------------------------------------------
    def _pass(self, source: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk permutation, cumulative sizes in that order) of pass `index` over `source`."""
        found = self._passes.get((source, index))
        if found is None:
            table = self.tables[source]
            perm = permutation(len(table), self.seed, SOURCE_PASS, source, index)
            found = (perm, np.cumsum(table.size[perm]))
            self._passes[(source, index)] = found
            while len(self._passes) > 2 * len(self.tables) + 2:
                self._passes.popitem(last=False)
        return found

    def _source_range(self, source: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples [lo, hi) of a source's stream as pieces (chunk, first row, end row)."""
        n = self.tables[source].num_samples
        sizes = self.tables[source].size
        chunks, starts, stops = [], [], []
        pos = lo
        while pos < hi:
            index = pos // n
            perm, ends = self._pass(source, index)
            a, b = pos - index * n, min(hi - index * n, n)
            i0 = int(np.searchsorted(ends, a, side="right"))
            i1 = int(np.searchsorted(ends, b - 1, side="right"))
            picked = perm[i0 : i1 + 1]
            begin = ends[i0 : i1 + 1] - sizes[picked]
            chunks.append(picked)
            starts.append(np.maximum(a - begin, 0))
            stops.append(np.minimum(b - begin, sizes[picked]))
            pos = index * n + b
        return np.concatenate(chunks), np.concatenate(starts), np.concatenate(stops)

    def pieces(self, epoch: int) -> EpochPieces:
        found = self._epochs.get(epoch)
        if found is None:
            keys, los, lengths = [], [], []
            for s, quota in enumerate(self.quotas):
                chunks, lo, hi = self._source_range(s, epoch * quota, (epoch + 1) * quota)
                keys.append(chunks + self.key_base[s])
                los.append(lo)
                lengths.append(hi - lo)
            key, lo, length = np.concatenate(keys), np.concatenate(los), np.concatenate(lengths)
            perm = permutation(len(key), self.seed, MIXTURE_EPOCH, epoch)
            found = EpochPieces(key[perm], lo[perm], np.cumsum(length[perm]))
            self._epochs[epoch] = found
            while len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return found

    # -- lanes and windows ------------------------------------------------------------------------
    def window_bounds(self, lane: int, position: int) -> tuple[int, int]:
        """The window [start, stop) of lane positions that holds `position`."""
        length = self.steps_per_epoch
        shift = (lane * self.window) // self.global_batch_size
        if position < shift:
            return 0, min(shift, length)
        start = shift + (position - shift) // self.window * self.window
        return start, min(start + self.window, length)

    def window_at(self, epoch: int, lane: int, position: int) -> LaneWindow:
        if not (0 <= lane < self.global_batch_size and 0 <= position < self.steps_per_epoch):
            raise IndexError(
                f"lane {lane}, position {position} outside {self.global_batch_size} x {self.steps_per_epoch}"
            )
        start, stop = self.window_bounds(lane, position)
        shuffled = permutation(stop - start, self.seed, LANE_WINDOW, epoch, lane, start)
        offsets = lane * self.steps_per_epoch + start + shuffled
        p = self.pieces(epoch)
        piece = np.searchsorted(p.ends, offsets, side="right")
        piece_start = np.where(piece > 0, p.ends[np.maximum(piece - 1, 0)], 0)
        rows = p.lo[piece] + (offsets - piece_start)
        return LaneWindow(epoch, lane, start, stop, p.key[piece], rows, piece)

    def shared_chunks(self, epoch: int, lanes: range) -> list[int]:
        """Chunks that hold both the last sample of a lane and the first of the next, for
        neighbouring lanes in `lanes`. The first lane reaches such a chunk at the end of the epoch and
        the other at its start; a rank that holds them for the epoch reads each of them once."""
        p = self.pieces(epoch)
        edges = np.arange(lanes.start + 1, lanes.stop, dtype=np.int64) * self.steps_per_epoch
        before = p.key[np.searchsorted(p.ends, edges - 1, side="right")]
        after = p.key[np.searchsorted(p.ends, edges, side="right")]
        return [int(k) for k in before[before == after]]

    def epoch_matrix(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, rows) of every place of every step of `epoch`, shaped [steps, G]; for analysis
        and tests (the loader only ever computes the windows of its own lanes)."""
        steps, lanes = self.steps_per_epoch, self.global_batch_size
        keys = np.empty((steps, lanes), dtype=np.int64)
        rows = np.empty((steps, lanes), dtype=np.int64)
        for lane in range(lanes):
            position = 0
            while position < steps:
                w = self.window_at(epoch, lane, position)
                keys[w.start : w.stop, lane] = w.keys
                rows[w.start : w.stop, lane] = w.rows
                position = w.stop
        return keys, rows

    def next_piece(self, epoch: int, piece: int, offset: int, skip: set[int]) -> tuple[int, int]:
        """A stand-in for row `offset` of `piece` when its chunk is bad: (key, row) of the same
        offset (modulo length) in the first later piece of the epoch stream whose chunk is not in
        `skip`. Depends only on the epoch and `skip`, so every rank and every resumed run that
        knows the same bad chunks makes the same substitution."""
        p = self.pieces(epoch)
        count = len(p.key)
        for step in range(1, count):
            q = (piece + step) % count
            key = int(p.key[q])
            if key not in skip:
                return key, int(p.lo[q]) + offset % p.length(q)
        raise DataError("every chunk of the data is bad")
