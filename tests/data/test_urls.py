"""Ranged reads fetch the bytes asked for and no more, counted outside the loader: by the kernel's
per-process read counter for local files, and by the filesystem's own fetches for other storage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from armd_scale.data.urls import read_range

RANGES = [(i * 20_000 + 13, i * 20_000 + 13 + 1536) for i in range(40)]  # 3 records of 512 B, unaligned

_CHILD = """
import sys
from pathlib import Path
from armd_scale.data.urls import read_range

def rchar():
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])

path, ranges = sys.argv[1], [tuple(map(int, r.split(":"))) for r in sys.argv[2:]]
read_range(path, 0, 1)  # first-call work (imports, caches) is not part of the count
idle = rchar(); idle = rchar() - idle  # what reading the counter itself costs
before = rchar()
data = [read_range(path, a, b) for a, b in ranges]
print(rchar() - before - idle, sum(map(len, data)))
"""


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts reads with Linux's /proc/self/io")
def test_a_local_ranged_read_reads_only_its_range(tmp_path: Path) -> None:
    """rchar of a child process that does nothing but the reads: a buffered file would read whole
    4 KiB blocks here, 2.7x the bytes asked for."""
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(1 << 20))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    args = [f"{a}:{b}" for a, b in RANGES]
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), *args], env=env, capture_output=True, text=True, check=True
    )
    read, got = map(int, out.stdout.split())
    asked = sum(b - a for a, b in RANGES)
    assert got == asked
    assert read <= asked + 256, f"read {read} bytes for {asked} asked"


class CountingFileSystem(AbstractFileSystem):
    """A remote-like filesystem without its own cat_file: files are bytes in a dict; every fetch
    from 'the server' is counted."""

    protocol = "counting"

    def __init__(self, files: dict[str, bytes], **kw) -> None:
        super().__init__(**kw)
        self.files, self.fetched = files, 0

    def info(self, path, **kw):
        path = self._strip_protocol(path)
        return {"name": path, "size": len(self.files[path]), "type": "file"}

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kw):
        return _CountingFile(self, path, mode, block_size=block_size or "default", cache_options=cache_options, **kw)


class _CountingFile(AbstractBufferedFile):
    def _fetch_range(self, start: int, end: int) -> bytes:
        data = self.fs.files[self.fs._strip_protocol(self.path)][start:end]
        self.fs.fetched += len(data)
        return data


def test_a_ranged_read_from_a_filesystem_without_its_own_cat_file_fetches_only_the_range(monkeypatch) -> None:
    """fsspec's generic cat_file goes through a read-ahead cache that fetches megabytes for a
    1.5 KiB range; read_range must not."""
    blob = os.urandom(1 << 20)
    fs = CountingFileSystem({"bucket/blob": blob}, skip_instance_cache=True)
    monkeypatch.setattr("armd_scale.data.urls.url_to_fs", lambda url, opts=None: (fs, "bucket/blob"))
    for a, b in RANGES:
        assert read_range("counting://bucket/blob", a, b) == blob[a:b]
    assert fs.fetched == sum(b - a for a, b in RANGES)
    assert read_range("counting://bucket/blob", len(blob) - 10, len(blob) + 100) == blob[-10:]  # short at the end


def test_a_ranged_read_through_a_filesystems_own_cat_file_gives_the_range() -> None:
    fs = MemoryFileSystem()
    fs.pipe_file("/ranged/blob", bytes(range(256)) * 8)
    assert read_range("memory:///ranged/blob", 250, 262) == (bytes(range(256)) * 8)[250:262]
