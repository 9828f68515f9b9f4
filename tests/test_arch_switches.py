"""The architecture choice stays inside the model package: outside it, at most one arch switch per layer.

A model says what it is through its methods and class facts (`likelihood_kind`, `multi_token_blocks`,
`sampler`, `objective`, `forward_flops`, `weight_decay_split`, ...), and `model.model_class(config)`
answers for callers that hold a config only. Every other layer asks those instead of deciding by
`model.arch` again, so a new architecture is added in model/ (plus, per layer, at most one table
such as the command layer's preset choice), not at a dozen scattered sites.

An arch switch, as read from the source with `ast`:
- a comparison with a name or attribute called `arch` (or ending in `arch`): `cfg.arch == "ar"`,
  `arch in (...)`;
- `isinstance` / `issubclass` against a model class (`ARMDModel`, `ARModel`, `MDLMModel`);
- a lookup keyed by an arch (`TABLE[cfg.arch]`), a dict literal keyed by arch names, a `match` on
  an arch.
Sites are counted per function: one function holding a dispatch table of several branches is one
site (`generate.cache.make_decoder`).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "armd_scale"
MODEL_CLASSES = {"ARMDModel", "ARModel", "MDLMModel", "_Transformer"}
ARCH_NAMES = {"armd", "ar", "mdlm"}
# Copied into Hugging Face exports and run by transformers without armd_scale: a program of its own.
STANDALONE = {"checkpoints/hf_code"}
ALLOWED_PER_LAYER = 1


def _is_arch(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    return name is not None and name.endswith("arch")


def _names(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Tuple):
        return set().union(*(_names(e) for e in node.elts)) if node.elts else set()
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    return set()


def _is_switch(node: ast.AST) -> bool:
    if isinstance(node, ast.Compare):
        return any(_is_arch(x) for x in [node.left, *node.comparators])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass"):
        return len(node.args) == 2 and bool(_names(node.args[1]) & MODEL_CLASSES)
    if isinstance(node, ast.Subscript):
        return _is_arch(node.slice)
    if isinstance(node, ast.Dict):
        keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
        return len(keys) >= 2 and len(keys) == len(node.keys) and keys <= ARCH_NAMES
    if isinstance(node, ast.Match):
        return _is_arch(node.subject)
    return False


def switch_sites(source: str) -> list[tuple[str, int]]:
    """(enclosing function or "<module>", line) of every arch switch in `source`."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, scope: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            scope = node.name
        if _is_switch(node):
            found.append((scope, node.lineno))  # type: ignore[attr-defined]
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(ast.parse(source), "<module>")
    return found


def _layer(rel: str) -> str:
    return rel.split("/")[0] if "/" in rel else "(top)"


def inventory() -> dict[str, dict[tuple[str, str], list[int]]]:
    """layer -> (module, function) -> lines, outside the model package and standalone code."""
    out: dict[str, dict[tuple[str, str], list[int]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("model/") or any(rel.startswith(s + "/") for s in STANDALONE):
            continue
        for scope, line in switch_sites(path.read_text()):
            out[_layer(rel)][(rel, scope)].append(line)
    return out


def test_no_layer_outside_the_model_has_more_than_one_arch_switch():
    over = []
    for layer, sites in inventory().items():
        counted = set(sites)
        if len(counted) > ALLOWED_PER_LAYER:
            listing = ", ".join(f"{m}:{f} (lines {sites[(m, f)]})" for m, f in sorted(counted))
            over.append(f"{layer}: {len(counted)} sites: {listing}")
    assert not over, (
        "arch switches outside armd_scale/model (ask the model: likelihood_kind, multi_token_blocks, sampler, "
        "objective, ... or model_class(config)):\n" + "\n".join(over)
    )


def test_the_inventory_is_what_this_file_says():
    """The whole inventory, written out: a new site fails here even in a layer that has room for one."""
    found = {layer: set(sites) for layer, sites in inventory().items()}
    assert found == {
        "(top)": {("model_config.py", "validate")},
        "train": {("train/loop.py", "_set_up")},
        "generate": {("generate/cache.py", "make_decoder")},
        "checkpoints": {("checkpoints/model_card.py", "model_card")},
    }


def test_the_model_package_answers_what_the_layers_used_to_switch_on():
    """The facts that replaced the switches: each architecture's answers, written out."""
    from armd_scale.model import ARCHS

    facts = {
        arch: (cls.likelihood_kind, cls.multi_token_blocks, cls.sampler, cls.objective) for arch, cls in ARCHS.items()
    }
    assert facts == {
        "armd": ("exact", True, "blocks", "orders"),
        "ar": ("exact", False, "blocks", "orders"),
        "mdlm": ("bound", True, "ancestral", "masked_diffusion"),
    }


def test_the_detector_finds_every_form_of_switch():
    source = """
import x

TABLE = {"armd": 1, "ar": 2}                 # a table keyed by arch names

def compare(cfg):
    return cfg.model.arch == "mdlm"

def membership(arch):
    return arch in ("ar", "mdlm")

def kinds(model):
    return isinstance(model, (ARModel, x.MDLMModel))

def lookup(cfg):
    return TABLE[cfg.arch]

def matched(self):
    match self.model_arch:
        case "ar":
            return 1

def unrelated(layout, protocol, model):
    return layout == "armd" or protocol == "mdlm" or isinstance(model, dict) or {"a": 1, "ar": 2}
"""
    assert switch_sites(source) == [
        ("<module>", 4),
        ("compare", 7),
        ("membership", 10),
        ("kinds", 13),
        ("lookup", 16),
        ("matched", 19),
    ]


def test_one_function_with_many_branches_is_one_site_and_two_functions_are_two():
    source = """
def dispatch(model):
    if isinstance(model, ARMDModel):
        return 1
    if isinstance(model, ARModel):
        return 2

def other(cfg):
    return cfg.arch == "ar"
"""
    assert {scope for scope, _ in switch_sites(source)} == {"dispatch", "other"}
