"""The spike guard (train.spike_action=skip): a step whose loss is far above its running mean is not applied,
and a streak of them stops the run before it can cost the checkpoints from before it.

In-process runs, as tests/train/test_nan_guard.py: the injected spike scales the loss of chosen steps (finite),
or only its gradient (the gradient-norm guard); the finite divergence is a real lr typo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from armd_scale.checkpoints.layout import complete_tags, tag_for
from armd_scale.config import load_config

from .conftest import TINY, scale_loss, train_in_process


def _cfg(run_dir: Path, cache: Path, *overrides: str):
    return load_config(overrides=[*TINY, f"data.cache_dir={cache}", f"run.dir={run_dir}", *overrides])


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _final_weights(run_dir: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / complete_tags(run_dir / "checkpoints")[-1] / name))


def _assert_only_step_skipped(ckpts: Path, step: int) -> None:
    """Every weight after `step` equals the one before it (checkpoints of every step), and the next step
    trains again."""
    before, after, later = (
        load_file(str(ckpts / tag_for(s) / "model.safetensors")) for s in (step - 1, step, step + 1)
    )
    moved = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert not moved, f"parameters changed by a skipped step: {moved}"
    assert any(not torch.equal(after[k], later[k]) for k in after)  # the next step trains again


def test_an_injected_spike_is_logged_and_its_update_skipped(tmp_path, data_cache, monkeypatch, clean_process_env):
    """A loss 50x its running mean at step 4: logged as a skipped spike; the run ends with the weights a run
    gets whose step-4 update was never applied (the NaN guard's skip, at the same step), not those of a run
    that applied it."""
    runs = {}
    for name, steps, factor, action in (
        ("spike", {4}, 50.0, "skip"),
        ("nan", {4}, float("nan"), "skip"),
        ("applied", {4}, 50.0, "log"),
    ):
        monkeypatch.undo()
        scale_loss(monkeypatch, steps, factor)
        run_dir = tmp_path / name
        assert train_in_process(_cfg(run_dir, data_cache, f"train.spike_action={action}", "train.sample_at_end=0")) == 0
        runs[name] = run_dir

    step4 = [r for r in _records(runs["spike"]) if r.get("step") == 4 and "loss" in r]
    assert len(step4) == 1 and step4[0]["loss_spike"] and step4[0]["update_skipped"]
    assert step4[0]["loss"] > 10 * [r["loss"] for r in _records(runs["spike"]) if r.get("step") == 3][0]
    spike, skipped, applied = (_final_weights(runs[n]) for n in ("spike", "nan", "applied"))
    assert all(torch.equal(spike[k], skipped[k]) for k in spike)
    assert any(not torch.equal(spike[k], applied[k]) for k in spike)
    logged = [r for r in _records(runs["applied"]) if r.get("step") == 4 and "loss" in r][0]
    assert logged["loss_spike"] and "update_skipped" not in logged  # spike_action=log only logs


def test_a_spike_streak_stops_the_run_and_keeps_the_checkpoints_before_it(tmp_path, data_cache, clean_process_env):
    """The finite divergence of tests/train/test_divergence.py (train.lr=3, a typo for 3e-3, after 20 sane
    steps): the loss jumps ~5x and stays there. Its updates are skipped; after train.max_spike_skips of them the
    run fails naming the streak, the checkpoints of the weights that produced it are set aside, the newest is
    step 20 again, and a resume with the sane lr continues from it."""
    from armd_scale.train.loop import TrainingDiverged

    every = ("train.checkpoint_every=2", "train.sample_at_end=0")
    assert train_in_process(_cfg(tmp_path, data_cache, "train.steps=20", *every)) == 0
    ckpts = tmp_path / "checkpoints"
    assert complete_tags(ckpts) == ["step_00000018", "step_00000020"]

    with pytest.raises(TrainingDiverged, match=r"on 3 consecutive steps, from step (2[1-4]) to step") as err:
        train_in_process(
            _cfg(
                tmp_path,
                data_cache,
                "train.steps=40",
                "train.lr=3",
                "train.warmup_steps=0",
                *every,
                "train.max_spike_skips=3",
            )
        )
    first = int(str(err.value).split("from step ")[1].split(" ")[0])
    assert "the newest checkpoint is step_00000020, from before the spikes" in str(err.value)
    assert complete_tags(ckpts) == ["step_00000018", "step_00000020"]
    aside = sorted(p.name for p in ckpts.glob("*.diverged"))
    assert all(int(n[5:13]) >= first - 1 for n in aside)
    status = json.loads((tmp_path / "exit_status.json").read_text())
    assert status["code"] == 1 and status["reason"].startswith("failed: TrainingDiverged: loss spiked"), status
    skipped = [r["step"] for r in _records(tmp_path) if r.get("update_skipped")]
    assert skipped == [first, first + 1, first + 2]

    assert train_in_process(_cfg(tmp_path, data_cache, "train.steps=22", *every)) == 0  # the sane lr, from step 20
    assert complete_tags(ckpts)[-1] == "step_00000022"


@pytest.mark.parametrize("stage", [1, 3])
def test_a_skipped_step_moves_no_parameter_group_under_zero(
    stage, tmp_path, data_cache, monkeypatch, clean_process_env
):
    """DeepSpeed's ZeRO optimizers call the inner optimizer once per parameter group (ZeRO-1/2: the decay and
    no-decay groups) or per sub-group (ZeRO-3): a skipped step must skip every one of those calls, so the
    weights after the spike step equal those before it, every tensor (the skip used to end at the first
    call, and the no-decay group moved)."""
    scale_loss(monkeypatch, {4}, 50.0)
    overrides = [
        f"parallel.zero_stage={stage}",
        "train.checkpoint_every=1",
        "train.keep_last=10",
        "train.sample_at_end=0",
    ]
    if stage == 3:  # several sub-groups, so the inner optimizer runs more than once per step
        overrides.append('parallel.deepspeed={"zero_optimization": {"sub_group_size": 2000}}')
    assert train_in_process(_cfg(tmp_path, data_cache, *overrides)) == 0
    _assert_only_step_skipped(tmp_path / "checkpoints", 4)


# The gradient-norm guard's window in these tests: 8 accepted norms, active from the 4th.
GRAD_WINDOW = ("train.grad_spike_window=8", "train.sample_at_end=0")


def _grad_norms(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["grad_norm"] for r in _records(run_dir) if "grad_norm" in r}


def test_a_gradient_norm_spike_with_a_normal_loss_is_skipped(tmp_path, data_cache, monkeypatch, clean_process_env):
    """Step 8's gradient is scaled 1000x while its loss keeps its value to the bit: the loss guard cannot see
    it, the gradient-norm guard does. The step is logged as a skipped gradient-norm spike (not a loss spike),
    and the run ends with the weights of a run whose step-8 update the NaN guard skipped; with the guard off
    (train.grad_spike_sigma=0) the clipped update is applied and the weights differ."""
    runs = {}
    for name, factor, gradient_only, sigma in (
        ("grad", 1000.0, True, 6.0),
        ("nan", float("nan"), False, 6.0),
        ("off", 1000.0, True, 0.0),
    ):
        monkeypatch.undo()
        scale_loss(monkeypatch, {8}, factor, gradient_only=gradient_only)
        run_dir = tmp_path / name
        overrides = (*GRAD_WINDOW, f"train.grad_spike_sigma={sigma}", "train.steps=10", "train.ema_decay=0.9")
        assert train_in_process(_cfg(run_dir, data_cache, *overrides)) == 0
        runs[name] = run_dir

    step8 = [r for r in _records(runs["grad"]) if r.get("step") == 8 and "loss" in r]
    assert len(step8) == 1 and step8[0]["update_skipped"] and step8[0]["grad_norm_spike"], step8
    assert not step8[0]["loss_spike"]
    norms = _grad_norms(runs["grad"])
    assert norms[8] > 100 * max(norms[s] for s in range(1, 8))  # the spike the guard saw, pre-clip
    off8 = [r for r in _records(runs["off"]) if r.get("step") == 8 and "loss" in r][0]
    assert off8["loss"] == step8[0]["loss"]  # the loss the loss guard saw was the same in both runs
    assert "update_skipped" not in off8 and not any(r.get("update_skipped") for r in _records(runs["grad"])[:-3])
    grad, skipped, applied = (_final_weights(runs[n]) for n in ("grad", "nan", "off"))
    assert all(torch.equal(grad[k], skipped[k]) for k in grad)
    assert any(not torch.equal(grad[k], applied[k]) for k in grad)
    # The EMA skips the step too (it is not averaged in again): it equals the NaN-skipped run's EMA.
    grad_ema, skipped_ema = (_final_weights(runs[n], "ema.safetensors") for n in ("grad", "nan"))
    assert all(torch.equal(grad_ema[k], skipped_ema[k]) for k in grad_ema)


@pytest.mark.parametrize("stage", [1, 3])
def test_a_gradient_norm_spike_moves_no_parameter_under_zero(
    stage, tmp_path, data_cache, monkeypatch, clean_process_env
):
    """Under ZeRO the norm is computed inside DeepSpeed's optimizer step, before the inner optimizer runs once
    per group or sub-group: the guard decides at the first of those calls, and none of them moves a weight."""
    scale_loss(monkeypatch, {8}, 1000.0, gradient_only=True)
    overrides = [
        *GRAD_WINDOW,
        f"parallel.zero_stage={stage}",
        "train.steps=9",
        "train.checkpoint_every=1",
        "train.keep_last=10",
    ]
    if stage == 3:
        overrides.append('parallel.deepspeed={"zero_optimization": {"sub_group_size": 2000}}')
    assert train_in_process(_cfg(tmp_path, data_cache, *overrides)) == 0
    _assert_only_step_skipped(tmp_path / "checkpoints", 8)
    assert [r["step"] for r in _records(tmp_path) if r.get("update_skipped")] == [8]
