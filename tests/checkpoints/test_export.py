"""DeepSpeed (ZeRO-0, ZeRO-1 on 2 ranks, TP=2) and universal checkpoints -> export directories that
reproduce the source logits exactly and load without DeepSpeed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from armd_scale.checkpoints import export as export_module
from armd_scale.checkpoints.report import ConversionError, Progress
from armd_scale.checkpoints.source import open_source
from armd_scale.checkpoints.validate import fixed_batch, logits_of
from armd_scale.cli import main
from armd_scale.pretrained import load_pretrained

from .conftest import copy_run, engine_val_nll, recomputed_val_nll, without_weights_file

REPO = Path(__file__).resolve().parents[2]
# fp32: the engine (sharded, partitioned) and a plain module differ only in summation order
VAL_TOLERANCE = 1e-5


def convert(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["convert", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "run_name,weights_file",
    [("zero0_run", True), ("zero1_run", True), ("tp2_run", True), ("tp2_run", False)],
    ids=["zero0", "zero1", "tp2", "tp2-saved-before-model.safetensors"],
)
def test_fp32_export_reproduces_the_source_exactly(run_name, weights_file, request, tmp_path, capsys):
    """From model.safetensors (the shards merged at save), and from DeepSpeed's files (merged by the reader)."""
    run = request.getfixturevalue(run_name)
    run_dir = run.dir if weights_file else without_weights_file(copy_run(run, tmp_path / "run"))
    out = tmp_path / "export"
    code, stdout, err = convert(capsys, "--checkpoint", str(run_dir), "--to", "export", "--out", str(out), "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["max_abs_logit_diff"] == 0.0 and report["exact_required"] and report["step"] == 6
    assert "validating" in err  # progress lines go to stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer"]
    assert not list(tmp_path.glob(".export.tmp*"))  # the temp dir was renamed, not left behind

    config = json.loads((out / "config.json").read_text())
    source = open_source(run_dir)
    assert config["config"] == source.config and config["step"] == 6
    assert config["tokenizer_sha256"] == source.meta["tokenizer_sha256"]
    assert config["conversion"]["max_abs_logit_diff"] == 0.0
    assert config["tied"] == {"lm_head.weight": "embed.weight"}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert "embed.weight" in names and "lm_head.weight" not in names  # the tied matrix is stored once
        assert all(f.get_tensor(k).dtype == torch.float32 for k in names)
    info = json.loads((out / "tokenizer" / "tokenizer.json").read_text())
    assert info["sha256"] == config["tokenizer_sha256"] and (out / "tokenizer" / "tokenizer.model").is_file()

    # Independently of the converter's own check (which compares with its own reading of the source):
    # the export reproduces the validation NLL the DeepSpeed engine computed in training, with the
    # weights sharded (TP) or partitioned (ZeRO) as they were there. A wrong TP merge cannot pass this.
    loaded = load_pretrained(out)
    recomputed = recomputed_val_nll(loaded.model, loaded.config, source.topology["dp"])
    assert recomputed == pytest.approx(engine_val_nll(run), rel=VAL_TOLERANCE, abs=0)


def test_a_wrong_tp_merge_passes_the_self_check_but_not_the_engine_reference(tp2_run, tmp_path, monkeypatch):
    """Why the reference must come from the engine: a merge that takes rank 0's shard for every rank (the
    shapes still fit) gives an export that reproduces the equally wrong merged source exactly, so the
    converter's own check passes, but its validation NLL is far from what the engine measured.
    (Reversing the shard order would not do: permuting heads and MLP units consistently is a symmetry
    of the network.) The reader merges the shards of a checkpoint saved before model.safetensors existed."""
    from armd_scale.checkpoints import weights

    right = weights.merge_tp_shards
    monkeypatch.setattr(weights, "merge_tp_shards", lambda shards: right([shards[0]] * len(shards)))
    run_dir = without_weights_file(copy_run(tp2_run, tmp_path / "run"))
    report = export_module.export(run_dir, tmp_path / "wrong", progress=Progress(quiet=True))
    assert report.max_abs_logit_diff == 0.0  # self-consistent
    loaded = load_pretrained(tmp_path / "wrong")
    wrong, engine = recomputed_val_nll(loaded.model, loaded.config, 1), engine_val_nll(tp2_run)
    assert abs(wrong - engine) > 20 * VAL_TOLERANCE * engine  # far outside what the export test accepts


def test_export_from_a_universal_checkpoint(zero1_run, tmp_path, capsys):
    universal = tmp_path / "universal"
    code, _, err = convert(capsys, "--checkpoint", str(zero1_run.dir), "--to", "universal", "--out", str(universal))
    assert code == 0, err
    code, stdout, err = convert(capsys, "--checkpoint", str(universal), "--to", "export", "--out", str(tmp_path / "e"))
    assert code == 0, err
    assert "max abs logit difference 0 (exact)" in stdout and "(universal, step 6)" in stdout
    direct = load_pretrained(zero1_run.dir).model.state_dict()
    exported = load_pretrained(tmp_path / "e").model.state_dict()
    assert direct.keys() == exported.keys() and all(torch.equal(direct[k], exported[k]) for k in direct)


def test_bf16_export_reports_its_rounding(zero0_run, tmp_path, capsys):
    code, stdout, err = convert(
        capsys,
        "--checkpoint",
        str(zero0_run.dir),
        "--to",
        "export",
        "--out",
        str(tmp_path / "e"),
        "--dtype",
        "bf16",
        "--json",
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert not report["exact_required"] and 0 < report["max_abs_logit_diff"] < 0.1
    with safe_open(str(tmp_path / "e" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("embed.weight").dtype == torch.bfloat16


def test_a_failed_validation_writes_nothing(zero0_run, tmp_path, monkeypatch):
    """The exactness bar is enforced: a result that differs from its source is not published."""

    def perturbed(path):
        loaded = load_pretrained(path)
        with torch.no_grad():
            loaded.model.final_norm.weight.add_(1e-3)
        return loaded

    monkeypatch.setattr(export_module, "load_pretrained", perturbed)
    out = tmp_path / "e"
    with pytest.raises(ConversionError, match="does not reproduce it: max abs logit difference"):
        export_module.export(zero0_run.dir, out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_existing_output_and_overlap_are_refused(zero0_run, tmp_path, capsys):
    out = tmp_path / "e"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = convert(capsys, "--checkpoint", str(zero0_run.dir), "--to", "export", "--out", str(out))
    assert code == 1 and "is not empty" in err and (out / "keep.txt").exists()
    code, _, err = convert(
        capsys, "--checkpoint", str(zero0_run.dir), "--to", "export", "--out", str(zero0_run.dir), "--overwrite"
    )
    assert (
        code == 1 and "overlaps the checkpoint" in err and zero0_run.checkpoints() == ["step_00000003", "step_00000006"]
    )


BLOCKED = """
import json, sys
sys.modules["deepspeed"] = None  # any `import deepspeed` now raises ImportError
from armd_scale.pretrained import load_pretrained
from armd_scale.checkpoints.validate import fixed_batch, logits_of
loaded = load_pretrained(sys.argv[1])
logits = logits_of(loaded.model, loaded.config, fixed_batch(loaded.config))
tok = loaded.tokenizer()
import torch
torch.save(logits, sys.argv[2])
print(json.dumps({"step": loaded.step, "text": tok.decode(tok.encode("def f(x):")),
                  "deepspeed": sorted(m for m in sys.modules if m.startswith("deepspeed") and sys.modules[m])}))
"""


def test_export_loads_where_deepspeed_cannot_be_imported(zero1_run, tmp_path, capsys):
    out = tmp_path / "e"
    code, _, err = convert(capsys, "--checkpoint", str(zero1_run.dir), "--to", "export", "--out", str(out))
    assert code == 0, err
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED, str(out), str(tmp_path / "logits.pt")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"step": 6, "text": "def f(x):", "deepspeed": []}
    loaded = load_pretrained(zero1_run.dir)
    expected = logits_of(loaded.model, loaded.config, fixed_batch(loaded.config))
    assert torch.equal(torch.load(tmp_path / "logits.pt", weights_only=True), expected)
