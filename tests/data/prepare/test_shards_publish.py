"""`armd shards` publishes a build whole: staged beside --out, renamed into place (data/staging.py).

The fault probe: two `armd shards` on one --out both exited 0 and left the train manifest of one
build over shard files partly overwritten by the other, with the other's val split; `--overwrite`
deleted the old manifests first, so a kill midway left neither set.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from armd_scale.cli import main
from armd_scale.data.errors import DataError
from armd_scale.data.manifest import read_manifest
from armd_scale.data.prepare.shards import build_shards
from armd_scale.data.prepare.verify import verify_shards
from tests.data.test_cli import REPO, _tree
from tests.hold import Hold

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _argv(tokenizer_dir: Path, out: Path, seed: int) -> list[str]:
    return [
        "shards",
        "--tokenizer",
        str(tokenizer_dir),
        "--input",
        "builtin:pydoc",
        "--seq-len",
        "32",
        "--val-fraction",
        "0.1",
        "--seed",
        str(seed),
        "--samples-per-shard",
        "200",
        "--no-progress",
        "--out",
        str(out),
    ]


def _whole(out: Path) -> None:
    assert all(r.ok for r in verify_shards(str(out))), [r.bad for r in verify_shards(str(out))]


def test_two_builds_on_one_out_never_mix(tmp_path: Path, tokenizer_dir: Path, capsys) -> None:
    """Build A is held just before its first manifest (all its shards written); build B runs whole
    meanwhile. A must then fail naming --out, and the set must be B's, byte for byte."""
    out = tmp_path / "set"
    reference = tmp_path / "reference"
    assert main(_argv(tokenizer_dir, reference, seed=1)) == 0
    capsys.readouterr()

    a = Hold(
        "armd_scale.data.prepare.shard_writer:ShardSetWriter.finish:before:1",
        _argv(tokenizer_dir, out, seed=0),
        ENV,
        str(REPO),
    )
    try:
        a.wait_held()
        assert main(_argv(tokenizer_dir, out, seed=1)) == 0  # B, while A is between its shards and manifests
        a.release()
        code, output = a.finish()
    finally:
        if a.proc.poll() is None:
            a.proc.kill()
    assert code == 1, output[-3000:]
    assert (
        f"{out}/train appeared while this build ran" in output or f"{out}/val appeared while this build ran" in output
    )
    assert "published nothing" in output
    _whole(out)
    assert _tree(out) == _tree(reference)  # B's set, whole: no shard or manifest of A
    assert read_manifest(str(out / "train")).build["seed"] == read_manifest(str(out / "val")).build["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference", "set"]  # no staging, no lock left


def test_an_overwrite_killed_midway_leaves_the_old_set_whole(tmp_path: Path, tokenizer_dir: Path) -> None:
    """SIGKILL after the new build's second shard: the old set (manifests and shards) is untouched."""
    out = tmp_path / "set"
    assert main(_argv(tokenizer_dir, out, seed=0)) == 0
    before = _tree(out)
    killed = Hold(
        "armd_scale.data.prepare.shard_writer:write_atomic:kill-after:2",
        [*_argv(tokenizer_dir, out, seed=1), "--overwrite"],
        ENV,
        str(REPO),
    )
    code, output = killed.finish()
    assert code == -signal.SIGKILL, output[-3000:]
    assert _tree(out) == before
    _whole(out)
    # the next build removes the dead build's staging and replaces the set whole
    assert main([*_argv(tokenizer_dir, out, seed=1), "--overwrite"]) == 0
    assert read_manifest(str(out / "train")).build["seed"] == 1
    _whole(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_every_output_folder_is_refused_when_it_exists(tmp_path: Path, tokenizer_dir: Path, tokenizer) -> None:
    """A leftover OUT/val (or OUT/train without a manifest) would be mixed into the new set: refused
    without --overwrite; with it, an old val is removed even when the new build holds out nothing."""
    out = tmp_path / "set"
    (out / "val").mkdir(parents=True)
    (out / "val" / "shard-000000.tar").write_bytes(b"old")
    with pytest.raises(DataError, match=f"a shard set already exists at {out} \\({out}/val\\)"):
        build_shards(["builtin:pydoc"], str(out), tokenizer, seq_len=32)
    assert not (out / "train").exists()
    build_shards(["builtin:pydoc"], str(out), tokenizer, seq_len=32, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["train"]
    (out / "keep.txt").write_text("not ours")  # other files in --out are left alone
    shutil.rmtree(out / "train")
    (out / "train").mkdir()
    with pytest.raises(DataError, match="already exists"):
        build_shards(["builtin:pydoc"], str(out), tokenizer, seq_len=32)
    build_shards(["builtin:pydoc"], str(out), tokenizer, seq_len=32, overwrite=True)
    assert (out / "keep.txt").read_text() == "not ours"
    _whole(out)
