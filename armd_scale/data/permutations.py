"""Deterministic permutations that survive library upgrades.

Permutations are built from a SplitMix64 hash of (salts, index) and a stable argsort, not from
numpy's random generators: numpy only promises a stable bit stream, not stable shuffling
algorithms, and a run that resumes after an upgrade must see the very same order.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1

# Salt tags, so that the permutations drawn from one seed for different purposes are independent.
HOLDOUT = 3
SOURCE_PASS = 11  # the chunks of one pass over one source
MIXTURE_EPOCH = 12  # the pieces of one (mixture) epoch
LANE_WINDOW = 13  # the samples of one shuffle window of one lane


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


def holdout(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the `round(fraction * n)` items (at least 1 if fraction > 0, at most n - 1)
    held out for validation, chosen by a seeded permutation."""
    k = int(round(fraction * n))
    if fraction > 0:
        k = min(max(k, 1), n - 1)
    mask = np.zeros(n, dtype=bool)
    mask[permutation(n, seed, HOLDOUT)[:k]] = True
    return mask
