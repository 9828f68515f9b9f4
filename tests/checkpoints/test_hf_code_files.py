"""The code a custom-code Hugging Face folder ships is the package's own (checkpoints/hf_code_files.py).

Fast checks without a trained run: the closure of the glue's imports runs with armd_scale blocked from
import and computes the package's logits exactly; each shipped file is the package source with only
its recorded import lines changed; imports the folder could not satisfy are refused at export time.
(test_hf_export.py loads real exports with transformers in a venv without armd_scale.)
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from armd_scale.checkpoints.hf_code_files import _check_absolute, _target, module_file, shipped_files, write_code
from armd_scale.checkpoints.report import ConversionError
from armd_scale.config import ModelConfig
from armd_scale.model import build_model
from armd_scale.model_config import to_hf

pytest.importorskip("transformers", reason="the shipped glue imports transformers")

PACKAGE_PARENT = Path(__file__).resolve().parents[2]
IMPORT_LINE = re.compile(r"^\s*from \.+[\w.]* import ")

CHILD = r"""
import importlib.abc, json, sys
class NoArmdScale(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "armd_scale":
            raise ImportError("armd_scale is blocked here")
sys.meta_path.insert(0, NoArmdScale())
sys.path.insert(0, sys.argv[1])
import torch
from shipped.configuration_armd import ARMDConfig
from shipped.modeling_armd import ARMDForCausalLM
given = torch.load(sys.argv[2], weights_only=True)
model = ARMDForCausalLM(ARMDConfig(**json.loads(sys.argv[3]))).eval()
model.load_state_dict({"model." + k: v for k, v in given["state"].items()})
with torch.no_grad():
    out = {"contract": model(given["tokens"], given["order"], given["block"]),
           "standard": model(input_ids=given["tokens"][:, :-1]).logits}
torch.save(out, sys.argv[4])
print(json.dumps(sorted(m for m in sys.modules if m.startswith("armd_scale"))))
"""


@pytest.mark.parametrize("arch", ["armd", "ar"])
def test_the_shipped_closure_runs_without_armd_scale_and_gives_the_package_logits(tmp_path, arch):
    mc = ModelConfig(arch=arch, vocab_size=40, n_layers=2, d_model=16, n_heads=2, max_seq_len=16, d_pe=8)
    torch.manual_seed(0)
    model = build_model(mc).eval()
    with torch.no_grad():  # move every parameter away from its initial value (zero gains, zero W_s)
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.3)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 40, (2, 12), generator=g)
    if arch == "armd":
        order = torch.stack([torch.randperm(12, generator=g) for _ in range(2)])
        block = (torch.arange(12) // 3).expand(2, 12)
    else:
        order = block = torch.arange(12).expand(2, 12)
    folder = tmp_path / "shipped"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    write_code(folder)
    torch.save({"state": model.state_dict(), "tokens": tokens, "order": order, "block": block}, tmp_path / "in.pt")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, str(tmp_path), str(tmp_path / "in.pt"), json.dumps(to_hf(mc)),
         str(tmp_path / "out.pt")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    pos = torch.arange(12).expand(2, 12)
    with torch.no_grad():
        assert torch.equal(got["contract"], model(tokens, order, block))
        assert torch.equal(got["standard"], model(tokens, pos, pos)[:, 1:])


def test_each_shipped_file_is_the_package_source_with_only_its_import_lines_rewritten():
    files = shipped_files()
    assert {"armd.py", "layers.py", "attention.py", "masks.py", "rope.py", "model_config.py"} <= set(files)
    for name, shipped in files.items():
        record = shipped.record()
        lines = (PACKAGE_PARENT / record["source"]).read_text().splitlines(keepends=True)
        for number, old, new in record["rewrites"]:
            assert lines[number - 1] == old + "\n" and IMPORT_LINE.match(old) and IMPORT_LINE.match(new)
            lines[number - 1] = new + "\n"
        assert shipped.text == "".join(lines), name
        # no import left that reaches outside the folder
        for node in ast.walk(ast.parse(shipped.text)):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and f"{node.module}.py" in files


def test_imports_the_folder_cannot_satisfy_are_refused():
    with pytest.raises(ConversionError, match="imports deepspeed outside a try block"):
        _check_absolute("armd_scale.model.x", ast.parse("def f():\n    import deepspeed\n"))
    _check_absolute("armd_scale.model.x", ast.parse("try:\n    import flash_attn\nexcept ImportError:\n    pass\n"))
    _check_absolute("armd_scale.model.x", ast.parse("import torch.nn\nimport math\nfrom transformers import A\n"))


def test_the_closure_follows_imports_and_refuses_what_it_cannot_ship():
    """From another root the walker reaches other modules (no list), and refuses what a folder cannot hold:
    armd_scale/config.py needs yaml; `from . import x` is a form transformers' loader does not copy."""
    from_layers = set(shipped_files(("armd_scale.model.layers",)))
    assert {"layers.py", "attention.py", "masks.py", "rope.py"} <= from_layers and "armd.py" not in from_layers
    with pytest.raises(ConversionError, match="armd_scale.config .* imports yaml outside a try block"):
        _check_absolute("armd_scale.config", ast.parse((PACKAGE_PARENT / "armd_scale" / "config.py").read_text()))
    node = ast.parse("from . import masked_diffusion as md").body[0]
    assert isinstance(node, ast.ImportFrom)
    with pytest.raises(ConversionError, match=r"`from \. import \.\.\.` cannot be shipped"):
        _target("armd_scale.model.mdlm", node)
    with pytest.raises(ConversionError, match="not a module file"):
        module_file("armd_scale.model")
