"""A checkpoint file carrying a malicious pickle is refused everywhere, by name, and never executed."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from armd_scale.checkpoints.safe_load import UnsafeCheckpointError, safe_torch_load
from armd_scale.cli import main
from armd_scale.pretrained import load_pretrained
from armd_scale.safe_paths import UnsafePathError

from .conftest import copy_run, run_train, without_weights_file


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

    # the readers of DeepSpeed's files check the whole folder first
    assert main(["inspect", str(run)]) == 1
    assert f"refusing to load {bad}" in capsys.readouterr().err
    assert main(["convert", "--checkpoint", str(run), "--to", "universal", "--out", str(tmp_path / "universal")]) == 1
    assert f"refusing to load {bad}" in capsys.readouterr().err
    assert not (tmp_path / "universal").exists()

    # the readers of weights read model.safetensors (JSON and raw bytes) and never open a pickle
    assert load_pretrained(run).step == 6
    assert main(["inspect", "--diff", str(run / "checkpoints" / "step_00000003"), str(run)]) == 0
    assert main(["convert", "--checkpoint", str(run), "--to", "export", "--out", str(tmp_path / "e"), "--quiet"]) == 0
    capsys.readouterr()

    # saved before checkpoints carried model.safetensors: the weights come from DeepSpeed's files, checked first
    without_weights_file(run)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"refusing to load {bad}")) as refused:
        load_pretrained(run)
    assert re.search(r"Unsupported global: GLOBAL _?io\.open", str(refused.value))  # the finding; _io from Python 3.12
    assert main(["inspect", "--diff", str(run / "checkpoints" / "step_00000003"), str(run)]) == 1
    assert f"refusing to load {bad}" in capsys.readouterr().err
    assert main(["convert", "--checkpoint", str(run), "--to", "export", "--out", str(tmp_path / "export")]) == 1
    assert f"refusing to load {bad}" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()

    assert not marker.exists(), "the payload ran"
    # The payload is real: full unpickling (what none of the above may do) runs it.
    torch.load(folder / file, weights_only=False)
    assert marker.exists()


def test_payload_hidden_in_a_universal_folder_is_refused(zero1_run, tmp_path, capsys):
    """Tampering after conversion: the universal files are checked too (by inspect, which checks the whole
    folder, and by every reader of a folder without model.safetensors); the readers of weights read the
    folder's model.safetensors and never open them."""
    out = tmp_path / "u"
    assert main(["convert", "--checkpoint", str(zero1_run.dir), "--to", "universal", "--out", str(out), "--quiet"]) == 0
    target = next((out / "universal" / "step_00000006" / "zero").glob("*/fp32.pt"))
    marker = tmp_path / "pwned"
    target.unlink()
    with open(target, "wb") as f:
        pickle.dump(Payload(marker), f, protocol=2)

    assert main(["inspect", str(out)]) == 1
    assert f"refusing to load {target}" in capsys.readouterr().err
    assert load_pretrained(out).step == 6

    without_weights_file(out)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"refusing to load {target}")):
        load_pretrained(out)
    capsys.readouterr()
    assert main(["convert", "--checkpoint", str(out), "--to", "export", "--out", str(tmp_path / "e")]) == 1
    assert f"refusing to load {target}" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "e").exists()


class SystemPayload:
    """Unpickling this would run a shell command; torch blocks its module (posix) by name."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_the_refusal_names_the_offending_global(legacy, tmp_path):
    """For globals of blocked modules torch's message changes form; the refusal used to name none."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if legacy:
        with open(path, "wb") as f:
            pickle.dump(SystemPayload(marker), f, protocol=2)
    else:
        torch.save({"weights": torch.zeros(2), "payload": SystemPayload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"refusing to load {path}")) as refused:
        safe_torch_load(path)
    assert f"Unsupported global: GLOBAL {os.system.__module__}.system" in str(refused.value)
    assert "weights_only" not in str(refused.value)  # never torch's advice to retry with full unpickling
    assert not marker.exists()


# -- file names read from a checkpoint's own files (armd_scale/safe_paths.py) ------------------------------


def _list_file(meta_path: Path, name: str, target: Path | None) -> None:
    """Add `name` to the `files` list of meta.json / config.json, with the true size and SHA-256 of
    `target` (so only the name can give it away), or those of an empty file."""
    meta = json.loads(meta_path.read_text())
    data = target.read_bytes() if target is not None else b""
    meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    meta_path.write_text(json.dumps(meta))


