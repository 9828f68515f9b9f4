"""armd_scale/atomic.py: a write that fails leaves the old file or directory untouched and no temp."""

from __future__ import annotations

import pytest

from armd_scale.atomic import atomic_dir, atomic_path, write_atomic
from armd_scale.ports import free_ports


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "status.json"
    write_atomic(path, "old")
    write_atomic(path, b"new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_a_failed_write_keeps_the_last_good_file(tmp_path):
    path = tmp_path / "trace.json.gz"
    path.write_text("good")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.name.endswith(".json.gz") and tmp.parent == tmp_path  # writers infer the format
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["trace.json.gz"]


def test_atomic_dir_replaces_an_existing_directory_only_on_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ValueError), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        raise ValueError("bad")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_free_ports_are_distinct():
    ports = free_ports(4)
    assert len(set(ports)) == 4 and all(0 < p < 65536 for p in ports)
