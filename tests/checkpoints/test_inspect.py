"""`armd inspect`: the fields of a run, a checkpoint and an export; `--diff` between checkpoints."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from armd_scale.checkpoints.layout import read_meta
from armd_scale.cli import main
from armd_scale.config import config_from_dict
from armd_scale.model import build_model

REPO = Path(__file__).resolve().parents[2]


def inspect(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["inspect", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_dir_fields(zero1_run, capsys):
    code, out, err = inspect(capsys, str(zero1_run.dir), "--json")
    assert code == 0, err
    info = json.loads(out)
    meta = read_meta(zero1_run.dir / "checkpoints" / "step_00000006")
    assert info["kind"] == "deepspeed" and info["step"] == 6
    assert info["folder"] == str(zero1_run.dir / "checkpoints" / "step_00000006")
    assert [c["tag"] for c in info["checkpoints"]] == ["step_00000003", "step_00000006"]
    assert info["config"] == {
        "arch": "armd",
        "n_layers": 2,
        "d_model": 32,
        "n_heads": 2,
        "seq_len": 32,
        "max_seq_len": 32,
        "vocab_size": 128,
        "tie_embeddings": True,
        "order": "progressive",
    }
    assert info["tokenizer_sha256"] == meta["tokenizer_sha256"] and len(info["tokenizer_sha256"]) == 64
    assert info["topology"] == {"world_size": 2, "dp": 2, "tp": 1, "zero_stage": 1, "precision": "fp32"}
    model = build_model(config_from_dict(meta["config"]).model)
    assert info["parameters"] == model.num_params() == sum(p.numel() for p in model.parameters())
    assert info["loader"] == {
        "epoch": 0,
        "cursor": 6 * 8,
        "num_samples": meta["loader"]["num_samples"],
        "global_batch_size": 8,
    }
    assert info["wandb_run_id"] is None  # log.wandb=off in the tiny runs
    sizes = {f["path"]: f["bytes"] for f in info["files"]}
    folder = Path(info["folder"])
    for name in ("meta.json", "COMPLETE", "mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"):
        assert sizes[name] == (folder / name).stat().st_size
    assert info["safety"].startswith("all ") and "weights_only=True" in info["safety"]
    assert (
        info["weights"] == meta["weights"] and sizes["model.safetensors"] == meta["files"]["model.safetensors"]["bytes"]
    )

    code, text, _ = inspect(capsys, str(zero1_run.dir))
    assert code == 0
    for fragment in (
        "step          6",
        "world size 2 (dp 2 x tp 1), ZeRO-1, fp32",
        "armd, 2 layers, d_model 32",
        "cursor 48",
        "order         progressive",
        f"{info['parameters']:,}",
        f"weights       model.safetensors: fp32, {meta['weights']['tensors']} tensors",
    ):
        assert fragment in text


def test_tp_checkpoint_folder(tp2_run, capsys):
    code, out, err = inspect(capsys, str(tp2_run.dir / "checkpoints" / "step_00000003"), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["step"] == 3 and "checkpoints" not in info
    assert info["topology"] == {"world_size": 2, "dp": 1, "tp": 2, "zero_stage": 0, "precision": "fp32"}
    assert {"mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"} <= {f["path"] for f in info["files"]}


def test_export_through_the_tools_script(zero0_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "e"
    assert main(["convert", "--checkpoint", str(zero0_run.dir), "--to", "export", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["inspect_checkpoint.py", str(out), "--json"])
    with pytest.raises(SystemExit) as exit_info:  # the script as `python tools/inspect_checkpoint.py` runs it
        runpy.run_path(str(REPO / "tools" / "inspect_checkpoint.py"), run_name="__main__")
    assert exit_info.value.code == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "export" and info["step"] == 6 and info["dtype"] == "fp32"
    assert info["conversion"]["to"] == "export" and info["conversion"]["max_abs_logit_diff"] == 0.0
    assert info["tokenizer_dir"] == str(out / "tokenizer")
    assert info["topology"]["world_size"] == 1 and info["loader"]["cursor"] == 48
    assert info["safety"].startswith("safetensors and JSON only")


def test_diff_of_two_steps_of_one_run(zero1_run, capsys):
    a, b = zero1_run.dir / "checkpoints" / "step_00000003", zero1_run.dir / "checkpoints" / "step_00000006"
    code, out, err = inspect(capsys, "--diff", str(a), str(b), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["step"] == {"a": 3, "b": 6}
    assert d["config"] == [] and d["topology"] == [] and d["tokenizer_sha256"] is None
    w = d["weights"]
    assert w["compared"] == 26 and w["identical"] == 0 and len(w["differ"]) == 26  # lm_head tied; neighbour: 3
    assert all(x["max_abs_diff"] > 0 for x in w["differ"])
    assert w["shape_mismatch"] == [] and w["only_in_a"] == [] and w["only_in_b"] == []


def test_diff_of_runs_with_another_config_and_topology(zero0_run, tp2_run, capsys):
    code, out, err = inspect(capsys, "--diff", str(zero0_run.dir), str(tp2_run.dir), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["step"] == {"a": 6, "b": 6}
    config = {x["key"]: (x["a"], x["b"]) for x in d["config"]}
    assert config["model.mlp_ratio"] == (4.0, 2.0) and config["train.lr"] == (0.003, 0.001)
    assert config["parallel.tp"] == (1, 2) and set(config) == {"model.mlp_ratio", "train.lr", "parallel.tp", "run.dir"}
    assert {x["key"]: (x["a"], x["b"]) for x in d["topology"]} == {"world_size": (1, 2), "tp": (1, 2)}
    w = d["weights"]
    mismatched = {x["name"]: (tuple(x["a"]), tuple(x["b"])) for x in w["shape_mismatch"]}
    assert mismatched["layers.0.mlp.up.weight"] == ((88, 32), (48, 32))
    assert {n.rsplit(".", 2)[-2] for n in mismatched} == {"gate", "up", "down"} and len(mismatched) == 6
    assert w["compared"] == 26 and len(w["differ"]) == 26 - 6 and not w["only_in_a"] and not w["only_in_b"]

    code, text, _ = inspect(capsys, "--diff", str(zero0_run.dir), str(tp2_run.dir))
    assert code == 0
    for fragment in (
        "model.mlp_ratio: A 4.0, B 2.0",
        "world_size: A 1, B 2",
        "layers.1.mlp.down.weight: shape A (32, 88), B (32, 48)",
        "6 shape mismatch(es)",
    ):
        assert fragment in text


def test_diff_against_an_export_of_the_same_checkpoint(zero0_run, tmp_path, capsys):
    out_dir = tmp_path / "e"
    assert (
        main(["convert", "--checkpoint", str(zero0_run.dir), "--to", "export", "--out", str(out_dir), "--quiet"]) == 0
    )
    capsys.readouterr()
    code, out, err = inspect(capsys, "--diff", str(zero0_run.dir), str(out_dir), "--json")
    assert code == 0, err
    d = json.loads(out)
    w = d["weights"]
    assert d["config"] == [] and d["topology"] == [] and d["step"] == {"a": 6, "b": 6}
    assert w["compared"] == w["identical"] == 26 and not w["differ"] and not w["only_in_a"] and not w["only_in_b"]
