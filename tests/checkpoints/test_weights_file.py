"""Every checkpoint carries the model's full fp32 weights as model.safetensors, and readers use only that.

The bug report: `armd eval ppl` on a 2-process ZeRO-2 run converted the checkpoint to DeepSpeed's
universal form inside its folder, so reading failed on a read-only or shared filesystem and raced a
trainer. Now `armd eval ppl`, `armd generate`, `armd inspect` and `armd convert --to export` leave
every byte of the run folder as it was, with model.safetensors (ZeRO-2 and ZeRO-3, whose parameters
no rank holds whole) and without it (a checkpoint saved before it existed: assembled elsewhere).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from armd_scale.checkpoints.integrity import CorruptCheckpointError
from armd_scale.checkpoints.source import open_source
from armd_scale.checkpoints.weights import full_state
from armd_scale.checkpoints.weights_file import UnsupportedWeightsError, read_weights, write_weights
from armd_scale.cli import main
from armd_scale.config import DataConfig
from armd_scale.data.prepare.builtin import ensure_builtin_dataset
from armd_scale.pretrained import load_pretrained

from .conftest import copy_run, engine_val_nll, recomputed_val_nll, without_weights_file, write_meta

STEP6 = Path("checkpoints") / "step_00000006"


def snapshot(folder: Path) -> dict[str, str | None]:
    """{relative path: SHA-256} of every file under `folder`, hidden ones included; directories map to None,
    so a new empty folder counts too."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def _readers(run: Path, cache: Path, out: Path) -> list[list[str]]:
    _, val, _ = ensure_builtin_dataset(DataConfig(cache_dir=str(cache), seq_len=32, vocab_size=128), build=False)
    assert val is not None
    return [
        ["eval", "ppl", "--checkpoint", str(run), "--data", val, "--max-tokens", "64", "--no-progress"],
        ["generate", "--checkpoint", str(run), "--prompt", "The", "--length", "4", "--device", "cpu"],
        ["inspect", str(run)],
        ["convert", "--checkpoint", str(run), "--to", "export", "--out", str(out), "--quiet"],
    ]


@pytest.mark.parametrize("layout", ["weights-file", "saved-before-it"])
@pytest.mark.parametrize("run_name", ["zero2_run", "zero3_run"])
def test_readers_never_write_into_the_run_folder(run_name, layout, request, data_cache, tmp_path, capsys):
    run = copy_run(request.getfixturevalue(run_name), tmp_path / "run")
    if layout == "saved-before-it":
        without_weights_file(run)
    before = snapshot(run)
    for argv in _readers(run, data_cache, tmp_path / "export"):
        assert main(argv) == 0, f"{argv[0]}: {capsys.readouterr().err[-3000:]}"
        assert snapshot(run) == before, f"armd {' '.join(argv[:2])} changed the run folder"
    capsys.readouterr()
    assert (tmp_path / "export" / "model.safetensors").is_file()


