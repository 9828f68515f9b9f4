"""DeepSpeed checkpoint -> universal folder: same weights, and a run resumes from it on another
world size with the losses of the uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch

from armd_scale.checkpoints.layout import read_meta
from armd_scale.checkpoints.source import open_source
from armd_scale.checkpoints.universal import ReshardError, check_reshard, convert_to_universal, read_universal
from armd_scale.checkpoints.weights import full_state
from armd_scale.cli import main

from .conftest import run_train

TOLERANCE = 1e-5  # as tests/train/test_distributed.py: fp32, summation order only


def test_universal_folder_resumes_on_another_world_size(zero1_run, data_cache, tmp_path, capsys):
    source = zero1_run.dir / "checkpoints" / "step_00000003"
    new_run = tmp_path / "run"
    out = new_run / "checkpoints" / "step_00000003"  # a run's checkpoint folder: resumable as is
    code = main(["convert", "--checkpoint", str(source), "--to", "universal", "--out", str(out), "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(stdout)
    assert report["max_abs_logit_diff"] == 0.0 and report["exact_required"]
    assert "module weights DeepSpeed saved" in report["reference"]

    meta = read_meta(out)
    assert meta["topology"]["layout"] == "universal" and meta["step"] == 3 and (out / "COMPLETE").is_file()
    assert not list(out.glob("*.pt"))  # only the universal form travels, and the weights every reader reads
    assert (out / "model.safetensors").is_file() and meta["weights"]["file"] == "model.safetensors"
    converted = read_universal(out / "universal" / "step_00000003")
    reference = full_state(open_source(source))  # the source's model.safetensors: each tied tensor once
    for alias, stored in meta["weights"]["tied"].items():
        assert alias not in converted or torch.equal(converted.pop(alias), converted[stored])
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)

    resumed = run_train(new_run, data_cache, "parallel.zero_stage=1", nproc=1)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "resumed from step_00000003 (step 3) via universal checkpoint" in resumed.output
    expected, losses = zero1_run.losses(), resumed.losses()
    assert sorted(losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert abs(losses[step] - expected[step]) <= TOLERANCE, f"step {step}: {losses[step]} vs {expected[step]}"


def test_zero0_is_refused_with_the_reason(zero0_run, tmp_path, capsys):
    out = tmp_path / "u"
    assert main(["convert", "--checkpoint", str(zero0_run.dir), "--to", "universal", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "trained with ZeRO-0" in err and "--to export" in err
    assert not out.exists()


def test_a_misnamed_universal_folder_is_refused_on_resume(zero1_run, tmp_path, capsys):
    """DeepSpeed loads the universal form by its tag: a copy under another step name must say so
    (the resume planner calls convert_to_universal on the folder it picked)."""
    out = tmp_path / "checkpoints" / "step_00000009"
    assert main(["convert", "--checkpoint", str(zero1_run.dir), "--to", "universal", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert check_reshard(read_meta(out)["topology"], world_size=2, tp=1, zero_stage=1)  # same topology: still universal
    with pytest.raises(
        ReshardError, match="holds the universal checkpoint 'step_00000006' but is named 'step_00000009'"
    ):
        convert_to_universal(out)
    out.rename(out.with_name("step_00000006"))
    assert convert_to_universal(out.with_name("step_00000006")) == out.with_name("step_00000006") / "universal"
