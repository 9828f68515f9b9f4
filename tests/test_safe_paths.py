"""The one rule for file names read from untrusted files (armd_scale/safe_paths.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from armd_scale.safe_paths import UnsafePathError, contained_path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    inside = tmp_path / "folder"
    (inside / "sub").mkdir(parents=True)
    (inside / "sub" / "a.bin").write_bytes(b"a")
    (inside / "same.bin").symlink_to(inside / "sub" / "a.bin")  # a link that stays inside is fine
    (tmp_path / "secret").write_text("outside")
    (inside / "escape").symlink_to(tmp_path / "secret")
    (inside / "dev").symlink_to("/dev/zero")
    os.mkfifo(inside / "pipe")
    return inside


def test_relative_names_of_regular_files_inside_pass(folder: Path) -> None:
    for name in ("sub/a.bin", "same.bin", "./sub/a.bin", "missing.bin"):  # a missing file is the caller's to report
        assert contained_path(folder, name, named_by="meta.json key 'files'") == folder / name
    assert contained_path(folder, "sub", named_by="latest_universal", kind="dir") == folder / "sub"


@pytest.mark.parametrize(
    "name,why",
    [
        ("/dev/zero", "it is an absolute path"),
        ("/etc/hostname", "it is an absolute path"),
        ("../secret", "it leads out of the folder (..)"),
        ("sub/../../secret", "it leads out of the folder (..)"),
        ("sub\\..\\..\\secret", "it leads out of the folder (..)"),
        ("", "it is not a file name"),
        (7, "it is not a file name"),
        ("a\x00b", "it contains a NUL byte"),
        ("escape", "it leads out of the folder through a symbolic link"),
        ("dev", "it leads out of the folder through a symbolic link (to /dev/zero)"),
        ("pipe", "it is not a regular file (a named pipe)"),
        ("sub", "it is not a regular file (a directory)"),
    ],
)
def test_anything_else_is_refused_naming_folder_key_and_name(folder: Path, name: object, why: str) -> None:
    expected = f"refusing the file name {name!r} that meta.json key 'files' gives in {folder}: {why}"
    with pytest.raises(UnsafePathError, match=re.escape(expected)):
        contained_path(folder, name, named_by="meta.json key 'files'")
    assert isinstance(UnsafePathError("x"), ValueError)  # reported as bad input by every command