# Loads the file with safetensors alone: armd_scale and deepspeed cannot be imported in this process.
ALONE = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("armd_scale", "deepspeed"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
import torch
from safetensors import safe_open
from safetensors.torch import load_file
state = load_file(sys.argv[1])
with safe_open(sys.argv[1], "pt") as f:
    metadata = f.metadata()
torch.save(state, sys.argv[2])
loaded = [m for m in sys.modules if m.startswith(("armd_scale", "deepspeed"))]
print(json.dumps({"metadata": metadata, "blocked": loaded}))
"""


@pytest.mark.parametrize("run_name", ["zero2_run", "zero3_run"])
def test_the_weights_file_is_the_trained_model(run_name, request, tmp_path):
    run = request.getfixturevalue(run_name)
    folder = run.dir / STEP6
    proc = subprocess.run(
        [sys.executable, "-c", ALONE, str(folder / "model.safetensors"), str(tmp_path / "state.pt")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {
        "metadata": {"format": "pt", "armd_scale": "armd_scale-checkpoint-weights-1"},
        "blocked": [],  # neither was imported
    }
    alone = torch.load(tmp_path / "state.pt", weights_only=True)

    meta = json.loads((folder / "meta.json").read_text())
    record = meta["weights"]
    assert record["version"] == 1 and record["file"] == "model.safetensors" and record["dtype"] == "fp32"
    assert record["tied"] == {"lm_head.weight": "embed.weight"} and "lm_head.weight" not in alone  # stored once
    assert record["tensors"] == len(alone) and record["parameters"] == sum(t.numel() for t in alone.values())
    data = (folder / "model.safetensors").read_bytes()
    assert meta["files"]["model.safetensors"] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    # the full state assembled the old way, from DeepSpeed's files (through the universal form, elsewhere)
    old = full_state(open_source(without_weights_file(copy_run(run, tmp_path / "old"))))
    for alias, stored in record["tied"].items():  # the universal form keeps some aliases, equal to the tensor
        assert alias not in old or torch.equal(old.pop(alias), old[stored])
    assert alone.keys() == old.keys()
    assert all(alone[k].dtype == torch.float32 and torch.equal(alone[k], old[k]) for k in old)
    # and, independently of any reader, the validation NLL the engine computed with its partitioned weights
    loaded = load_pretrained(folder)
    assert recomputed_val_nll(loaded.model, loaded.config, 2) == pytest.approx(engine_val_nll(run), rel=1e-5, abs=0)


class _Opened:
    """The files opened under `folder` (Python's `open` audit event: our hashing, torch.load, json)."""

    def __init__(self) -> None:
        self.folder: str | None = None
        self.names: list[str] = []

    def __call__(self, event: str, args: tuple) -> None:
        if event == "open" and self.folder is not None and isinstance(args[0], str) and args[0].startswith(self.folder):
            self.names.append(args[0][len(self.folder) :])


_OPENED = _Opened()
sys.addaudithook(_OPENED)  # audit hooks cannot be removed: it records nothing while no folder is set


def test_readers_of_weights_open_no_file_of_deepspeed(zero3_run):
    _OPENED.folder, _OPENED.names = f"{zero3_run.dir}/", []
    try:
        assert load_pretrained(zero3_run.dir).step == 6
    finally:
        _OPENED.folder = None
    step6 = f"{STEP6}/"
    assert {n.removeprefix(step6) for n in _OPENED.names} == {"meta.json", "COMPLETE", "model.safetensors"}


def test_a_damaged_weights_file_is_named_and_readers_fall_back(zero2_run, data_cache, tmp_path, caplog, capsys):
    run = copy_run(zero2_run, tmp_path / "run")
    weights = run / STEP6 / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of one tensor: safetensors itself would not notice
    weights.write_bytes(bytes(data))
    before = snapshot(run)
    named = f"{weights} does not match its checksum"

    with pytest.raises(CorruptCheckpointError, match=re.escape(named)):
        load_pretrained(run / STEP6)  # the folder itself: an error naming the file
    with caplog.at_level(logging.WARNING):
        assert load_pretrained(run).step == 3  # the run directory: the newest intact checkpoint
    assert f"skipping damaged checkpoint {run / STEP6}" in caplog.text and named in caplog.text
    eval_ppl = _readers(run / STEP6, data_cache, tmp_path / "export")[0]
    assert main(eval_ppl) == 1
    assert named in capsys.readouterr().err
    assert main(["inspect", str(run / STEP6)]) == 1
    assert named in capsys.readouterr().err
    assert snapshot(run) == before  # nothing set aside or repaired by a reader


def test_damage_to_deepspeed_files_does_not_concern_the_readers_of_weights(zero2_run, tmp_path, capsys):
    """They never open DeepSpeed's files; inspect, which checks the whole folder, still names the damage."""
    run = copy_run(zero2_run, tmp_path / "run")
    optim = run / STEP6 / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    optim.write_bytes(optim.read_bytes()[:1000])
    assert load_pretrained(run).step == 6
    assert main(["inspect", str(run / STEP6)]) == 1
    assert f"{optim} has 1000 bytes but" in capsys.readouterr().err


def test_a_weights_record_of_an_unknown_version_is_refused_naming_meta_json(zero2_run, tmp_path):
    run = copy_run(zero2_run, tmp_path / "run")
    meta = json.loads((run / STEP6 / "meta.json").read_text())
    meta["weights"]["version"] = 2
    write_meta(run / STEP6, meta)
    refusal = f"{run / STEP6 / 'meta.json'} key 'weights' has version 2, but this armd_scale reads version 1"
    with pytest.raises(UnsupportedWeightsError, match=re.escape(refusal)):
        load_pretrained(run / STEP6)
    with pytest.raises(UnsupportedWeightsError, match=re.escape(refusal)):
        load_pretrained(run)  # a newer format is not damage: no fallback to an older checkpoint

    meta["weights"] = {"version": 1, "file": "model.safetensors"}
    write_meta(run / STEP6, meta)
    with pytest.raises(CorruptCheckpointError, match=re.escape("key 'weights' lacks or mistypes dtype, tied")):
        load_pretrained(run / STEP6)


def test_a_failed_write_is_an_os_error_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    """safetensors reports a full disk as its own error with `(os error 28)` in the text; the savers (which
    name the file and the free space for an OSError) get the OSError it stands for, on the final name."""
    import safetensors.torch

    path = tmp_path / "model.safetensors"
    write_weights({"w": torch.ones(3)}, path, metadata={})
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not safetensors' 0600: a shared run is read by others
    assert torch.equal(read_weights(path)["w"], torch.ones(3))

    def full(*args, **kwargs):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError) as failed:
        write_weights({"w": torch.zeros(3)}, path, metadata={})
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # the old file whole, no debris
    assert torch.equal(read_weights(path)["w"], torch.ones(3))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
