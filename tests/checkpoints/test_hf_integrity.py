"""`armd convert --to hf` folders carry checksums, and a folder's config cannot make a reader build a
model its weights do not describe.

The folder's armd_scale.json (a file transformers never reads) lists the size and SHA-256 of every
other file, in the format of an export's config.json; every armd_scale reader verifies it before it
loads anything: `armd eval ppl`, `armd generate`, `armd inspect`, `train.init_from`, load_pretrained.
That plain transformers still loads the folder is test_hf_export.py's isolated-environment test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from armd_scale.checkpoints.integrity import CorruptCheckpointError
from armd_scale.checkpoints.source import open_source
from armd_scale.cli import main
from armd_scale.pretrained import load_pretrained
from tests.checkpoints.test_integrity import zero_bytes
from tests.eval.runs import cli_env

pytest.importorskip("transformers", reason="--to hf needs the transformers extra")

# 4 layers of d_model 65,536: about 206 B parameters (824 GB in fp32) claimed by a folder of ~200 KB
HUGE = {"d_model": 65536, "n_heads": 2, "n_layers": 4}
MEMORY_LIMIT = 6 << 30  # the address space a reader gets in the subprocess: far below the claimed model


@pytest.fixture(scope="module")
def hf_folder(text_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf_integrity") / "hf"
    assert main(["convert", "--checkpoint", str(text_run.dir), "--to", "hf", "--out", str(out), "--quiet"]) == 0
    return out


def _copy(folder: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(folder, dest)
    return dest


def test_every_file_of_an_hf_export_is_recorded(hf_folder):
    record = json.loads((hf_folder / "armd_scale.json").read_text())
    files = record["files"]
    on_disk = sorted(
        p.relative_to(hf_folder).as_posix()
        for p in hf_folder.rglob("*")
        if p.is_file() and p.name != "armd_scale.json" and "__pycache__" not in p.parts
    )
    assert sorted(files) == on_disk
    for name in ("model.safetensors", "config.json", "modeling_armd.py", "tokenizer.json", "README.md"):
        assert files[name]["bytes"] == (hf_folder / name).stat().st_size and len(files[name]["sha256"]) == 64
    # transformers' own config carries nothing of ours: the record lives in the file it ignores
    assert "files" not in json.loads((hf_folder / "config.json").read_text())


def test_a_damaged_hf_export_is_named_by_every_reader(hf_folder, text_run, tmp_path, capsys):
    """The fault probe: 100 KB zeroed inside model.safetensors gave `armd eval ppl` rc 0 and a wrong NLL."""
    from armd_scale.checkpoints.model_io import build, config_of
    from armd_scale.config import ConfigError
    from armd_scale.train.init_from import load_init_weights

    out = _copy(hf_folder, tmp_path / "hf")
    weights = out / "model.safetensors"
    size = weights.stat().st_size
    count = min(100_000, size // 2)
    zero_bytes(weights, size - count, count)  # tensor bytes: safetensors' header stays valid
    assert weights.stat().st_size == size
    named = re.escape(f"{weights} does not match its checksum")

    _, val, _ = text_run.data_urls()
    assert main(["eval", "ppl", "--checkpoint", str(out), "--data", str(val), "--no-progress"]) == 1
    assert re.search(named, capsys.readouterr().err)
    assert main(["inspect", str(out)]) == 1
    assert re.search(named, capsys.readouterr().err)
    assert main(["generate", "--checkpoint", str(out), "--length", "4", "--prompt", "The"]) == 1
    assert re.search(named, capsys.readouterr().err)
    with pytest.raises(CorruptCheckpointError, match=named):
        load_pretrained(out)
    source = open_source(text_run.dir)
    cfg = config_of({**source.config, "train": {**source.config["train"], "init_from": str(out)}}, "test")
    with pytest.raises(ConfigError, match=named):
        load_init_weights(build(cfg), cfg, source.meta["tokenizer_sha256"])

    # a damaged tokenizer file is named too: the list covers every file the export wrote
    out2 = _copy(hf_folder, tmp_path / "hf2")
    (out2 / "armd_tokenizer" / "tokenizer.json").write_text("{}")
    with pytest.raises(CorruptCheckpointError, match=re.escape(str(out2 / "armd_tokenizer" / "tokenizer.json"))):
        load_pretrained(out2)


def _claim_huge(config_file: Path) -> None:
    data = json.loads(config_file.read_text())
    data["config"]["model"].update(HUGE)
    config_file.write_text(json.dumps(data))


_LOAD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from armd_scale.pretrained import load_pretrained
try:
    load_pretrained(sys.argv[1])
except ValueError as e:
    print("REFUSED", e)
    sys.exit(3)
"""


@pytest.mark.parametrize("kind", ["hf", "export"])
def test_a_config_claiming_a_huge_model_is_refused_before_it_is_built(kind, hf_folder, text_run, tmp_path):
    """A ~200 KB folder whose config claims 206 B parameters: refused with the counts, within a 6 GB
    address space (building the claimed model first would need 824 GB)."""
    if kind == "hf":
        folder = _copy(hf_folder, tmp_path / "hf")
        config_file = folder / "armd_scale.json"
    else:
        folder = tmp_path / "export"
        assert main(["convert", "--checkpoint", str(text_run.dir), "--to", "export", "--out", str(folder)]) == 0
        config_file = folder / "config.json"
    _claim_huge(config_file)
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 2 << 20
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD.format(limit=MEMORY_LIMIT), str(folder)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "the weights do not fit" in proc.stdout or "does not belong to the weights" in proc.stdout, proc.stdout
    assert "refusing to build the model" in proc.stdout
    claimed = re.search(r"a model of ([\d,]+) parameters", proc.stdout)
    assert claimed and int(claimed.group(1).replace(",", "")) > 200e9


def test_an_intact_hf_export_still_loads_and_matches(hf_folder, text_run):
    pre = load_pretrained(hf_folder)
    expected = load_pretrained(text_run.dir).model.state_dict()  # the source, tied aliases restored
    assert all(torch.equal(p.detach(), expected[k]) for k, p in pre.model.state_dict().items())
    assert main(["inspect", str(hf_folder)]) == 0
