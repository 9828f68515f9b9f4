"""Every failure of `armd train` ends with RUN_DIR/exit_status.json saying failed and why, and a message
instead of a traceback; launchers that cannot see the exit code (torchrun, slurm/entrypoint.sh) read it."""

from __future__ import annotations

import json
import os

from .conftest import run_train


def test_a_data_error_is_recorded_as_failed(tmp_path, data_cache):
    """Data errors used to end in a raw traceback with exit_status.json left at "running"."""
    run_dir = tmp_path / "run"
    missing = tmp_path / "no-such-shards"
    run = run_train(run_dir, data_cache, f"data.train={missing}", "data.val=null")
    assert run.returncode == 1, run.output[-3000:]
    assert "Traceback" not in run.output and "armd train: " in run.output and str(missing) in run.output
    status = run.status()
    assert status["code"] == 1 and status["reason"].startswith("failed: ") and str(missing) in status["reason"]


def test_no_intact_checkpoint_is_recorded_as_failed_and_nothing_is_moved(tmp_path, data_cache):
    """A damaged checkpoint with no intact one before it: the run stops (starting over would discard it),
    names the file, and records why."""
    run_dir = tmp_path / "run"
    first = run_train(run_dir, data_cache, "train.steps=3")
    assert first.returncode == 0, first.output[-3000:]
    bad = run_dir / "checkpoints" / "step_00000003" / "mp_rank_00_model_states.pt"
    os.truncate(bad, bad.stat().st_size // 2)
    again = run_train(run_dir, data_cache)
    assert again.returncode == 1, again.output[-3000:]
    assert "no intact checkpoint to resume from" in again.output and str(bad) in again.output
    assert "Traceback" not in again.output
    status = json.loads((run_dir / "exit_status.json").read_text())
    assert status["code"] == 1 and status["reason"].startswith("failed: ConfigError: no intact checkpoint")
    assert bad.is_file() and (run_dir / "checkpoints" / "step_00000003" / "COMPLETE").is_file()  # left in place
