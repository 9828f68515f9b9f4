"""The NaN/inf guard, exercised in-process so the loss can be poisoned at chosen steps."""

import json
import math
from pathlib import Path

import pytest
import torch

from armd_scale.checkpoints.layout import complete_tags
from armd_scale.checkpoints.safe_load import safe_torch_load
from armd_scale.config import load_config

from .conftest import TINY, scale_loss, train_in_process


def _poison(monkeypatch, bad_steps):
    """Make the loss non-finite on the micro-batches of the given optimizer steps (1-based)."""
    scale_loss(monkeypatch, bad_steps, float("nan"))


def test_bad_steps_are_skipped_and_training_continues(tmp_path, data_cache, monkeypatch, clean_process_env):
    _poison(monkeypatch, {3})
    cfg = load_config(overrides=[*TINY, f"data.cache_dir={data_cache}", f"run.dir={tmp_path}", "log.wandb=off"])
    assert train_in_process(cfg) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"] for r in records if "loss" in r}
    assert 3 not in steps and {1, 2, 4, 5, 6} <= steps  # step 3 was skipped, not logged as a loss
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)


def test_too_many_bad_steps_stop_with_the_step_named(tmp_path, data_cache, monkeypatch, clean_process_env):
    from armd_scale.train.loop import TrainingDiverged

    _poison(monkeypatch, {2, 3, 4})
    cfg = load_config(overrides=[*TINY, f"data.cache_dir={data_cache}", f"run.dir={tmp_path}", "train.max_bad_steps=2"])
    with pytest.raises(TrainingDiverged, match="2 consecutive steps, the last at step 3"):
        train_in_process(cfg)


def _complete(run_dir: Path) -> list[str]:
    return complete_tags(run_dir / "checkpoints")


def _cfg(run_dir: Path, cache: Path, *overrides: str):
    return load_config(overrides=[*TINY, f"data.cache_dir={cache}", f"run.dir={run_dir}", *overrides])


def test_a_non_finite_streak_never_replaces_good_checkpoints(tmp_path, data_cache, clean_process_env):
    """The reported case: a sane run, continued with an absurd lr until the loss is NaN, then resumed with the
    sane lr. The streak used to be saved on schedule and retention deleted every finite checkpoint, so the
    resume failed at once."""
    from armd_scale.train.loop import TrainingDiverged

    every = ("train.checkpoint_every=1", "train.keep_last=2")
    assert train_in_process(_cfg(tmp_path, data_cache, "train.steps=8", *every)) == 0
    assert _complete(tmp_path) == ["step_00000007", "step_00000008"]
    with pytest.raises(TrainingDiverged, match="set aside as step_00000009.nonfinite"):
        # step 9's update (lr 1e20) leaves finite but absurd weights, saved as step 9; steps 10-14 are NaN
        train_in_process(_cfg(tmp_path, data_cache, "train.steps=20", "train.lr=1e20", *every))
    assert _complete(tmp_path) == ["step_00000007", "step_00000008"]  # nothing saved during the streak
    assert (tmp_path / "checkpoints" / "step_00000009.nonfinite").is_dir()  # kept, out of the resume path
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000008"
    status = json.loads((tmp_path / "exit_status.json").read_text())
    assert status["code"] == 1 and status["reason"].startswith("failed: TrainingDiverged: loss was not finite")

    assert train_in_process(_cfg(tmp_path, data_cache, "train.steps=12", *every)) == 0  # the sane lr, from step 8
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    resumed = {r["step"]: r["loss"] for r in records[-4:] if "loss" in r}
    assert sorted(resumed) == [9, 10, 11, 12] and all(math.isfinite(v) and v < 10 for v in resumed.values())


def test_non_finite_optimizer_state_is_never_saved(tmp_path, data_cache, monkeypatch, clean_process_env):
    """A NaN in the Adam moments (the loss is still finite: it shows only after the next update) must not
    become a checkpoint: training stops at the save, naming the tensor, and the older checkpoint stays."""
    from armd_scale.train.engine import GuardedAdamW
    from armd_scale.train.loop import TrainingDiverged

    real_step = GuardedAdamW.step
    calls = {"n": 0}

    def step_then_poison(self, closure=None):
        out = real_step(self, closure)
        calls["n"] += 1
        if calls["n"] == 6:  # the update of optimizer step 6, right before its checkpoint
            next(iter(self.state.values()))["exp_avg_sq"].fill_(float("nan"))
        return out

    monkeypatch.setattr(GuardedAdamW, "step", step_then_poison)
    with pytest.raises(TrainingDiverged, match=r"step 6: optimizer state exp_avg_sq of .* holds NaN or inf") as err:
        train_in_process(_cfg(tmp_path, data_cache))
    assert "the newest checkpoint, step_00000003, stays the last finite state" in str(err.value)
    assert _complete(tmp_path) == ["step_00000003"] and not (tmp_path / "checkpoints" / "step_00000006").exists()


def test_the_reported_repro_resumes_with_the_sane_lr(tmp_path, data_cache, clean_process_env):
    """As reported: 20 steps at a sane lr with checkpoint_every=2 keep_last=2, continued to 40 with an absurd
    lr until the loss is NaN, then resumed with the sane lr. The NaN streak used to be saved on schedule,
    retention deleted every finite checkpoint, and the resume failed at once. (The report used lr=1e3; on
    this tiny model gradient clipping keeps that loss finite, if huge, so 1e20 makes it NaN.)"""
    from armd_scale.train.loop import TrainingDiverged

    every = ("train.checkpoint_every=2", "train.keep_last=2")
    assert train_in_process(_cfg(tmp_path, data_cache, "train.steps=20", *every)) == 0
    assert _complete(tmp_path) == ["step_00000018", "step_00000020"]
    with pytest.raises(TrainingDiverged, match="loss was not finite"):
        train_in_process(_cfg(tmp_path, data_cache, "train.steps=40", "train.lr=1e20", *every))
    kept = _complete(tmp_path)
    for tag in kept:  # every checkpoint left holds finite weights
        module = safe_torch_load(tmp_path / "checkpoints" / tag / "mp_rank_00_model_states.pt")["module"]
        assert all(torch.isfinite(v).all() for v in module.values()), tag
    assert kept
    # the sane lr, from the last finite one
    assert train_in_process(_cfg(tmp_path, data_cache, "train.steps=44", *every)) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = {r["step"]: r["loss"] for r in records if "loss" in r and r["step"] > 40}
    assert sorted(last) == [41, 42, 43, 44] and all(math.isfinite(v) and v < 10 for v in last.values()), last
