"""Saving a checkpoint when the disk fills up, and the order in which a save reaches the disk.

In-process runs with the writer patched at one point: a full disk is simulated where DeepSpeed writes
(torch.save), as the OS would report it (ENOSPC) and as torch's zip writer does (a short write, no errno).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from armd_scale.checkpoints.layout import complete_tags
from armd_scale.cli import main

from .conftest import TINY


def _argv(run_dir: Path, cache: Path, *overrides: str) -> list[str]:
    return ["train", *TINY, f"data.cache_dir={cache}", f"run.dir={run_dir}", "train.sample_at_end=0", *overrides]


def _fill_disk_on_save(monkeypatch, nth: int, error: BaseException) -> None:
    """The nth torch.save writes part of its file, then fails with `error`."""
    real = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            Path(f).write_bytes(b"PK\x03\x04" + bytes(100))
            raise error
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize(
    "error,expected",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device (ENOSPC/EDQUOT; "),
        (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 576 vs 470"), "full disk or quota"),
    ],
    ids=["ENOSPC", "torch-short-write"],
)
def test_a_full_disk_names_the_file_and_keeps_the_older_checkpoint(
    error, expected, tmp_path, data_cache, monkeypatch, capsys, clean_process_env
):
    _fill_disk_on_save(monkeypatch, 2, error)  # the first save (step 3) succeeds, the second (step 6) fails
    assert main(_argv(tmp_path, data_cache)) == 1
    err = capsys.readouterr().err
    path = tmp_path / "checkpoints" / "step_00000006" / "mp_rank_00_model_states.pt"
    assert f"checkpoint step_00000006 not saved: could not write {path}: " in err and expected in err, err
    assert "the earlier checkpoints are intact" in err and "Traceback" not in err
    assert complete_tags(tmp_path / "checkpoints") == ["step_00000003"]
    assert not (tmp_path / "checkpoints" / "step_00000006").exists()  # the partial files are gone, not the space
    status = json.loads((tmp_path / "exit_status.json").read_text())
    assert status["code"] == 1 and status["step"] == 6 and expected in status["reason"]
    assert status["reason"].startswith("failed: CheckpointWriteError: checkpoint step_00000006 not saved")


def test_every_file_is_on_disk_before_complete(tmp_path, data_cache, monkeypatch, clean_process_env):
    """fsync order of one save: each file DeepSpeed wrote and model.safetensors (its temporary name, then the
    folder holding the new name), then the folder, meta.json, COMPLETE."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(_argv(tmp_path, data_cache, "train.steps=3")) == 0
    folder = tmp_path / "checkpoints" / "step_00000003"
    files = json.loads((folder / "meta.json").read_text())["files"]
    assert sorted(files) == ["model.safetensors", "mp_rank_00_model_states.pt"]

    def first(match, after: int = -1) -> int:
        return next(i for i, p in enumerate(synced) if i > after and match(Path(p)))

    model = first(lambda p: p == folder / "mp_rank_00_model_states.pt")
    weights = first(lambda p: p.parent == folder and p.name.startswith(".model.") and p.suffix == ".safetensors")
    meta = first(lambda p: p.parent == folder and p.name.startswith(".meta."))
    complete = first(lambda p: p.parent == folder and p.name.startswith(".COMPLETE."))
    assert model < weights < first(lambda p: p == folder, weights) < meta < complete
    assert any(Path(p) == folder.parent for p in synced[complete:])  # the checkpoints/ directory: the new name
