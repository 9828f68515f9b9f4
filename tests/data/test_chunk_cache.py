"""ChunkCache: verified, size-bounded, shared by processes; with the loader, a node fetches a chunk once."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import time
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from armd_scale.data.chunk_cache import ChunkCache
from armd_scale.data.urls import sha256_bytes
from tests.data.conftest import sample_ids, write_indexed_set

BLOB = 16 << 10


def _blob(i: int) -> tuple[bytes, str]:
    data = hashlib.sha256(str(i).encode()).digest() * (BLOB // 32)
    return data, sha256_bytes(data)


def _never() -> bytes:
    raise AssertionError("fetched although the cache holds the chunk")


def test_a_chunk_is_fetched_once_and_then_read_from_disk(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "c", 1 << 20)
    data, sha = _blob(1)
    calls: list[int] = []
    assert cache.get_or_fetch(sha, lambda: calls.append(1) or data) == data
    assert cache.get_or_fetch(sha, _never) == data
    assert calls == [1] and cache.path_of(sha).read_bytes() == data and (cache.hits, cache.misses) == (1, 1)


def test_a_damaged_entry_is_dropped_and_fetched_again(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "c", 1 << 20)
    data, sha = _blob(2)
    cache.get_or_fetch(sha, lambda: data)
    cache.path_of(sha).write_bytes(b"x" + data[1:])
    assert cache.get_or_fetch(sha, lambda: data) == data and cache.misses == 2
    assert cache.path_of(sha).read_bytes() == data


def test_a_failed_fetch_stores_nothing(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "c", 1 << 20)
    _, sha = _blob(3)

    def broken() -> bytes:
        raise OSError("injected")

    with pytest.raises(OSError, match="injected"):
        cache.get_or_fetch(sha, broken)
    assert not cache.path_of(sha).exists()


def test_eviction_keeps_the_bound_and_drops_the_least_recently_used(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "c", 5 * BLOB)
    for i in range(5):
        data, sha = _blob(i)
        cache.get_or_fetch(sha, lambda data=data: data)
        os.utime(cache.path_of(sha), (1000 + i, 1000 + i))  # inserted in this order
    cache.get_or_fetch(_blob(0)[1], _never)  # a hit makes 0 the most recently used
    data, sha = _blob(5)
    cache.get_or_fetch(sha, lambda: data)  # 6 blobs > bound: down to 80% = 4 blobs
    kept = {i for i in range(6) if cache.path_of(_blob(i)[1]).exists()}
    assert kept == {0, 3, 4, 5} and cache.scan_bytes() <= 5 * BLOB


def test_temporary_files_of_dead_writers_are_cleared_by_a_scan(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "c", 1 << 20)
    data, sha = _blob(4)
    cache.get_or_fetch(sha, lambda: data)
    old, fresh = cache.path_of(sha).parent / ".x.tmp-old", cache.path_of(sha).parent / ".y.tmp-new"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"being written")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert cache.scan_bytes() == len(data)
    assert not old.exists() and fresh.exists()


def test_an_unusable_cache_directory_still_gives_the_data(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = ChunkCache(blocker / "cache", 1 << 20)
    data, sha = _blob(7)
    assert cache.get_or_fetch(sha, lambda: data) == data and cache.get_or_fetch(sha, lambda: data) == data
    assert cache.misses == 2 and "cannot use" in caplog.text


def _use_cache(args: tuple[str, int, int, str]) -> bool:
    """A process fetching 40 chunks in its own order through the shared cache; every fetch is logged."""
    root, bound, seed, log = args
    cache = ChunkCache(root, bound)
    keys = list(range(40))
    random.Random(seed).shuffle(keys)
    ok = True
    for k in keys:
        data, sha = _blob(k)

        def fetch(k: int = k, data: bytes = data) -> bytes:
            with open(log, "a") as f:
                f.write(f"{k}\n")
            time.sleep(0.003)  # widen the window in which other processes ask for the same chunk
            return data

        ok &= cache.get_or_fetch(sha, fetch) == data
    return ok


@pytest.mark.parametrize("bound_blobs", [1000, 12])
def test_concurrent_processes_fetch_each_chunk_once_and_keep_the_bound(tmp_path: Path, bound_blobs: int) -> None:
    root, log = tmp_path / "cache", tmp_path / "fetches"
    bound = bound_blobs * BLOB
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_use_cache, [(str(root), bound, seed, str(log)) for seed in range(4)])
    assert all(results), "a process got wrong bytes"
    fetched = [int(x) for x in log.read_text().split()]
    if bound_blobs >= 40:
        assert sorted(fetched) == list(range(40)), "a chunk was fetched twice on one node"
    assert ChunkCache(root, bound).scan_bytes() <= bound
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]


class CountingFileSystem(LocalFileSystem):
    """The local filesystem under `counted://`, recording every ranged read (what a node fetches)."""

    protocol = "counted"
    ranges: list = []

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        return super()._strip_protocol(path[len("counted://") :] if path.startswith("counted://") else path)

    def cat_file(self, path, start=None, end=None, **kwargs):
        if start is not None:
            type(self).ranges.append((path, start, end))
        return super().cat_file(path, start, end, **kwargs)


def _rank(args: tuple[str, str | None, int, int]) -> tuple[list[list[int]], list]:
    url, cache_dir, rank, world = args
    from armd_scale.data.loading.loader import ShardLoader

    fsspec.register_implementation("counted", CountingFileSystem, clobber=True)
    CountingFileSystem.ranges = []
    with ShardLoader(
        f"counted://{url}",
        global_batch_size=24,
        micro_batch_size=8,
        rank=rank,
        world_size=world,
        seed=3,
        prefetch=0,
        loop=False,
        cache_dir=cache_dir,
        cache_bytes=1 << 30,
    ) as loader:
        batches = [sample_ids(b) for b in loader]
    return batches, CountingFileSystem.ranges


@pytest.mark.slow
def test_ranks_on_one_node_share_the_cache_and_get_the_same_data(tmp_path: Path) -> None:
    """Three rank processes read through one cache at once, then a second job does the same: the
    batches are those of uncached ranks, no chunk is fetched twice, the second job fetches nothing."""
    url, cache = str(tmp_path / "set"), str(tmp_path / "cache")
    write_indexed_set(url, 1000, chunk_samples=7)  # a rank's 328 samples are not whole chunks: edges are shared
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        plain = pool.map(_rank, [(url, None, r, 3) for r in range(3)])
        first = pool.map(_rank, [(url, cache, r, 3) for r in range(3)])
        second = pool.map(_rank, [(url, cache, r, 3) for r in range(3)])
    assert [b for b, _ in first] == [b for b, _ in plain] == [b for b, _ in second]
    uncached = [r for _, ranges in plain for r in ranges]
    fetched = [r for _, ranges in first for r in ranges]
    assert len(set(uncached)) < len(uncached), "neighbouring ranks share edge chunks"
    assert sorted(fetched) == sorted(set(uncached)), "each chunk fetched exactly once"
    assert [r for _, ranges in second for r in ranges] == []
