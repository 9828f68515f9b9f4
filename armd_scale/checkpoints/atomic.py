"""Output directories that appear whole or not at all.

A conversion can take minutes on a large model and be interrupted at any point; readers must never
see a half-written export or universal folder. Everything is written into a hidden sibling temp
directory (same filesystem, so the final step is one rename) that is removed on any error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def check_out(out: Path, *, overwrite: bool = False) -> Path:
    """Refuse an output path that would clobber something, before any expensive work starts."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty; choose a new directory or pass --overwrite")
    return out


@contextlib.contextmanager
def atomic_dir(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory that replaces `out` when the block finishes without an error."""
    out = check_out(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():  # empty, or --overwrite: move the old one aside first so `out` is never missing long
        old = out.parent / f".{out.name}.old{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def refuse_overlap(source: Path, out: Path) -> None:
    """--out must be neither the source nor inside it nor around it (--overwrite would delete it)."""
    source, out = Path(source).resolve(), Path(out).resolve()
    if source == out or source in out.parents or out in source.parents:
        raise FileExistsError(f"--out {out} overlaps the checkpoint {source}; write the result somewhere else")
