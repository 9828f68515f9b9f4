"""Warmup-stable-decay: the schedule's values, its config errors, and a cool-down started from a checkpoint."""

from __future__ import annotations

import pytest

from armd_scale.config import ConfigError, load_config
from armd_scale.train.schedule import lr_factor

from .conftest import run_train

WSD = ["train.steps=100", "train.warmup_steps=10", "train.min_lr_ratio=0.1", "train.lr_schedule=wsd"]


def _train(*overrides: str):
    return load_config(overrides=[*WSD, *overrides]).train


def test_wsd_holds_the_peak_then_decays_over_the_last_fraction():
    cfg = _train("train.decay_fraction=0.2")  # the decay runs from step 80 to step 100
    assert lr_factor(0, cfg) == pytest.approx(0.1)  # warm-up as for every schedule
    assert [lr_factor(s, cfg) for s in (10, 50, 79, 80)] == [1.0, 1.0, 1.0, 1.0]
    assert lr_factor(90, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(95, cfg) == pytest.approx(0.1 + 0.9 * 0.25)
    assert lr_factor(100, cfg) == pytest.approx(0.1)


@pytest.mark.parametrize(("shape", "halfway"), [("linear", 0.5), ("cosine", 0.5), ("sqrt", 1 - 0.5**0.5)])
def test_decay_shapes_halfway(shape, halfway):
    cfg = _train("train.decay_fraction=0.2", f"train.decay_shape={shape}")
    assert lr_factor(90, cfg) == pytest.approx(0.1 + 0.9 * halfway)
    assert lr_factor(85, cfg) > lr_factor(90, cfg) > lr_factor(95, cfg)


def test_decay_start_overrides_the_fraction_and_never_cuts_the_warm_up():
    cfg = _train("train.decay_start=60")
    assert lr_factor(59, cfg) == 1.0 and lr_factor(80, cfg) == pytest.approx(0.55)
    short = load_config(overrides=[*WSD, "train.steps=10", "train.decay_fraction=0.5"]).train
    assert lr_factor(9, short) == pytest.approx(1.0)  # the decay would start at 5, inside the 10-step warm-up
    stable = _train("train.decay_fraction=0")
    assert lr_factor(99, stable) == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.decay_fraction=1.5"], "train.decay_fraction=1.5 must be in [0, 1]"),
        (["train.decay_start=100"], "train.decay_start=100 must be 0 (off) or a step before train.steps=100"),
        (["train.lr_schedule=cosine", "train.decay_start=50"], "train.lr_schedule is 'cosine'"),
    ],
)
def test_bad_decay_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        _train(*overrides)


def test_a_stopped_stable_phase_cools_down_on_resume(tmp_path, data_cache):
    """Train 6 steps at the peak lr, then resume with 3 more steps that decay from step 6 to the floor."""
    run_dir = tmp_path / "run"
    stable = run_train(run_dir, data_cache, "train.lr_schedule=wsd", "train.decay_fraction=0")
    assert stable.returncode == 0, stable.output[-3000:]
    peak = load_config().train.lr
    lrs = {r["step"]: r["lr"] for r in stable.records() if "lr" in r}
    assert [lrs[s] for s in (3, 4, 5, 6)] == [pytest.approx(peak)] * 4  # after the 2-step warm-up

    cooled = run_train(run_dir, data_cache, "train.lr_schedule=wsd", "train.steps=9", "train.decay_start=6")
    assert cooled.returncode == 0, cooled.output[-3000:]
    lrs = {r["step"]: r["lr"] for r in cooled.records() if "lr" in r}
    floor = load_config().train.min_lr_ratio
    # linear from step 6 to step 9: a third and two thirds of the way, then the floor
    for step, remaining in ((7, 2 / 3), (8, 1 / 3), (9, 0.0)):
        assert lrs[step] == pytest.approx(peak * (floor + (1 - floor) * remaining), rel=1e-9), step
