"""One-line errors name the path once and the error once: no `ConfigError: UnsafePathError: ...`
chains turned into text, no `[Errno 17] File exists: PATH` about another path than the one given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from armd_scale.cli import main
from armd_scale.config import ConfigError, load_config
from armd_scale.data.tokenizers.ref import TokenizerRef
from armd_scale.error_text import error_text
from armd_scale.train.checkpoint import Checkpointer
from armd_scale.train.distributed import DistInfo
from tests.checkpoints.conftest import copy_run


def test_a_resume_refusal_is_one_error_naming_the_folder_once(tmp_path: Path, zero0_run) -> None:
    """A file the newest checkpoint lists is a directory: the resume refusal used to read
    `ConfigError: UnsafePathError: refusing ...` in exit_status.json (the class names of two errors)."""
    run = copy_run(zero0_run, tmp_path / "run")
    folder = run / "checkpoints" / "step_00000006"
    meta = json.loads((folder / "meta.json").read_text())
    name = next(iter(meta["files"]))
    (folder / name).unlink()
    (folder / name).mkdir()
    cfg = load_config(str(run / "config.yaml"), [f"run.dir={run}"])
    checkpointer = Checkpointer(
        run, cfg, DistInfo(0, 1, 0, torch.device("cpu"), "gloo"), tokenizer=TokenizerRef.from_meta(meta)
    )
    with pytest.raises(ConfigError) as e:
        checkpointer.plan_resume()
    text = str(e.value)
    assert text.startswith(f"refusing the file name '{name}' that meta.json key 'files' gives in {folder}"), text
    assert "Error:" not in text and text.count(str(folder)) == 1


def test_an_out_or_run_dir_under_a_file_is_named_once_before_any_work(
    tmp_path: Path, zero0_run, capsys: pytest.CaptureFixture
) -> None:
    """`--out FILE/x` failed after the whole conversion with `[Errno 17] File exists: 'FILE'`;
    `run.dir=FILE` with `[Errno 17] File exists`, `run.dir=FILE/run` with `[Errno 20] Not a directory`."""
    blocking = tmp_path / "afile"
    blocking.write_text("not a folder\n")
    out = blocking / "export"
    assert main(["convert", "--checkpoint", str(zero0_run.dir), "--to", "export", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"armd convert: --out {out} cannot be created: {blocking} is a file, not a directory"
    assert not any("reading the full weights" in line for line in err)  # refused before the work
    for run_dir, said in (
        (blocking, f"run.dir={blocking} is a file, not a directory"),
        (blocking / "run", f"run.dir={blocking / 'run'} cannot be created: {blocking} is a file, not a directory"),
    ):
        assert main(["train", f"run.dir={run_dir}", "train.steps=1"]) == 1
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"armd train: {said}"


def test_error_text_names_the_file_and_the_error_once(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "model.pt"
    with pytest.raises(OSError) as e:
        missing.read_bytes()
    assert error_text(e.value, tmp_path / "gone") == f"{missing}: No such file or directory (ENOENT)"
    assert error_text(OSError(22, "Invalid argument"), tmp_path) == f"{tmp_path}: Invalid argument (EINVAL)"
    assert error_text(ConfigError(f"{tmp_path} is wrong"), tmp_path) == f"{tmp_path} is wrong"
    assert error_text(KeyError("step")) == "KeyError: 'step'"
    shutil.rmtree(tmp_path)
