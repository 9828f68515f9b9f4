"""A full disk while RUN_DIR/metrics.jsonl is written between two saves (train/metrics.py).

The fault probe: a raw traceback, and exit_status.json left at "running". Now one line naming the
file, exit 1, status "failed: ..." naming it too. metrics.jsonl is a link to /dev/full, which takes
the open and fails every write with ENOSPC: the disk is full for that file only, as when a quota or
a nearly full disk fails the small appends first.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.train.conftest import run_train


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_while_writing_metrics_names_the_file_and_fails_the_status(tmp_path: Path, data_cache) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = run_dir / "metrics.jsonl"
    metrics.symlink_to("/dev/full")
    run = run_train(run_dir, data_cache, "train.steps=6", "train.log_every=2", "train.checkpoint_every=100")
    assert run.returncode == 1, run.output[-3000:]
    assert "Traceback" not in run.output, run.output[-3000:]
    line = f"armd train: metrics not written: could not write {metrics}: no space left on device"
    assert line in run.output, run.output[-3000:]
    assert run.output.count(f"could not write {metrics}") == 1
    status = run.status()
    assert status["code"] == 1 and status["reason"].startswith("failed: ")
    assert f"could not write {metrics}: no space left on device" in status["reason"]
