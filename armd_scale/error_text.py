"""One line for an error that is passed on as text (a status file, a broadcast to other ranks, a
wrapping error): the path it concerns named once and the error said once.

`f"{type(e).__name__}: {e}"` wrapped again gave `failed: ConfigError: OSError: [Errno 22] Invalid
argument`, naming no file, and an OSError's own text repeats its file name after the errno.
"""

from __future__ import annotations

import errno
from pathlib import Path


def error_text(e: BaseException, path: str | Path | None = None) -> str:
    """`PATH: what went wrong`, on one line.

    - An OSError says its reason and its errno's name, with the file it names (`FILE: No such file or
      directory (ENOENT)`); without a file name, `path` names where it happened.
    - armd_scale's own errors name their paths already: their message, without the class name.
    - Other errors keep their class name, which says what failed (`KeyError: 'step'`).
    `path` is put first unless the text names it already."""
    if isinstance(e, OSError) and e.errno is not None:
        reason = e.strerror or "error"
        code = errno.errorcode.get(e.errno)
        text = f"{reason} ({code})" if code else reason
        names = [str(n) for n in (e.filename, e.filename2) if n is not None]
        if names:
            text = f"{' -> '.join(names)}: {text}"
    else:
        lines = str(e).strip().splitlines()
        text = lines[0] if lines else type(e).__name__
        if lines and not type(e).__module__.startswith("armd_scale"):
            text = f"{type(e).__name__}: {text}"
    if path is not None and str(path) not in text:
        text = f"{path}: {text}"
    return text