def test_a_listed_file_outside_the_checkpoint_is_refused_everywhere(zero0_run, data_cache, tmp_path, capsys):
    """meta.json `files` naming `../../secret` (with its real SHA-256) was read and accepted; a symbolic link
    inside the folder to a file outside was followed the same way."""
    run = copy_run(zero0_run, tmp_path / "run")
    folder = run / "checkpoints" / "step_00000006"
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any checkpoint\n")
    escape = os.path.relpath(secret, folder)
    assert escape.startswith("../")
    _list_file(folder / "meta.json", escape, secret)
    refusal = f"refusing the file name {escape!r} that meta.json key 'files' gives in {folder}: it leads out of the"

    with pytest.raises(UnsafePathError, match=re.escape(refusal)):
        load_pretrained(folder)
    with pytest.raises(UnsafePathError, match=re.escape(refusal)):
        load_pretrained(run)  # never a fallback to an older checkpoint: the folder was tampered with
    assert main(["inspect", str(run)]) == 1
    assert refusal in capsys.readouterr().err
    assert main(["convert", "--checkpoint", str(run), "--to", "export", "--out", str(tmp_path / "e")]) == 1
    assert refusal in capsys.readouterr().err and not (tmp_path / "e").exists()
    resumed = run_train(run, data_cache, "train.steps=9")
    assert resumed.returncode == 1 and refusal in resumed.output, resumed.output[-3000:]
    assert (folder / "COMPLETE").exists() and not (run / "checkpoints" / "step_00000006.corrupt").exists()

    # a symbolic link inside the folder, to the file outside
    meta = json.loads((folder / "meta.json").read_text())
    del meta["files"][escape]
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "notes.txt").symlink_to(secret)
    _list_file(folder / "meta.json", "notes.txt", secret)
    linked = f"'notes.txt' .* through a symbolic link \\(to {re.escape(str(secret))}\\)"
    with pytest.raises(UnsafePathError, match=linked):
        load_pretrained(folder)


def test_a_listed_device_never_hangs_a_reader(zero0_run, tmp_path):
    """meta.json `files` naming /dev/zero (0 bytes by stat, endless to read) hung every tool hashing it."""
    run = copy_run(zero0_run, tmp_path / "run")
    folder = run / "checkpoints" / "step_00000006"
    original = (folder / "meta.json").read_text()
    for name in ("/dev/zero", os.path.relpath("/dev/zero", folder)):
        meta = json.loads(original)
        meta["files"] = {name: {"bytes": 0, "sha256": hashlib.sha256(b"").hexdigest()}, **meta["files"]}
        (folder / "meta.json").write_text(json.dumps(meta))
        inspected = subprocess.run(
            [sys.executable, "-m", "armd_scale.cli", "inspect", str(folder)],
            capture_output=True,
            text=True,
            timeout=120,  # the old code never returned
        )
        assert inspected.returncode == 1, inspected.stderr[-3000:]
        why = "it is an absolute path" if name.startswith("/") else "it leads out of the folder (..)"
        assert f"refusing the file name {name!r} that meta.json key 'files' gives in {folder}: {why}" in (
            inspected.stderr
        )
    # a link inside the folder to the device
    (folder / "zero").symlink_to("/dev/zero")
    meta = json.loads(original)
    meta["files"]["zero"] = {"bytes": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UnsafePathError, match="'zero' .* through a symbolic link"):
        load_pretrained(folder)


def test_an_export_lists_and_names_only_its_own_files(zero0_run, tmp_path, capsys):
    """An export's config.json `files`, and the `model` its tokenizer/tokenizer.json names (read by
    `armd generate`: /dev/zero filled memory), stay inside the export."""
    out = tmp_path / "export"
    assert main(["convert", "--checkpoint", str(zero0_run.dir), "--to", "export", "--out", str(out), "--quiet"]) == 0
    secret = tmp_path / "secret.txt"
    secret.write_text("outside\n")
    config = (out / "config.json").read_text()
    _list_file(out / "config.json", "../secret.txt", secret)
    listed = f"'../secret.txt' that config.json key 'files' gives in {out}"
    with pytest.raises(UnsafePathError, match=re.escape(listed)):
        load_pretrained(out)
    (out / "config.json").write_text(config)

    record = out / "tokenizer" / "tokenizer.json"
    info = json.loads(record.read_text())
    info["model"] = os.path.relpath("/dev/zero", record.parent)
    record.write_text(json.dumps(info))
    _list_file(out / "config.json", "tokenizer/tokenizer.json", record)  # its checksum updated too
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(out), "--prompt", "The", "--length", "4", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"refusing the file name {info['model']!r} that tokenizer.json key 'model' gives in {record.parent}" in err


def test_names_in_transformers_and_universal_folders_stay_inside(tmp_path):
    """A transformers folder's safetensors index and a universal form's `latest_universal` name files too."""
    from safetensors.torch import save_file

    from armd_scale.checkpoints.hf_mapping import read_hf_state
    from armd_scale.checkpoints.layout import universal_tag_dir
    from armd_scale.config import ModelConfig

    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({"embed.weight": torch.zeros(2, 2)}, str(tmp_path / "elsewhere.safetensors"))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"embed.weight": "../elsewhere.safetensors"}})
    )
    indexed = "'../elsewhere.safetensors' that model.safetensors.index.json key 'weight_map'"
    with pytest.raises(UnsafePathError, match=re.escape(indexed)):
        read_hf_state(folder, "armd", ModelConfig())

    ckpt = tmp_path / "step_00000001"
    (ckpt / "universal").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (ckpt / "universal" / "latest_universal").write_text("../../outside\n")
    named = f"'../../outside' that latest_universal gives in {ckpt / 'universal'}"
    with pytest.raises(UnsafePathError, match=re.escape(named)):
        universal_tag_dir(ckpt)
