"""Damaged checkpoints and interrupted conversions: named, never loaded, and never fatal to a run dir.

The conversion tests kill a real `armd convert` process (SIGKILL, through tests/hold.py) at chosen
points of the universal conversion a ZeRO-1 export needs, then use the checkpoint with every reader.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from armd_scale.checkpoints.integrity import CorruptCheckpointError
from armd_scale.checkpoints.source import open_source
from armd_scale.checkpoints.weights import full_state, saved_module_state
from armd_scale.cli import main
from armd_scale.pretrained import load_pretrained

from .conftest import copy_run

REPO = Path(__file__).resolve().parents[2]


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def zero_bytes(path: Path, start: int, count: int) -> None:
    """Overwrite bytes in place (same size): what a bad disk sector or a broken copy does."""
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(count))


@pytest.mark.parametrize(
    "kill_at",
    [
        "deepspeed.checkpoint.ds_to_universal:_save_checkpoint:kill-after:5",  # DeepSpeed mid-way through its files
        "armd_scale.checkpoints.universal:write_universal:kill-after:1",  # every file written, none listed
        "armd_scale.checkpoints.universal:write_durable:kill-after:1",  # listed, just before the rename
    ],
    ids=["mid-write", "written", "before-rename"],
)
def test_a_killed_conversion_leaves_the_checkpoint_usable(kill_at, zero1_run, tmp_path, capsys):
    """Used to leave partial files inside step_N/.universal.tmpPID/, and every later resume and tool failed
    with "failed finding central directory", naming no file."""
    run = copy_run(zero1_run, tmp_path / "run")
    folder = run / "checkpoints" / "step_00000006"
    before = listing(folder)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    argv = ["convert", "--checkpoint", str(run), "--to", "export", "--out", str(tmp_path / "export"), "--quiet"]
    killed = subprocess.run(
        [sys.executable, "-m", "tests.hold", kill_at, "--", *argv], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert listing(folder) == before  # the checkpoint folder is exactly as the save wrote it
    assert list((run / "checkpoints").glob(".step_00000006.universal.tmp-*"))  # the debris is beside it
    assert not (tmp_path / "export").exists()

    assert main(["inspect", str(run)]) == 0  # readers never look at the debris
    capsys.readouterr()
    pre = load_pretrained(run)  # converts again, and removes the staging of the dead process first
    assert pre.step == 6 and not list((run / "checkpoints").glob(".step_*"))
    assert (folder / "universal" / "checksums.json").is_file()
    reference = saved_module_state(open_source(folder))
    state = pre.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.items())


def test_a_damaged_cached_universal_form_is_converted_again(zero1_run, tmp_path):
    run = copy_run(zero1_run, tmp_path / "run")
    source = open_source(run)
    expected = {k: v.clone() for k, v in full_state(source).items()}  # converts and caches step_N/universal
    fp32 = next((source.folder / "universal").rglob("fp32.pt"))
    zero_bytes(fp32, fp32.stat().st_size // 2, 64)
    again = full_state(open_source(run))
    assert again.keys() == expected.keys() and all(torch.equal(again[k], expected[k]) for k in expected)


@pytest.mark.parametrize("damage", ["zeroed", "truncated"])
def test_tools_fall_back_from_a_damaged_newest_checkpoint(damage, zero0_run, tmp_path, caplog, capsys):
    """Zeroed bytes inside a checkpoint used to load silently (torch checks no checksum); a truncated file
    failed with a zip error naming no file and no fallback."""
    run = copy_run(zero0_run, tmp_path / "run")
    folder = run / "checkpoints" / "step_00000006"
    bad = folder / "mp_rank_00_model_states.pt"
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
