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
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `out` (existing or not) when the block
    finishes without an error; on an error it is removed and `out` is left as it was.

    An existing `out` is first moved aside, then the new one renamed in, then the old one deleted:
    `out` is missing only between two renames, never while a long write is under way."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
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
