"""The EMA of the weights (train.ema_decay, train/ema.py) against an independent computation.

Each run saves a checkpoint after every optimizer step, so `model.safetensors` holds the raw weights
w_k of every step k and `ema.safetensors` the average e_k the trainer kept. The test computes the
average itself from those raw weights with plain torch, e_k = d * e_{k-1} + (1 - d) * w_k, started
from the initial weights w_0 (the model the trainer builds from train.seed), and compares every step,
across a resume that changes the world size (ZeRO-3, 2 ranks -> 1) or the TP degree (ZeRO-1, TP 1 -> 2).
A decay of 0.5 makes every step's contribution visible in fp32.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from armd_scale.checkpoints.layout import CHECKPOINTS, step_of, tag_for
from armd_scale.checkpoints.weights_file import EMA_WEIGHTS, read_weights
from armd_scale.config import load_config
from armd_scale.model import build_model

from .conftest import TINY, Run, run_train

DECAY = 0.5
EVERY_STEP = ("train.checkpoint_every=1", "train.keep_last=100", f"train.ema_decay={DECAY}")
VALIDATE = ("train.eval_every=3", "train.eval_batches=2")


def _two_legs(tmp_path: Path, cache: Path, first: tuple[str, ...], second: tuple[str, ...], nproc: tuple[int, int]):
    run_dir = tmp_path / "run"
    one = run_train(run_dir, cache, *EVERY_STEP, *VALIDATE, "train.stop_at_step=3", *first, nproc=nproc[0])
    assert one.status()["code"] == 75, one.output[-3000:]
    two = run_train(run_dir, cache, *EVERY_STEP, *VALIDATE, *second, nproc=nproc[1])
    assert two.returncode == 0, two.output[-3000:]
    return one, two


def _initial_weights(run: Run) -> dict[str, torch.Tensor]:
    """w_0: the model the trainer builds before its first step (torch.manual_seed(train.seed), then the
    architecture), built here in-process from the run's own config.yaml."""
    cfg = load_config(str(run.dir / "config.yaml"), [])
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    return {name: p.detach().float().clone() for name, p in model.named_parameters()}  # each tied tensor once


def _assert_ema_matches(run: Run, first: int = 1, initial: dict[str, torch.Tensor] | None = None) -> None:
    """Every checkpoint from step `first` on holds the average of the raw weights from the step before
    it (the initial weights for step 1, or `initial`)."""
    folders = sorted((run.dir / CHECKPOINTS).glob("step_*"), key=lambda p: step_of(p.name))
    assert [step_of(f.name) for f in folders] == [1, 2, 3, 4, 5, 6], folders
    expected = _initial_weights(run) if first == 1 else read_weights(folders[first - 2] / "model.safetensors")
    expected = initial if initial is not None else expected
    folders = folders[first - 1 :]
    moved = False
    for folder in folders:
        raw = read_weights(folder / "model.safetensors")
        saved = read_weights(folder / EMA_WEIGHTS)
        assert saved.keys() == raw.keys() == expected.keys()
        expected = {k: DECAY * expected[k] + (1 - DECAY) * raw[k] for k in raw}
        for name, value in saved.items():
            torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-6, msg=f"{folder.name} {name}")
            moved = moved or not torch.equal(value, raw[name])
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["ema_weights"]["file"] == EMA_WEIGHTS and EMA_WEIGHTS in meta["files"]
    assert moved, "the average equals the raw weights: nothing was averaged"


def _validation_matches(run: Run, dp_worlds: dict[int, int]) -> None:
    """val/nll and val/nll_ema the engine logged at each step of `dp_worlds` (its data-parallel size
    then) are the NLLs a plain module computes with that step's raw and EMA weights: the EMA was
    swapped into the partitioned engine and the working weights refreshed from it, and back."""
    from armd_scale.pretrained import load_pretrained
    from tests.checkpoints.conftest import recomputed_val_nll

    records = run.records()
    for step, dp_world in dp_worlds.items():
        logged = {k: v for r in records if r["step"] == step for k, v in r.items()}
        folder = run.dir / CHECKPOINTS / tag_for(step)
        for weights, key in (("raw", "val/nll"), ("ema", "val/nll_ema")):
            loaded = load_pretrained(folder, weights=weights)
            value = recomputed_val_nll(loaded.model, loaded.config, dp_world)
            assert value == pytest.approx(logged[key], rel=1e-5, abs=0), (step, key)
        assert logged["val/nll"] != logged["val/nll_ema"]


