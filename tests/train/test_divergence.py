"""The finite-divergence guard: a loss that stays far above its best level (no NaN anywhere) must not cost
the checkpoints from before it, and the run must fail naming the step where it diverged.

In-process runs, as tests/train/test_nan_guard.py: nothing is patched, the divergence is a real lr typo. The
spike guard, which would stop these runs first (tests/train/test_spikes.py), is set to log only here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from armd_scale.checkpoints.layout import complete_tags
from armd_scale.config import load_config

from .conftest import TINY, train_in_process


def _cfg(run_dir: Path, cache: Path, *overrides: str):
    return load_config(
        overrides=[*TINY, f"data.cache_dir={cache}", f"run.dir={run_dir}", "train.spike_action=log", *overrides]
    )


def test_a_finite_divergence_keeps_the_last_sane_checkpoint_and_fails(tmp_path, data_cache, clean_process_env):
    """As reported: 20 sane steps with checkpoint_every=2, continued to 40 with `train.lr=3 warmup_steps=0`
    (a typo for 3e-3). The loss jumped from ~5 to ~40 and stayed finite: the run used to end with rc 0,
    "finished", and retention deleted the step-20 checkpoint, keeping only the wrecked steps 38 and 40."""
    from armd_scale.train.loop import TrainingDiverged

    every = ("train.checkpoint_every=2", "train.sample_at_end=0")
    assert train_in_process(_cfg(tmp_path, data_cache, "train.steps=20", *every)) == 0
    ckpts = tmp_path / "checkpoints"
    assert complete_tags(ckpts) == ["step_00000018", "step_00000020"]
    sane = [r["loss"] for r in _records(tmp_path) if "loss" in r][-1]

    with pytest.raises(TrainingDiverged, match=r"training diverged at step 2[1-3]: the loss stayed") as err:
        train_in_process(_cfg(tmp_path, data_cache, "train.steps=40", "train.lr=3", "train.warmup_steps=0", *every))
    diverged_at = int(str(err.value).split("training diverged at step ")[1].split(":")[0])
    assert "the newest checkpoint is step_00000020, from before the divergence" in str(err.value)
    assert complete_tags(ckpts) == ["step_00000018", "step_00000020"]  # the sane ones, untouched by retention
    assert (ckpts / "latest").read_text().strip() == "step_00000020"
    aside = sorted(p.name for p in ckpts.glob("*.diverged"))
    assert aside and all(int(n[5:13]) >= diverged_at - 1 for n in aside)  # everything taken since, out of the way
    status = json.loads((tmp_path / "exit_status.json").read_text())
    assert status["code"] == 1, status
    assert status["reason"].startswith(f"failed: TrainingDiverged: training diverged at step {diverged_at}")
    losses = {r["step"]: r["loss"] for r in _records(tmp_path) if "loss" in r and r["step"] > 20}
    assert all(math.isfinite(v) for v in losses.values())  # the NaN guard never saw anything

    assert train_in_process(_cfg(tmp_path, data_cache, "train.steps=24", *every)) == 0  # the sane lr, from step 20
    resumed = {r["step"]: r["loss"] for r in [r for r in _records(tmp_path) if "loss" in r][-4:]}
    assert sorted(resumed) == [21, 22, 23, 24] and all(v < sane + 1.0 for v in resumed.values()), resumed


def test_a_divergence_that_turns_non_finite_sets_aside_everything_since_it_began(
    tmp_path, data_cache, clean_process_env
):
    """lr=1e20 without warm-up: the loss is first huge but finite, then NaN. The NaN guard stops the run; the
    checkpoints taken while it was merely huge (held by the divergence guard) go aside with the NaN one."""
    from armd_scale.train.loop import TrainingDiverged

    every = ("train.checkpoint_every=1", "train.keep_last=2", "train.sample_at_end=0")
    assert train_in_process(_cfg(tmp_path, data_cache, "train.steps=8", *every)) == 0
    with pytest.raises(TrainingDiverged, match="loss was not finite|training diverged"):
        train_in_process(_cfg(tmp_path, data_cache, "train.steps=30", "train.lr=1e20", "train.warmup_steps=0", *every))
    assert complete_tags(tmp_path / "checkpoints") == ["step_00000007", "step_00000008"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000008"


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
