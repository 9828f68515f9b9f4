"""Damage to the newest checkpoint that used to escape the fallback: named, set aside, then the resume
continues from the older intact checkpoint. Real `armd train` subprocesses; the damage is done to the files
on disk as a copy cut short, a flipped bit or a deleted file leaves them."""

from __future__ import annotations

import os
import shutil
import zipfile

import pytest

from .conftest import run_train

WEIGHTS = "mp_rank_00_model_states.pt"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_cache):
    """6 steps, checkpoints at steps 3 and 6."""
    run = run_train(tmp_path_factory.mktemp("ref") / "run", data_cache)
    assert run.returncode == 0, run.output
    return run


def _flip_a_global_name(path) -> None:
    """One bit of the pickle stream: `collections.OrderedDict` becomes `collecuions.OrderedDict` (t -> u)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        pickled = next(z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
    at = data.index(pickled) + pickled.index(b"collections") + 6
    data[at] ^= 1
    path.unlink()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage,named",
    [
        ("cut-short-20KB", f"{WEIGHTS} has 20000 bytes but"),  # OSError [Errno 22] Invalid argument
        ("flipped-global", f"{WEIGHTS} does not match its checksum"),  # refused as tampering
        ("weights-missing", f"{WEIGHTS} is missing (the checkpoint lists it)"),  # "not an armd_scale checkpoint"
        ("meta-missing", "meta.json is missing although"),  # "not an armd_scale checkpoint", no fallback
    ],
)
def test_damage_that_escaped_the_fallback_is_named_and_set_aside(damage, named, reference, tmp_path, data_cache):
    run_dir = tmp_path / "run"
    shutil.copytree(reference.dir, run_dir)
    (run_dir / "metrics.jsonl").unlink()
    folder = run_dir / "checkpoints" / "step_00000006"
    if damage == "cut-short-20KB":
        os.truncate(folder / WEIGHTS, 20_000)
    elif damage == "flipped-global":
        _flip_a_global_name(folder / WEIGHTS)
    elif damage == "weights-missing":
        (folder / WEIGHTS).unlink()
    else:
        (folder / "meta.json").unlink()
    resumed = run_train(run_dir, data_cache)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert f"checkpoint {folder} is damaged: {folder}/{named}" in resumed.output, resumed.output[-3000:]
    assert "Set aside as step_00000006.corrupt; resuming from the newest intact checkpoint, step_00000003" in (
        resumed.output
    )
    assert "resumed from step_00000003" in resumed.output and "Traceback" not in resumed.output
    assert resumed.losses() == {s: v for s, v in reference.losses().items() if s > 3}  # nothing lost but time
    assert resumed.checkpoints() == ["step_00000003", "step_00000006"]
