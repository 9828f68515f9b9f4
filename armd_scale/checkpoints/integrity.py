"""Checkpoint integrity: per-file checksums, their verification, and durability before COMPLETE.

Why: a checkpoint is the only copy of days of training. A file cut short by a full disk or a lost
node, or bytes flipped on a disk or in a copy, used to load silently (torch's zip reader checks no
checksum) or fail with a message naming no file. Every file a save writes is recorded in meta.json
as `files: {relative path: {bytes, sha256}}`; readers compare size and SHA-256 before they load, and a
mismatch is a `CorruptCheckpointError` naming the file, which the trainer and the tools answer by
falling back to the newest intact checkpoint. The names in such a list are input too: each must be a
relative path to a regular file inside the folder (`armd_scale/safe_paths.py`), checked before any file
is opened, so a list naming `/dev/zero` or `../../etc/hostname` is refused instead of read.

Cost: SHA-256 through hashlib runs at about 1.1 GB/s per core on the development machine (SHA-NI,
measured while the machine was busy). During a save each rank hashes only the files it wrote itself,
right after writing them (still in the page cache), so a save costs the largest per-rank share /
1 GB/s more; a resume or a tool reads every file once more to verify it.

Durability: a file is on disk only after fsync, and a rename only after an fsync of its directory.
Each rank fsyncs its own files before the barrier; meta.json and COMPLETE are written with
`write_durable`, so COMPLETE can never reach the disk before the bytes it vouches for.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, fsync_dir
from ..safe_paths import contained_path

CHUNK = 8 << 20  # bytes read per hash update: large enough to amortise the Python overhead


class CorruptCheckpointError(ValueError):
    """A checkpoint file is missing, truncated, unreadable or does not match its recorded checksum.

    A ValueError (bad input), so the resume planner turns it into one error every rank raises. `path`
    is the damaged file when one is known (callers look at it once more: tampering or damage?)."""

    def __init__(self, message: str, path: Path | None = None):
        super().__init__(message)
        self.path = path

    def __reduce__(self):  # kwargs survive pickling (errors travel between ranks)
        return (type(self), (str(self), self.path))


def digest(path: Path) -> dict[str, Any]:
    """{"bytes", "sha256"} of one file, read in chunks (memory stays flat for multi-GB files)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


def digests(folder: Path, relative: list[str], *, sync: bool = False) -> dict[str, dict[str, Any]]:
    """Digests of `folder/name` for each name; with `sync` each file is also fsynced (it was just written)."""
    out = {}
    for name in relative:
        path = Path(folder) / name
        out[name] = digest(path)
        if sync:
            fsync_file(path)
    return out


def recorded_files(folder: Path, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Relative paths of the files under `folder` that a checksum list covers: everything but hidden
    entries (staging of an interrupted write) and the top-level names in `skip`."""
    folder = Path(folder)
    names = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or rel.parts[0] in skip or any(p.startswith(".") for p in rel.parts):
            continue
        names.append(rel.as_posix())
    return names


def listed_paths(folder: Path, files: Any, *, named_by: str) -> dict[str, Path]:
    """{name: path} of the files a checksum list names, every name checked first (`safe_paths`): a
    relative path to a regular file inside `folder`, else UnsafePathError naming the folder, `named_by`
    (the file and key holding the list) and the name. A list that is not {name: {bytes, sha256}} is a
    CorruptCheckpointError."""
    if not files:
        return {}
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
        for v in files.values()
    ):
        raise CorruptCheckpointError(f"{named_by} in {folder} is not a {{name: {{bytes, sha256}}}} object")
    return {name: contained_path(folder, name, named_by=named_by) for name in sorted(files)}


def verify(folder: Path, files: dict[str, dict[str, Any]] | None, *, named_by: str) -> None:
    """Raise CorruptCheckpointError naming the first file under `folder` that is missing, has another
    size or another SHA-256 than `files` records. A folder saved before checksums existed (None) passes.
    Every name is checked before any file is opened (`listed_paths`; `named_by` names the list)."""
    if not files:
        return
    for name, path in listed_paths(Path(folder), files, named_by=named_by).items():
        expected = files[name]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CorruptCheckpointError(f"{path} is missing (the checkpoint lists it)", path) from None
        if size != expected["bytes"]:
            raise CorruptCheckpointError(
                f"{path} has {size} bytes but {expected['bytes']} were written: the file was cut short or changed",
                path,
            )
        found = digest(path)["sha256"]
        if found != expected["sha256"]:
            raise CorruptCheckpointError(
                f"{path} does not match its checksum (sha256 {found[:16]}..., written as "
                f"{expected['sha256'][:16]}...): its bytes changed after the save",
                path,
            )


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: str) -> None:
    """Write `path` whole (temp sibling, then rename) and durably: the temp file is fsynced before the
    rename and the directory after it, so after a crash the file is either the old one or the new one,
    complete, never an empty or partial file under the final name."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    fsync_dir(path.parent)
