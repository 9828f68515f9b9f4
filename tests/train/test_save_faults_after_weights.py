"""Save faults outside the weight files: a full disk while meta.json / COMPLETE / latest are written, and a
checkpoint folder that cannot be created. Same style as test_save_faults.py: in-process runs, the OS call
that fails patched at one point to report what the OS reports; everything of ours runs for real."""

from __future__ import annotations

import errno
import json
import os

import pytest

from armd_scale.checkpoints.layout import complete_tags
from armd_scale.cli import main

from .conftest import run_train
from .test_save_faults import _argv


@pytest.mark.parametrize("name", ["model.safetensors", "meta.json", "COMPLETE", "latest"])
def test_a_full_disk_after_the_weights_names_the_file_and_removes_the_folder(
    name, tmp_path, data_cache, monkeypatch, capsys, clean_process_env
):
    """The disk fills between DeepSpeed's files and model.safetensors/meta.json/COMPLETE (the fsync of the
    temporary file reports it, as NFS does): this used to end in 5 chained tracebacks, a partial step folder
    and exit_status.json stuck at "running"."""
    real_fsync = os.fsync
    stem = "." + name.split(".")[0] + "."  # the temporary sibling: .meta.tmpPID.json, .model.tmpPID.safetensors, ...
    seen = {"n": 0}

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(stem):
            seen["n"] += 1
            if seen["n"] == 2:  # step 3's save succeeds, step 6's finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(_argv(tmp_path, data_cache)) == 1
    err = capsys.readouterr().err
    ckpts = tmp_path / "checkpoints"
    path = ckpts / "latest" if name == "latest" else ckpts / "step_00000006" / name
    expected = f"checkpoint step_00000006 not saved: could not write {path}: no space left on device (ENOSPC/EDQUOT; "
    assert expected in err and "the earlier checkpoints are intact" in err, err
    assert "Traceback" not in err and err.count("armd train: ") == 1
    assert complete_tags(ckpts) == ["step_00000003"] and not (ckpts / "step_00000006").exists()
    assert (ckpts / "latest").read_text().strip() == "step_00000003"
    status = json.loads((tmp_path / "exit_status.json").read_text())
    assert status["code"] == 1 and status["step"] == 6, status
    assert status["reason"].startswith("failed: CheckpointWriteError: checkpoint step_00000006 not saved: could not")


def test_a_checkpoint_folder_that_cannot_be_created_is_named_on_every_rank(tmp_path, data_cache):
    """EACCES, a read-only filesystem, a quota: rank 0's mkdir failed before the barrier with a raw traceback
    and the other rank was never told. Two gloo processes; the folder's name is taken by an obstacle mkdir
    cannot get past even as root (a symbolic link to itself), standing in for a folder it may not create."""
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "step_00000003").symlink_to("step_00000003")  # root ignores permissions; mkdir cannot get past this
    run = run_train(run_dir, data_cache, "train.steps=3", nproc=2)
    assert run.returncode != 0, run.output[-3000:]
    message = f"checkpoint step_00000003 not saved: could not create the checkpoint folder {ckpts / 'step_00000003'}"
    assert run.output.count(message) == 2, run.output[-4000:]  # each rank says it, and stops
    assert "armd_scale/train/checkpoint.py" not in run.output, run.output[-4000:]  # (torchrun prints its own)
    status = run.status()
    assert status["code"] == 1 and "could not create the checkpoint folder" in status["reason"], status
