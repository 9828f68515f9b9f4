"""The NaN/inf guard, exercised in-process so the loss can be poisoned at chosen steps."""

import json
import os

import pytest
import torch

from armd_scale.config import load_config

from .conftest import TINY


@pytest.fixture
def clean_process_env():
    """train() sets launcher variables for its world of one; later subprocess tests must not inherit them.
    The process group itself stays up for the session (DeepSpeed caches its groups)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _poison(monkeypatch, bad_steps):
    """Make the loss non-finite on the micro-batches of the given optimizer steps (1-based)."""
    import armd_scale.train.objective as objective  # computes the armd/ar micro-batch loss for the loop

    real = objective.order_loss
    calls = {"n": 0}

    def poisoned(logits, tokens, order, **kw):
        calls["n"] += 1
        step = (calls["n"] - 1) // 4 + 1  # 4 micro-batches per step in the tiny layout
        loss = real(logits, tokens, order, **kw)
        return loss * float("nan") if step in bad_steps else loss

    monkeypatch.setattr(objective, "order_loss", poisoned)


def test_bad_steps_are_skipped_and_training_continues(tmp_path, data_cache, monkeypatch, clean_process_env):
    from armd_scale.train.loop import train

    _poison(monkeypatch, {3})
    cfg = load_config(overrides=[*TINY, f"data.cache_dir={data_cache}", f"run.dir={tmp_path}", "log.wandb=off"])
    assert train(cfg) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"] for r in records if "loss" in r}
    assert 3 not in steps and {1, 2, 4, 5, 6} <= steps  # step 3 was skipped, not logged as a loss
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)


def test_too_many_bad_steps_stop_with_the_step_named(tmp_path, data_cache, monkeypatch, clean_process_env):
    from armd_scale.train.loop import TrainingDiverged, train

    _poison(monkeypatch, {2, 3, 4})
    cfg = load_config(overrides=[*TINY, f"data.cache_dir={data_cache}", f"run.dir={tmp_path}", "train.max_bad_steps=2"])
    with pytest.raises(TrainingDiverged, match="2 consecutive steps, the last at step 3"):
        train(cfg)