def _per_rank(output: str) -> list[list[int]]:
    return [json.loads(m) for m in re.findall(r"fp32 elements per rank: (\[[0-9, ]+\])", output)]


def test_zero3_ema_matches_and_resumes_on_one_rank(tmp_path, data_cache):
    """ZeRO-3 on two ranks, then resumed on one: every step's EMA equals the independent computation,
    and at ZeRO-3 each of the two ranks holds about half of it (no rank a full copy)."""
    one, two = _two_legs(tmp_path, data_cache, ("parallel.zero_stage=3",), ("parallel.zero_stage=3",), (2, 1))
    _assert_ema_matches(two)
    _validation_matches(two, {3: 2, 6: 1})
    assert "EMA of the weights: decay 0.5, resumed from step_" in two.output, two.output[-3000:]
    cfg = load_config(str(two.dir / "config.yaml"), [])
    params = build_model(cfg.model).num_params()
    [per_rank] = _per_rank(one.output)
    assert len(per_rank) == 2 and sum(per_rank) >= params, (per_rank, params)
    for held in per_rank:  # half, up to DeepSpeed's alignment padding
        assert held <= params // 2 + 64, (per_rank, params)
    [alone] = _per_rank(two.output)
    assert alone[0] >= params


def test_zero1_ema_matches_across_a_tp_change(tmp_path, data_cache):
    """ZeRO-1 on two data-parallel ranks (the average partitioned as the master weights), resumed on
    TP 2: every step's EMA equals the independent computation."""
    _, two = _two_legs(
        tmp_path, data_cache, ("parallel.zero_stage=1",), ("parallel.zero_stage=1", "parallel.tp=2"), (2, 2)
    )
    _assert_ema_matches(two)
    _validation_matches(two, {3: 2, 6: 1})
    assert "EMA of the weights: decay 0.5, resumed from step_" in two.output, two.output[-3000:]
    _universal_carries_the_ema(two.dir / CHECKPOINTS / tag_for(3), tmp_path / "universal")


def _universal_carries_the_ema(folder: Path, out: Path) -> None:
    """`armd convert --to universal` checks DeepSpeed's raw weights and copies ema.safetensors along."""
    from armd_scale.checkpoints.source import open_source
    from armd_scale.checkpoints.weights import full_state
    from armd_scale.cli import main

    assert main(["convert", "--checkpoint", str(folder), "--to", "universal", "--out", str(out), "--quiet"]) == 0
    converted = open_source(out)
    assert converted.kind == "universal" and converted.averaged
    ema = read_weights(folder / EMA_WEIGHTS)
    assert all(torch.equal(v, ema[k]) for k, v in full_state(converted).items())


def test_an_ema_started_on_resume_starts_from_the_checkpoint(tmp_path, data_cache):
    """A run resumed with train.ema_decay from a checkpoint saved without an EMA starts the average at
    that checkpoint's weights (ZeRO-0, one process: the module's parameters are the masters)."""
    run_dir = tmp_path / "run"
    common = ("train.checkpoint_every=1", "train.keep_last=100")
    one = run_train(run_dir, data_cache, *common, "train.stop_at_step=3")
    assert one.status()["code"] == 75, one.output[-3000:]
    two = run_train(run_dir, data_cache, *common, f"train.ema_decay={DECAY}")
    assert two.returncode == 0, two.output[-3000:]
    assert "started from the weights of step_00000003 (it holds no EMA)" in two.output, two.output[-3000:]
    _assert_ema_matches(two, first=4)


