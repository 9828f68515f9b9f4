"""Fuzz the newest checkpoint of a tiny run: every file a save writes, 50 random bit flips anywhere, 50 in a
torch file's pickle stream, and truncations to 7 sizes, one at a time (fault_fuzz.py). Every case must end
named and set aside with a fallback to the older checkpoint, as a named tamper refusal, or harmless."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch

from armd_scale.checkpoints.safe_load import UnsafeCheckpointError, safe_torch_load
from armd_scale.cli import main
from armd_scale.pretrained import load_pretrained

from .conftest import copy_run, without_weights_file
from .fault_fuzz import run
from .test_security import Payload


@pytest.mark.slow
def test_every_single_fault_is_named_and_falls_back(zero0_run, tmp_path):
    """Before: 6 of 50 pickle-stream flips (UnicodeDecodeError, KeyError, TypeError naming no file, or a
    refusal as tampering) and 3 of 7 truncations (OSError [Errno 22]) escaped; meta.json flips were read
    as the truth."""
    pristine = copy_run(zero0_run, tmp_path / "run")
    escaped: list[str] = []
    counts = run(pristine, tmp_path / "scratch", say=escaped.append)
    assert not escaped, "\n".join(escaped)
    files = {f for f, _, _ in counts}
    assert {"mp_rank_00_model_states.pt", "meta.json", "COMPLETE", "model.safetensors"} <= files
    assert counts[("mp_rank_00_model_states.pt", "flip-pickle", "fallback")] == 50
    assert counts[("model.safetensors", "flip", "fallback")] == 50


@pytest.mark.parametrize("weights_file", [True, False], ids=["model.safetensors", "saved-before-it"])
def test_a_payload_that_matches_its_checksum_is_still_refused_as_tampering(weights_file, zero0_run, tmp_path, capsys):
    """Checksums are compared before unpickling now; a file whose recorded size and SHA-256 were updated to
    match a planted payload must still be refused by name, never loaded nor taken for damage: by every reader
    of DeepSpeed's files (inspect; load_pretrained on a checkpoint without model.safetensors). A reader of
    weights with model.safetensors never opens the file."""
    run_dir = copy_run(zero0_run, tmp_path / "run")
    if not weights_file:
        without_weights_file(run_dir)
    folder = run_dir / "checkpoints" / "step_00000006"
    bad = folder / "mp_rank_00_model_states.pt"
    marker = tmp_path / "pwned"
    state = safe_torch_load(bad)
    state["payload"] = Payload(marker)
    bad.unlink()
    torch.save(state, bad)
    meta = json.loads((folder / "meta.json").read_text())
    data = bad.read_bytes()
    meta["files"][bad.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    text = json.dumps(meta, indent=1)
    (folder / "meta.json").write_text(text)
    complete = json.loads((folder / "COMPLETE").read_text())
    (folder / "COMPLETE").write_text(json.dumps({**complete, "meta_sha256": hashlib.sha256(text.encode()).hexdigest()}))
    assert main(["inspect", str(run_dir)]) == 1
    assert f"refusing to load {bad}" in capsys.readouterr().err
    if weights_file:
        assert load_pretrained(run_dir).step == 6
    else:
        with pytest.raises(UnsafeCheckpointError, match=re.escape(f"refusing to load {bad}")) as refused:
            load_pretrained(run_dir)
        assert re.search(r"Unsupported global: GLOBAL _?io\.open", str(refused.value))  # _io.open from Python 3.12
    assert not marker.exists()
