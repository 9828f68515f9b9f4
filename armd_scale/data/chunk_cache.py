"""A node-local, size-bounded cache of verified chunk bytes, shared by every process on the node.

Why: shards on object storage or a network filesystem are fetched over the network. A job that is
requeued, an evaluation that reads the same validation chunks every few hundred steps, or several
jobs on one node training on the same data would otherwise fetch the same bytes again and again.

Design:
- Content-addressed: a chunk is stored under its checksum from the manifest (the first 128 bits of
  its SHA-256), so entries of
  different shard sets and jobs can share one directory without any naming scheme, and a stale or
  foreign entry is impossible. Only bytes that passed the checksum are stored, and every hit is
  hashed again, so a damaged cache file is dropped and fetched anew rather than trained on.
- Fetch once per node: a miss takes an inter-process lock (`filelock`, one of 4096 lock files
  chosen by the hash), looks again, and only then fetches. Concurrent ranks and jobs that want the
  same chunk wait for the first fetch instead of repeating it.
- Atomic: a file is written under a temporary name and renamed into place; readers never see a
  partial entry. An entry deleted by eviction while another process reads it is harmless on POSIX
  (the open file stays readable), and one deleted before it is opened is simply a miss.
- Size bound: the processes keep a shared estimate of the total in `usage` (under a lock); when it
  passes `max_bytes`, one process lists the directory, corrects the estimate and deletes the least
  recently used entries (hits touch the file's mtime) until the total is below 80% of the bound.
- Best effort: a cache that cannot be written (disk full, read-only) logs a warning and the data is
  used uncached; the cache never fails a run.

Use a directory on a local disk: file locks on network filesystems are unreliable, and the point is
to avoid the network. Give every job on a node the same directory and the same bound.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from armd_scale.data.urls import sha256_bytes

log = logging.getLogger(__name__)

LOW_WATER = 0.8  # eviction goes down to this fraction of the bound, so it runs rarely
STALE_TMP_S = 3600.0  # a temporary file this old was left by a writer that died
_LOCK_STRIPES = 3  # hex digits of the hash that choose the lock file: 16**3 = 4096 locks


class ChunkCache:
    """Verified chunk bytes by digest (a prefix of their SHA-256 in hex) under `root` (created on first
    use), at most about `max_bytes`.

    Picklable (only the path and the bound travel), so loader worker processes use the same cache;
    `hits`, `misses` and `fetched_bytes` count this process's use."""

    def __init__(self, root: str | os.PathLike, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"chunk cache bound max_bytes={max_bytes} must be > 0")
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_bytes)
        self.hits = self.misses = self.fetched_bytes = 0
        self._write_failed = False

    def __getstate__(self) -> dict:
        return {"root": self.root, "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], state["max_bytes"])  # type: ignore[misc]

    # -- layout -----------------------------------------------------------------------------------
    def path_of(self, digest: str) -> Path:
        return self.root / "chunks" / digest[:2] / digest

    def _lock(self, name: str) -> FileLock:
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{name}.lock"))

    # -- use --------------------------------------------------------------------------------------
    def get_or_fetch(self, digest: str, fetch: Callable[[], bytes]) -> bytes:
        """The bytes whose SHA-256 (hex) starts with `digest`: from the cache, or from `fetch()` (which
        must verify them; its errors propagate and nothing is stored), fetched by one process of the node."""
        if len(digest) < 32:
            raise ValueError(f"chunk digest {digest!r} is too short to address the cache (at least 32 hex digits)")
        data = self._read_valid(digest)
        if data is not None:
            self.hits += 1
            return data
        try:
            lock = self._lock(digest[:_LOCK_STRIPES])
            lock.acquire()
        except OSError as e:
            self._unusable(e)
            return self._fetched(fetch())
        try:
            data = self._read_valid(digest)  # another process may have fetched it while we waited
            if data is not None:
                self.hits += 1
                return data
            data = self._fetched(fetch())
            stored = self._store(digest, data)
        finally:
            lock.release()
        if stored:
            self._account(len(data))
        return data

    def _fetched(self, data: bytes) -> bytes:
        self.misses += 1
        self.fetched_bytes += len(data)
        return data

    def _unusable(self, error: OSError) -> None:
        if not self._write_failed:
            log.warning("chunk cache: cannot use %s (%s); chunks are used uncached", self.root, error)
            self._write_failed = True

    def _read_valid(self, digest: str) -> bytes | None:
        path = self.path_of(digest)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            log.warning("chunk cache: cannot read %s (%s); fetching the chunk instead", path, e)
            return None
        if not sha256_bytes(data).startswith(digest):
            log.warning("chunk cache: %s is damaged (checksum mismatch); dropping it and fetching the chunk", path)
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # least-recently-used order for eviction
        except OSError:
            pass  # evicted meanwhile: the bytes we read are still good
        return data

    def _store(self, digest: str, data: bytes) -> bool:
        path = self.path_of(digest)
        tmp = path.parent / f".{digest}.tmp-{uuid.uuid4().hex}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
            return True
        except OSError as e:
            tmp.unlink(missing_ok=True)
            self._unusable(e)
            return False

    # -- size bound -------------------------------------------------------------------------------
    def _account(self, added: int) -> None:
        usage_file = self.root / "usage"
        with self._lock("usage"):
            try:
                usage = int(usage_file.read_text())
            except (OSError, ValueError):
                usage = self.scan_bytes() - added  # first use, or a damaged estimate: count
            usage += added
            if usage > self.max_bytes:
                usage = self._evict()
            tmp = self.root / f".usage.tmp-{uuid.uuid4().hex}"
            try:
                tmp.write_text(str(usage))
                os.replace(tmp, usage_file)
            except OSError:
                tmp.unlink(missing_ok=True)

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of the stored chunks; temporary files of writers that died are deleted."""
        out = []
        now = time.time()
        for sub in (self.root / "chunks").glob("??"):
            for path in sub.iterdir():
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if not path.name.startswith("."):
                    out.append((st.st_mtime, st.st_size, path))
                elif now - st.st_mtime > STALE_TMP_S:
                    path.unlink(missing_ok=True)
        return out

    def scan_bytes(self) -> int:
        """Total size of the stored chunks, counted on disk."""
        return sum(size for _, size, _ in self._entries())

    def _evict(self) -> int:
        """Delete least recently used entries until the total is under LOW_WATER * max_bytes; the
        caller holds the usage lock, so only one process evicts at a time. Returns the new total."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        target = LOW_WATER * self.max_bytes
        for _, size, path in entries:
            if total <= target:
                break
            path.unlink(missing_ok=True)
            total -= size
        return total
