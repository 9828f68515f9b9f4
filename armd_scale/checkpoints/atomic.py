"""Output directories that appear whole or not at all.

A conversion can take minutes on a large model and be interrupted at any point; readers must never
see a half-written export or universal folder. Everything is written into a hidden sibling temp
directory (same filesystem, so the final step is one rename) that is removed on any error
(`armd_scale/atomic.py`); here, on top of it, the checks a user-given --out needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..atomic import atomic_dir as replace_dir


def check_out(out: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse an output path that would clobber something, before any expensive work starts."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # else found by mkdir only after the conversion, as `[Errno 17] File exists`
        raise FileExistsError(f"--out {out} cannot be created: {blocking} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise not_empty(out)
    return out


def not_empty(out: str | Path) -> FileExistsError:
    """The refusal of a non-empty --out without --overwrite (also for an --out on an object store)."""
    return FileExistsError(f"--out {out} exists and is not empty; choose a new directory or pass --overwrite")


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """`armd_scale.atomic.atomic_dir` for an --out directory, after `check_out` refused clobbering."""
    with replace_dir(check_out(out, overwrite=overwrite)) as tmp:
        yield tmp


def refuse_overlap(source: Path, out: Path) -> None:
    """--out must be neither the source nor inside it nor around it (--overwrite would delete it)."""
    source, out = Path(source).resolve(), Path(out).resolve()
    if source == out or source in out.parents or out in source.parents:
        raise FileExistsError(f"--out {out} overlaps the checkpoint {source}; write the result somewhere else")
