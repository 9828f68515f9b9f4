"""Files and directories that appear whole or not at all: write to a hidden sibling, then rename.

A reader (a resuming trainer, a launcher reading exit_status.json, a person opening results.json)
must never see a half-written file, and an interruption must never destroy the last good version.
Every local write of a result in the package goes through this module. The temporary name is a
hidden sibling in the same directory (same filesystem, so the final step is one atomic rename) that
carries the process id, so two processes writing the same name cannot clobber each other's temp.
(Remote URLs written through fsspec have their own helper, `data/urls.py: write_bytes`.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """`.NAME.tagPID` beside `path`, keeping the suffixes so tools that infer a format from it work."""
    path = Path(path)
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    return path.with_name(f".{stem}.{tag}{os.getpid()}{suffixes}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` when the block ends without an error and
    is removed when it raises. For writers that take a file name (savefig, export_chrome_trace)."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write text or bytes to `path` whole (temp sibling, then rename)."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(out: Path, *, staging: Path | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `out` (existing or not) when the block
    finishes without an error; on an error it is removed and `out` is left as it was.

    An existing `out` is first moved aside, then the new one renamed in, then the old one deleted:
    `out` is missing only between two renames, never while a long write is under way. `staging`
    (default: a hidden sibling of `out`) must be on the same filesystem; a caller whose `out` lives
    inside a folder that readers scan passes one outside that folder, so a process killed mid-write
    leaves its debris where no reader looks."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(staging) if staging is not None else temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = temp_sibling(out, "old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def describe_write_failure(path: Path, error: BaseException) -> str:
    """What a failed write to `path` means, naming the path: a full disk says so (ENOSPC, EDQUOT, or
    torch's zip writer's short-write message `unexpected pos`, which carries no errno) with the free
    space left, instead of a bare `enforce fail ... unexpected pos`."""
    import errno

    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    short_write = "unexpected pos" in text
    try:
        free = shutil.disk_usage(next(p for p in (Path(path), *Path(path).parents) if p.exists())).free
        room = f"{free / 2**20:.1f} MiB free on that filesystem"
    except (OSError, StopIteration):
        room = "free space unknown"
    if full:
        return f"could not write {path}: no space left on device (ENOSPC/EDQUOT; {room})"
    if short_write:
        return f"could not write {path}: the write was cut short, which usually means a full disk or quota ({room})"
    return f"could not write {path}: {type(error).__name__}: {text}"


def fsync_dir(path: Path) -> None:
    """Make the names in directory `path` (creations, renames) durable. Some filesystems cannot fsync
    a directory (they are durable by other means); that is not an error."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