def test_bf16_ema_averages_the_fp32_master_weights(tmp_path, data_cache):
    """bf16 with ZeRO-1 on one process (fp32 master partitions beside the bf16 module): the average is of
    the fp32 masters, started from them (the initial weights rounded to bf16), and validation computes
    it through the bf16 working weights. ZeRO-0 in bf16 keeps masters DeepSpeed does not hand out:
    refused, naming the remedy."""
    refused = run_train(tmp_path / "zero0", data_cache, f"train.ema_decay={DECAY}", "parallel.precision=bf16")
    assert refused.returncode != 0 and "use parallel.zero_stage=1" in refused.output, refused.output[-3000:]
    bf16 = ("parallel.precision=bf16", "parallel.zero_stage=1")
    run = run_train(tmp_path / "run", data_cache, *EVERY_STEP, *VALIDATE, *bf16)
    assert run.returncode == 0, run.output[-3000:]
    initial = {k: v.bfloat16().float() for k, v in _initial_weights(run).items()}
    _assert_ema_matches(run, initial=initial)
    for step in (3, 6):
        logged = {k: v for r in run.records() if r["step"] == step for k, v in r.items()}
        assert logged["val/nll_ema"] != logged["val/nll"]


def test_the_ema_leaves_training_unchanged(tmp_path, data_cache):
    """Validating the EMA swaps it into the model and back: the raw training is bit for bit the one
    of a run without EMA (ZeRO-3, where the swap also refreshes the partitioned working weights)."""
    common = ("parallel.zero_stage=3", "train.eval_every=2", "train.eval_batches=2", "train.steps=4")
    with_ema = run_train(tmp_path / "ema", data_cache, *common, f"train.ema_decay={DECAY}", nproc=2)
    plain = run_train(tmp_path / "plain", data_cache, *common, nproc=2)
    assert with_ema.returncode == plain.returncode == 0, with_ema.output[-3000:] + plain.output[-3000:]
    assert with_ema.losses() == plain.losses()
    tag = with_ema.checkpoints()[-1]
    ema_raw = read_weights(with_ema.dir / CHECKPOINTS / tag / "model.safetensors")
    plain_raw = read_weights(plain.dir / CHECKPOINTS / tag / "model.safetensors")
    assert all(torch.equal(ema_raw[k], plain_raw[k]) for k in plain_raw)
    assert not (plain.dir / CHECKPOINTS / tag / EMA_WEIGHTS).exists()


@pytest.mark.parametrize("decay", ["1.0", "-0.1"])
def test_ema_decay_out_of_range_is_refused(decay):
    from armd_scale.config import ConfigError

    with pytest.raises(ConfigError, match="train.ema_decay"):
        load_config(None, [*TINY, f"train.ema_decay={decay}"])


def test_a_step_the_nan_guard_skips_leaves_the_ema_alone(tmp_path, data_cache, monkeypatch, clean_process_env):
    """Step 3's loss is made NaN (the guard skips its update, and postpones its checkpoint): the EMA of
    step 4 takes in w_4 once over the EMA of step 2, not the unchanged w_2 a second time."""
    from .conftest import train_in_process
    from .test_nan_guard import _poison

    _poison(monkeypatch, {3})
    overrides = [*TINY, f"data.cache_dir={data_cache}", f"run.dir={tmp_path}", *EVERY_STEP]
    assert train_in_process(load_config(overrides=overrides)) == 0
    folder = {step_of(f.name): f for f in (tmp_path / CHECKPOINTS).glob("step_*")}
    assert sorted(folder) == [1, 2, 4, 5, 6]
    ema2, ema4 = read_weights(folder[2] / EMA_WEIGHTS), read_weights(folder[4] / EMA_WEIGHTS)
    raw4 = read_weights(folder[4] / "model.safetensors")
    for name, value in ema4.items():
        expected = DECAY * ema2[name] + (1 - DECAY) * raw4[name]
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6, msg=name)
