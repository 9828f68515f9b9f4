"""A checkpoint file carrying a malicious pickle is refused everywhere, by name, and never executed."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch

from armd_scale.checkpoints.safe_load import UnsafeCheckpointError, safe_torch_load
from armd_scale.cli import main
from armd_scale.pretrained import load_pretrained

from .conftest import copy_run, run_train


class Payload:
    """Unpickling this calls open(marker, "w"): code execution made visible as a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tamper(path: Path, marker: Path) -> None:
    state = safe_torch_load(path)
    state["payload"] = Payload(marker)
    path.unlink()  # the loaded tensors are memory-mapped from the old file: write a new inode
    torch.save(state, path)


@pytest.mark.parametrize(
    "run_name,file,resume",
    [
        ("zero0_run", "mp_rank_00_model_states.pt", ()),  # resumed directly
        ("zero1_run", "zero_pp_rank_1_mp_rank_00_optim_states.pt", ("parallel.zero_stage=1",)),  # via universal
    ],
    ids=["zero0-model-states", "zero1-optim-states"],
)
def test_malicious_pickle_is_refused_everywhere(run_name, file, resume, request, data_cache, tmp_path, capsys):
    run = copy_run(request.getfixturevalue(run_name), tmp_path / "run")
    folder = run / "checkpoints" / "step_00000006"
    marker = tmp_path / "pwned"
    tamper(folder / file, marker)
    bad = str(folder / file)

    # armd train: the resume (1 process: a ZeRO-1 checkpoint of 2 ranks goes through the universal conversion)
    resumed = run_train(run, data_cache, *resume, "train.steps=9", nproc=1)
    assert resumed.returncode == 1, resumed.output[-3000:]
    assert f"refusing to load {bad}" in resumed.output
    assert not (folder / "universal").exists()

    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"refusing to load {bad}")) as refused:
        load_pretrained(run)
    assert "Unsupported global: GLOBAL io.open" in str(refused.value)  # the finding, not torch's retry advice

    assert main(["inspect", str(run)]) == 1
    assert f"refusing to load {bad}" in capsys.readouterr().err
    assert main(["inspect", "--diff", str(run / "checkpoints" / "step_00000003"), str(run)]) == 1
    assert f"refusing to load {bad}" in capsys.readouterr().err

    for to in ("export", "universal"):
        assert main(["convert", "--checkpoint", str(run), "--to", to, "--out", str(tmp_path / to)]) == 1
        assert f"refusing to load {bad}" in capsys.readouterr().err
        assert not (tmp_path / to).exists()

    assert not marker.exists(), "the payload ran"
    # The payload is real: full unpickling (what none of the above may do) runs it.
    torch.load(folder / file, weights_only=False)
    assert marker.exists()


def test_payload_hidden_in_a_universal_folder_is_refused(zero1_run, tmp_path, capsys):
    """Tampering after conversion: the universal files are checked too."""
    out = tmp_path / "u"
    assert main(["convert", "--checkpoint", str(zero1_run.dir), "--to", "universal", "--out", str(out), "--quiet"]) == 0
    target = next((out / "universal" / "step_00000006" / "zero").glob("*/fp32.pt"))
    marker = tmp_path / "pwned"
    target.unlink()
    with open(target, "wb") as f:
        pickle.dump(Payload(marker), f, protocol=2)

    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"refusing to load {target}")):
        load_pretrained(out)
    capsys.readouterr()
    assert main(["convert", "--checkpoint", str(out), "--to", "export", "--out", str(tmp_path / "e")]) == 1
    assert f"refusing to load {target}" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "e").exists()
