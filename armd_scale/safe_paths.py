"""File names read from untrusted files: the one rule every reader of such a name applies.

A checkpoint's meta.json (`files`), an export's config.json, a cached universal form's
checksums.json and `latest_universal`, a transformers folder's safetensors index and a tokenizer
folder's tokenizer.json (`model`) name files inside their own folder. Those files come from
wherever the folder came from (a shared file system, a download), so a name in them is input, not
a path to follow: `/dev/zero` there hung every reader (hashing or reading an endless file), and
`../../etc/hostname` with its real SHA-256 was read and accepted.

The rule: a name must be a relative path without `..`, must stay inside its folder once symbolic
links are resolved, and must name a regular file (or a directory, where a folder is named);
otherwise `UnsafePathError` names the folder, the key that held the name and the name. A name
whose file does not exist passes: a missing file is damage, which each caller reports in its own
terms (a checkpoint's missing file makes it fall back to an older one).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal


class UnsafePathError(ValueError):
    """A file name read from a file leads outside its folder or to something that is not a regular
    file. A ValueError (bad input): callers that report bad input report it, never follow it."""


def check_name(name: object, *, folder: str | Path, named_by: str) -> str:
    """`name` if it is a relative path with no `..` component (what can be checked without the
    file system, e.g. for a URL); UnsafePathError otherwise."""

    def refuse(why: str) -> UnsafePathError:
        return UnsafePathError(
            f"refusing the file name {name!r} that {named_by} gives in {folder}: {why}; a file name there must be "
            "a relative path to a regular file inside that folder"
        )

    if not isinstance(name, str) or not name.strip():
        raise refuse("it is not a file name")
    if "\x00" in name:
        raise refuse("it contains a NUL byte")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise refuse("it is an absolute path")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise refuse("it leads out of the folder (..)")
    return name


def contained_path(folder: str | Path, name: object, *, named_by: str, kind: Literal["file", "dir"] = "file") -> Path:
    """`folder/name` for a name read from an untrusted file (`named_by` says which file and key, for
    the message), after `check_name`, once it is known to stay inside `folder` with symbolic links
    resolved and, if it exists, to be a regular file (`kind="dir"`: a directory)."""
    folder = Path(folder)
    path = folder / check_name(name, folder=folder, named_by=named_by)
    resolved = path.resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise UnsafePathError(
            f"refusing the file name {name!r} that {named_by} gives in {folder}: it leads out of the folder "
            f"through a symbolic link (to {resolved})"
        )
    try:
        mode = os.stat(resolved).st_mode
    except FileNotFoundError:
        return path  # missing: the caller reports it as damage
    except NotADirectoryError:
        return path
    ok = stat.S_ISDIR(mode) if kind == "dir" else stat.S_ISREG(mode)
    if not ok:
        raise UnsafePathError(
            f"refusing the file name {name!r} that {named_by} gives in {folder}: it is not a "
            f"{'directory' if kind == 'dir' else 'regular file'} ({_describe(mode)})"
        )
    return path


def _describe(mode: int) -> str:
    for test, what in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return what
    return "not a regular file"
