"""Cached decoding is the model itself, not a mirror of it (generate/cache.py, model/kv_cache.py).

The forward arithmetic once existed twice: the model's layers for training and a hand-fused copy in
generate/cache.py for decoding, held together only by the teacher-forcing tests. These tests fail if
a second copy comes back: the decoder module computes no layer math of its own, and a decoding step
runs through the model's own modules.
"""

import ast
from pathlib import Path

import pytest
import torch

from armd_scale.generate import make_decoder

from ..model.conftest import tiny_model

CACHE_PY = Path(__file__).resolve().parents[2] / "armd_scale" / "generate" / "cache.py"

# Calls that are layer arithmetic: projections, norms, rotations, attention, activations, embeddings.
MATH = {
    "linear",
    "matmul",
    "bmm",
    "mm",
    "einsum",
    "baddbmm",
    "addmm",
    "rms_norm",
    "layer_norm",
    "apply_rotary",
    "tables",
    "scaled_dot_product_attention",
    "attend",
    "softmax",
    "silu",
    "gelu",
    "embedding",
    "embed",
    "head",
    "query_start",
    "pe",
    "pe_query",
    "finish_aggregate",
    "cached_query_rows",
}


def _called_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else "")
    return names


def test_decoder_module_has_no_forward_arithmetic():
    tree = ast.parse(CACHE_PY.read_text())
    assert not _called_names(tree) & MATH, f"generate/cache.py computes layer math: {_called_names(tree) & MATH}"
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "functional" not in " ".join(modules) and "F" not in {
        a.asname for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not modules & {"model.layers", "model.rope", "model.attention", "model.query_input", "model.neighbour"}
    assert "StepLayer" not in imported
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not attributes & {"weight", "layers", "attn", "mlp"}, "the decoder reads the model's weights or layers"
    bases = {ast.unparse(b) for n in ast.walk(tree) if isinstance(n, ast.ClassDef) for b in n.bases}
    assert not any("Module" in b for b in bases), f"generate/cache.py defines a module: {bases}"


def _record_calls(model) -> tuple[list[str], list]:
    """Forward hooks on every Block, Attention and MLP (and neighbour attention): the names that ran."""
    seen: list[str] = []
    handles = []
    named = dict(model.named_modules())
    for name, module in named.items():
        if name.startswith("layers.") and name.count(".") <= 2 or name == "neighbour":
            handles.append(module.register_forward_hook(lambda m, a, o, name=name: seen.append(name)))
    return seen, handles


@pytest.mark.parametrize("arch", ["armd", "ar"])
def test_cached_steps_run_the_models_own_layers(arch):
    model = tiny_model(arch, n_layers=4, **({"neighbour_heads": 2} if arch == "armd" else {}))
    seen, handles = _record_calls(model)
    try:
        decoder = make_decoder(model, 1, 8)
        decoder.step(None, None, torch.tensor([[0]]))
        first = list(seen)
        decoder.step(torch.tensor([[3]]), torch.tensor([[0]]), torch.tensor([[1]]))
        second = seen[len(first) :]
    finally:
        for h in handles:
            h.remove()
    for calls in (first, second):
        for i in range(4):
            assert {f"layers.{i}", f"layers.{i}.attn", f"layers.{i}.mlp"} <= set(calls), calls
        if arch == "armd":  # the first step has nothing revealed: neighbour attention has nothing to read
            assert ("neighbour" in calls) == (calls is second)


def test_decoding_follows_the_weights_it_runs_with():
    """A step reads the model's weights as they are now (no snapshot taken when the decoder is built)."""
    model = tiny_model("armd", n_layers=2)
    decoder = make_decoder(model, 1, 8)
    before = decoder.step(None, None, torch.tensor([[0]]))
    decoder = make_decoder(model, 1, 8)
    with torch.no_grad():
        model.layers[1].mlp.down.weight.mul_(3.0)
    assert not torch.allclose(decoder.step(None, None, torch.tensor([[0]])), before)
