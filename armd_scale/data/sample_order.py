"""Deterministic permutations and the global sample order.

Permutations are built from a SplitMix64 hash of (salts, index) and a stable argsort, not from
numpy's random generators: numpy only promises a stable bit stream, not stable shuffling
algorithms, and a run that resumes after an upgrade must see the very same order.

The global order of an epoch: shards in a permutation keyed by (seed, epoch); inside each shard,
samples in a permutation keyed by (seed, epoch, shard). Position p of the epoch is therefore a
(shard, sample) pair computable without materialising the order, and consecutive positions mostly
fall in the same shard (read locality).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def hash_keys(n: int, *salts: int) -> np.ndarray:
    """n pseudo-random uint64 keys determined by `salts` (any ints, negative allowed)."""
    state = np.zeros(1, dtype=np.uint64)
    for salt in salts:
        state = _splitmix(state ^ np.uint64(salt & _MASK))
    return _splitmix(np.arange(n, dtype=np.uint64) ^ state)


def permutation(n: int, *salts: int) -> np.ndarray:
    """A permutation of range(n) determined by `salts` (int64)."""
    return np.argsort(hash_keys(n, *salts), kind="stable").astype(np.int64)


# Salt tags so the different permutations of one seed are independent.
_SHARDS, _SAMPLES, _HOLDOUT = 1, 2, 3


def holdout(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the `round(fraction * n)` items (at least 1 if fraction > 0, at most n - 1)
    held out for validation, chosen by a seeded permutation."""
    k = int(round(fraction * n))
    if fraction > 0:
        k = min(max(k, 1), n - 1)
    mask = np.zeros(n, dtype=bool)
    mask[permutation(n, seed, _HOLDOUT)[:k]] = True
    return mask


class GlobalOrder:
    """Maps (epoch, position) to (shard, sample) for shards of the given sizes."""

    def __init__(self, shard_sizes: Sequence[int], seed: int):
        self.sizes = np.asarray(shard_sizes, dtype=np.int64)
        self.seed = int(seed)
        self.num_samples = int(self.sizes.sum())
        # first global sample id of each shard, in manifest order (ids used by tests and debugging)
        self.first_id = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self._epoch: int | None = None
        self._sample_perms: dict[tuple[int, int], np.ndarray] = {}

    def _set_epoch(self, epoch: int) -> None:
        if self._epoch != epoch:
            self._epoch = epoch
            self.shard_order = permutation(len(self.sizes), self.seed, _SHARDS, epoch)
            self.ends = np.cumsum(self.sizes[self.shard_order])
            self._sample_perms.clear()

    def sample_perm(self, epoch: int, shard: int) -> np.ndarray:
        key = (epoch, shard)
        perm = self._sample_perms.get(key)
        if perm is None:
            perm = permutation(int(self.sizes[shard]), self.seed, _SAMPLES, epoch, shard)
            if len(self._sample_perms) > 64:
                self._sample_perms.clear()
            self._sample_perms[key] = perm
        return perm

    def locate(self, epoch: int, start: int, stop: int) -> list[tuple[int, int, np.ndarray]]:
        """Positions [start, stop) of `epoch` as segments (slot, shard, sample indices) in order,
        where slot is the shard's place in this epoch's shard permutation."""
        if not 0 <= start <= stop <= self.num_samples:
            raise IndexError(f"positions [{start}, {stop}) outside the epoch of {self.num_samples} samples")
        self._set_epoch(epoch)
        out = []
        pos = start
        while pos < stop:
            slot = int(np.searchsorted(self.ends, pos, side="right"))
            shard = int(self.shard_order[slot])
            begin = int(self.ends[slot] - self.sizes[shard])
            end = min(stop, int(self.ends[slot]))
            out.append((slot, shard, self.sample_perm(epoch, shard)[pos - begin : end - begin]))
            pos = end
        return out

    def shard_at(self, epoch: int, slot: int) -> int:
        self._set_epoch(epoch)
        return int(self.shard_order[slot % len(self.sizes)])

    def global_ids(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Manifest-order sample ids (shard offset + index in shard) of positions [start, stop)."""
        parts = [self.first_id[shard] + idx for _, shard, idx in self.locate(epoch, start, stop)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
