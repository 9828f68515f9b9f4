"""Damaged checkpoints and interrupted conversions: named, never loaded, and never fatal to a run dir.

The conversion tests kill a real process (SIGKILL, through tests/hold.py) at chosen points of DeepSpeed's
universal conversion: a resume on another world size (which caches it in the checkpoint folder) and an
export of a checkpoint saved before model.safetensors existed (which converts in TMPDIR), then use the
checkpoint with every reader.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from armd_scale.checkpoints.integrity import CorruptCheckpointError
from armd_scale.checkpoints.source import open_source
from armd_scale.checkpoints.summary import summarize
from armd_scale.checkpoints.universal import convert_to_universal, read_universal
from armd_scale.checkpoints.weights import full_state, saved_module_state
from armd_scale.cli import main
from armd_scale.pretrained import load_pretrained
from tests.train.conftest import command

from .conftest import copy_run, without_weights_file
from .test_weights_file import snapshot

REPO = Path(__file__).resolve().parents[2]


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def zero_bytes(path: Path, start: int, count: int) -> None:
    """Overwrite bytes in place (same size): what a bad disk sector or a broken copy does."""
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(count))


KILL_AT = {
    "mid-write": "deepspeed.checkpoint.ds_to_universal:_save_checkpoint:kill-after:5",  # DeepSpeed mid-way
    "written": "armd_scale.checkpoints.universal:write_universal:kill-after:1",  # every file written, none listed
    "before-rename": "armd_scale.checkpoints.universal:write_durable:kill-after:1",  # listed, just before the rename
}


def _killed(kill_at: str, argv: list[str], **env: str) -> None:
    launch = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # this process's own group
    environ = {**{k: v for k, v in os.environ.items() if k not in launch}, "PYTHONPATH": str(REPO), **env}
    environ["OMP_NUM_THREADS"] = "1"
    killed = subprocess.run(
        [sys.executable, "-m", "tests.hold", KILL_AT[kill_at], "--", *argv],
        env=environ,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stdout + killed.stderr


@pytest.mark.parametrize("kill_at", list(KILL_AT))
def test_a_resume_killed_during_its_conversion_leaves_the_checkpoint_usable(kill_at, zero1_run, data_cache, tmp_path):
    """Used to leave partial files inside step_N/.universal.tmpPID/, and every later resume and tool failed
    with "failed finding central directory", naming no file. The conversion into the run folder is a
    resume's (here on 1 process, from 2): its staging lives beside the folder, never inside."""
    run = copy_run(zero1_run, tmp_path / "run")
    folder = run / "checkpoints" / "step_00000006"
    before = listing(folder)
    _killed(kill_at, command(run, data_cache, "parallel.zero_stage=1", "train.steps=9")[3:])
    assert listing(folder) == before  # the checkpoint folder is exactly as the save wrote it
    assert list((run / "checkpoints").glob(".step_00000006.universal.tmp-*"))  # the debris is beside it

    assert load_pretrained(run).step == 6  # readers never look at the debris (nor at DeepSpeed's files)
    assert summarize(run)["step"] == 6
    target = convert_to_universal(folder)  # the next resume's: removes the staging of the dead process first
    assert not list((run / "checkpoints").glob(".step_*"))
    assert (folder / "universal" / "checksums.json").is_file()
    reference = saved_module_state(open_source(folder))
    state = read_universal(target / folder.name)
    assert all(torch.equal(state[k], reference[k]) for k in state)


@pytest.mark.parametrize("kill_at", ["mid-write", "written"])
def test_a_reader_killed_during_its_conversion_leaves_the_run_as_it_was(kill_at, zero1_run, tmp_path, monkeypatch):
    """A checkpoint saved before model.safetensors existed: its reader converts in the temporary directory
    (TMPDIR), never in the run folder; a killed reader's debris there goes with the next such read."""
    run = without_weights_file(copy_run(zero1_run, tmp_path / "run"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    before = snapshot(run)
    out = tmp_path / "export"
    _killed(kill_at, ["convert", "--checkpoint", str(run), "--to", "export", "--out", str(out)], TMPDIR=str(scratch))
    assert snapshot(run) == before and not out.exists()
    assert list(scratch.glob("armd-universal-*"))

    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    pre = load_pretrained(run)
    assert pre.step == 6 and not list(scratch.iterdir())  # the dead reader's debris removed, its own too
    assert snapshot(run) == before
    reference = saved_module_state(open_source(run))
    state = pre.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.items())


def test_a_damaged_cached_universal_form_is_converted_again(zero1_run, tmp_path):
    run = without_weights_file(copy_run(zero1_run, tmp_path / "run"))
    folder = run / "checkpoints" / "step_00000006"
    cached = convert_to_universal(folder) / folder.name  # a resume's conversion, cached in step_N/universal
    expected = {k: v.clone() for k, v in read_universal(cached).items()}
    fp32 = next(cached.rglob("fp32.pt"))
    zero_bytes(fp32, fp32.stat().st_size // 2, 64)
    damaged = fp32.read_bytes()

    read = full_state(open_source(run))  # a reader does not trust the damaged cache, and does not repair it
    assert read.keys() == expected.keys() and all(torch.equal(read[k], expected[k]) for k in expected)
    assert fp32.read_bytes() == damaged
    again = read_universal(convert_to_universal(folder) / folder.name)  # the next resume converts again
    assert again.keys() == expected.keys() and all(torch.equal(again[k], expected[k]) for k in expected)


@pytest.mark.parametrize("damage", ["zeroed", "truncated"])
@pytest.mark.parametrize("file", ["model.safetensors", "mp_rank_00_model_states.pt"])
def test_tools_fall_back_from_a_damaged_newest_checkpoint(file, damage, zero0_run, tmp_path, caplog, capsys):
    """Zeroed bytes inside a checkpoint used to load silently (torch checks no checksum); a truncated file
    failed with a zip error naming no file and no fallback. The file readers load is model.safetensors, or
    DeepSpeed's in a checkpoint saved before it existed."""
    run = copy_run(zero0_run, tmp_path / "run")
    if file != "model.safetensors":
        without_weights_file(run)
    folder = run / "checkpoints" / "step_00000006"
    bad = folder / file
    size = bad.stat().st_size
    if damage == "zeroed":
        zero_bytes(bad, size // 2, 256)
        why = f"{bad} does not match its checksum"
    else:
        os.truncate(bad, size // 2)
        why = f"{bad} has {size // 2} bytes but {size} were written"

    with caplog.at_level(logging.WARNING):
        pre = load_pretrained(run)  # a run directory: the newest intact checkpoint, with a warning
    assert pre.step == 3
    assert f"skipping damaged checkpoint {folder}" in caplog.text and why in caplog.text

    with pytest.raises(CorruptCheckpointError, match=re.escape(why)):
        load_pretrained(folder)  # the folder itself: an error naming the file
    assert main(["inspect", str(folder)]) == 1
    assert why in capsys.readouterr().err
    assert main(["inspect", str(run)]) == 0
    assert "step_00000003" in capsys.readouterr().out


def test_an_export_is_verified_on_load(zero0_run, tmp_path):
    out = tmp_path / "export"
    assert main(["convert", "--checkpoint", str(zero0_run.dir), "--to", "export", "--out", str(out), "--quiet"]) == 0
    weights = out / "model.safetensors"
    zero_bytes(weights, weights.stat().st_size - 300, 200)  # tensor bytes: safetensors itself would not notice
    with pytest.raises(CorruptCheckpointError, match=re.escape(f"{weights} does not match its checksum")):
        load_pretrained(out)
