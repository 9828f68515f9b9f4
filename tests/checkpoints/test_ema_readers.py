"""Readers of a checkpoint that kept an EMA of the weights (train.ema_decay): the EMA by default, the raw
weights on request (weights="raw", --raw-weights); validation's val/nll_ema is the EMA model's NLL."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from armd_scale.checkpoints.integrity import CorruptCheckpointError
from armd_scale.checkpoints.layout import CHECKPOINTS
from armd_scale.checkpoints.source import open_source, preferred_weights
from armd_scale.checkpoints.weights import full_state
from armd_scale.checkpoints.weights_file import EMA_WEIGHTS, read_weights
from armd_scale.cli import main
from armd_scale.pretrained import load_pretrained

from .conftest import _train, recomputed_val_nll

VAL_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, data_cache):
    """ZeRO-0, one process (the module's parameters are the master weights), EMA decay 0.5."""
    return _train(tmp_path_factory, data_cache, "ema", "train.ema_decay=0.5")


def _newest(run):
    return run.dir / CHECKPOINTS / run.checkpoints()[-1]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_readers_take_the_ema_unless_asked_for_the_raw_weights(ema_run):
    folder = _newest(ema_run)
    ema, raw = read_weights(folder / EMA_WEIGHTS), read_weights(folder / "model.safetensors")
    assert not _equal(ema, raw)
    assert _equal(full_state(open_source(ema_run.dir)), ema) and open_source(ema_run.dir).averaged
    assert _equal(full_state(open_source(ema_run.dir, weights="raw")), raw)
    with preferred_weights("raw"):  # what --raw-weights sets around a command
        assert _equal(full_state(open_source(folder)), raw) and not open_source(folder).averaged
    loaded = load_pretrained(ema_run.dir)
    assert loaded.averaged
    assert torch.equal(loaded.model.state_dict()["embed.weight"], ema["embed.weight"])
    assert not load_pretrained(ema_run.dir, weights="raw").averaged
    with pytest.raises(ValueError, match="choose 'ema'"):
        open_source(ema_run.dir, weights="Raw")  # a typo is an error, not the default


def test_validation_reports_the_raw_and_the_ema_model(ema_run):
    """val/nll and val/nll_ema the engine logged at step 6 are those a plain module computes with the
    raw and the EMA weights of the step-6 checkpoint: the swap into the engine and back is right."""
    [record] = [r for r in ema_run.records() if r["step"] == 6 and "val/nll_ema" in r]
    [raw_record] = [r for r in ema_run.records() if r["step"] == 6 and "val/nll" in r]
    for weights, logged in (("ema", record["val/nll_ema"]), ("raw", raw_record["val/nll"])):
        loaded = load_pretrained(ema_run.dir, weights=weights)
        assert recomputed_val_nll(loaded.model, loaded.config, 1) == pytest.approx(logged, rel=VAL_TOLERANCE, abs=0)
    assert record["val/nll_ema"] != raw_record["val/nll"]


def test_a_damaged_ema_file_is_named_and_the_raw_weights_still_read(ema_run, tmp_path):
    folder = tmp_path / "step"
    shutil.copytree(_newest(ema_run), folder)
    data = bytearray((folder / EMA_WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (folder / EMA_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=EMA_WEIGHTS):
        open_source(folder)
    assert _equal(full_state(open_source(folder, weights="raw")), read_weights(folder / "model.safetensors"))


@pytest.mark.parametrize("flag", [[], ["--raw-weights"]], ids=["ema", "raw"])
def test_export_writes_the_ema_by_default(ema_run, tmp_path, capsys, flag):
    out = tmp_path / "export"
    code = main(["convert", "--checkpoint", str(ema_run.dir), "--to", "export", "--out", str(out), *flag])
    assert code == 0, capsys.readouterr().err
    expected = "model.safetensors" if flag else EMA_WEIGHTS
    assert _equal(read_weights(out / "model.safetensors"), read_weights(_newest(ema_run) / expected))
    assert json.loads((out / "config.json").read_text())["weights"] == ("raw" if flag else "ema")


def test_hf_export_writes_the_ema_by_default(ema_run, tmp_path, capsys):
    pytest.importorskip("transformers", reason="--to hf needs the transformers extra")
    out = tmp_path / "hf"
    code = main(["convert", "--checkpoint", str(ema_run.dir), "--to", "hf", "--no-tokenizer", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert _equal(full_state(open_source(out)), read_weights(_newest(ema_run) / EMA_WEIGHTS))


@pytest.mark.parametrize(
    "command",
    [["generate"], ["eval", "ppl"], ["eval", "sbp"], ["eval", "zeroshot"], ["eval", "harness"], ["convert"]]
    + [["inspect"]],
)
def test_every_reading_command_takes_raw_weights(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0 and "--raw-weights" in capsys.readouterr().out


def test_inspect_names_the_weights_readers_load(ema_run, capsys):
    assert main(["inspect", str(ema_run.dir)]) == 0
    assert "ema.safetensors: fp32, 26 tensors (the EMA of the weights" in capsys.readouterr().out
    assert main(["inspect", str(ema_run.dir), "--raw-weights"]) == 0
    assert "model.safetensors: fp32, 26 tensors (what readers load)" in capsys.readouterr().out


@pytest.mark.parametrize(("flag", "weights"), [([], "ema"), (["--raw-weights"], "raw")])
def test_results_record_which_weights_they_scored(ema_run, tmp_path, capsys, flag, weights):
    """An eval result says whether the EMA or the raw weights produced it, in its document and on stderr."""
    from armd_scale.eval import validate
    from armd_scale.train.run_facts import RunFacts

    facts = RunFacts.read(ema_run.dir)
    assert facts is not None and facts.val
    out = tmp_path / "ppl.json"
    args = ["eval", "ppl", "--no-progress", "--checkpoint", str(ema_run.dir), "--data", facts.val, "--json", str(out)]
    assert main([*args, *flag]) == 0
    doc = json.loads(out.read_text())
    validate(doc, "ppl")
    assert doc["weights"] == weights
    said = {"ema": "used the EMA of the weights (ema.safetensors)", "raw": "used the raw weights"}[weights]
    assert f"armd eval ppl: {said}" in capsys.readouterr().err
