"""`armd inspect --diff A B`: what differs between two checkpoints.

Config and topology differences are listed key by key (dotted names, both values). Weights are
compared on the full fp32 state of each side (any kind: DeepSpeed, universal or export), tied
aliases counted once: for every parameter the max abs difference, listing those that differ, and
naming shape mismatches and parameters present on one side only. A checkpoint's weights come from
its model.safetensors (weights.full_state); neither side is written to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .model_io import build, config_of, tied_aliases
from .source import Source, open_source
from .weights import full_state

MISSING = "<missing>"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"model.n_layers": 4, ...} from a nested dict; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


def dict_differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    fa, fb = flatten(a), flatten(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    pairs = ((k, fa.get(k, MISSING), fb.get(k, MISSING)) for k in keys)
    return [{"key": k, "a": va, "b": vb} for k, va, vb in pairs if va != vb]


def weight_differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    differ, shapes, identical = [], [], 0
    for name, ta in a.items():
        if name not in b:
            continue
        tb = b[name]
        if ta.shape != tb.shape:
            shapes.append({"name": name, "a": list(ta.shape), "b": list(tb.shape)})
            continue
        d = float((ta.float() - tb.float()).abs().max()) if ta.numel() else 0.0
        if d == 0:
            identical += 1
        else:
            differ.append({"name": name, "max_abs_diff": d})
    return {
        "compared": len(differ) + len(shapes) + identical,
        "identical": identical,
        "differ": differ,
        "shape_mismatch": shapes,
        "only_in_a": [k for k in a if k not in b],
        "only_in_b": [k for k in b if k not in a],
    }


def _weights(source: Source) -> dict[str, torch.Tensor]:
    aliases = tied_aliases(build(config_of(source.config, str(source.meta_file)), device="meta"))
    return {k: v for k, v in full_state(source).items() if k not in aliases}


def diff(path_a: str | Path, path_b: str | Path) -> dict[str, Any]:
    a, b = open_source(path_a), open_source(path_b)
    tok_a, tok_b = a.meta.get("tokenizer_sha256"), b.meta.get("tokenizer_sha256")
    return {
        "a": {"path": str(path_a), "kind": a.kind, "folder": str(a.folder)},
        "b": {"path": str(path_b), "kind": b.kind, "folder": str(b.folder)},
        "step": {"a": a.step, "b": b.step},
        "tokenizer_sha256": None if tok_a == tok_b else {"a": tok_a, "b": tok_b},
        "config": dict_differences(a.config, b.config),
        "topology": dict_differences(a.topology or {}, b.topology or {}),
        "weights": weight_differences(_weights(a), _weights(b)),
    }


def format_diff(d: dict[str, Any]) -> str:
    lines = [f"A: {d['a']['folder']} ({d['a']['kind']})", f"B: {d['b']['folder']} ({d['b']['kind']})"]
    sa, sb = d["step"]["a"], d["step"]["b"]
    lines.append(f"step: {sa}" if sa == sb else f"step: A {sa}, B {sb}")
    if d["tokenizer_sha256"]:
        lines.append(f"tokenizer sha256: A {d['tokenizer_sha256']['a']}, B {d['tokenizer_sha256']['b']}")
    for section in ("config", "topology"):
        items = d[section]
        lines.append(f"{section}: {'identical' if not items else f'{len(items)} difference(s)'}")
        lines += [f"  {x['key']}: A {x['a']!r}, B {x['b']!r}" for x in items]
    w = d["weights"]
    lines.append(
        f"weights: {w['compared']} compared, {w['identical']} identical, {len(w['differ'])} differ, "
        f"{len(w['shape_mismatch'])} shape mismatch(es)"
    )
    lines += [f"  {x['name']}: max abs diff {x['max_abs_diff']:.6g}" for x in w["differ"]]
    lines += [f"  {x['name']}: shape A {tuple(x['a'])}, B {tuple(x['b'])}" for x in w["shape_mismatch"]]
    if w["only_in_a"]:
        lines.append(f"  only in A: {', '.join(w['only_in_a'])}")
    if w["only_in_b"]:
        lines.append(f"  only in B: {', '.join(w['only_in_b'])}")
    return "\n".join(lines)
