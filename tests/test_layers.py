"""The package's layering, checked on the source: no import runs up the layers, and no import loop.

Every import is counted, module-level and function-level alike (a late import is still a dependency).
Layers, bottom to top (docs/ARCHITECTURE.md, "Package layers"):

    config.py and leaf utilities -> data -> model -> generate -> checkpoints -> train -> eval
    -> commands -> cli.py (and pretrained.py, the public facade over checkpoints/)

A module may import its own layer and the layers below it. Within a layer the module graph must
still have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "armd_scale"

LAYERS: list[set[str]] = [
    {
        "armd_scale",
        "config",
        "model_config",
        "rng",
        "devices",
        "atomic",
        "ports",
        "safe_paths",
        "processes",
        "error_text",
    },  # the bottom: no package of ours below
    {"data"},
    {"model"},
    {"generate"},
    {"checkpoints"},
    {"train"},
    {"eval"},
    {"commands"},
    {"cli", "pretrained"},  # entry points: nothing inside the package imports them
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every armd_scale module `path` imports, relative imports resolved, at any nesting level."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "armd_scale"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "armd_scale":
                target = node.module
            else:
                continue
            # `from . import x` / `from .pkg import mod`: the names may be modules themselves
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _exists(candidate) else target)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "armd_scale"
    for index, members in enumerate(LAYERS):
        if key in members:
            return index
    raise AssertionError(f"{module} is in no layer: add '{key}' to LAYERS in {__file__} and docs/ARCHITECTURE.md")


GRAPH = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_is_in_a_layer():
    for module in GRAPH:
        _layer(module)


def test_no_import_runs_up_the_layers():
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in GRAPH.items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_entry_points_are_imported_by_nothing_inside():
    tops = {m for m in GRAPH if _layer(m) == len(LAYERS) - 1}
    users = [f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets & tops if m not in tops]
    assert not users


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_loop():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import loop: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("graph", "has_cycle"),
    [({"a": {"b"}, "b": {"c"}, "c": set()}, False), ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)],
)
def test_the_loop_finder_finds_loops(graph, has_cycle):
    assert (_cycle(graph) is not None) == has_cycle


def test_the_import_reader_sees_function_level_imports():
    """A late import inside a function counts: that is how the old model -> generate loop was hidden."""
    assert "armd_scale.checkpoints.pretrained" in GRAPH["armd_scale.pretrained"]
    late = {m for m, targets in GRAPH.items() if "armd_scale.data.tokenizers.ref" in targets}
    assert "armd_scale.checkpoints.pretrained" in late  # imported inside Pretrained.tokenizer()


# Inside data/, bottom to top: the shared base (errors, storage URLs, the shard format), tokenizers,
# then preparing and loading side by side. Loading never imports prepare: a training process reads
# shards without the corpus readers and builders.
DATA_FLOORS: list[set[str]] = [
    {"errors", "urls", "permutations", "manifest", "shardio", "chunk_cache"},
    {"tokenizers"},
    {"prepare", "loading"},
]


def _data_floor(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["armd_scale", "data"] or len(parts) < 3:
        return None
    for index, members in enumerate(DATA_FLOORS):
        if parts[2] in members:
            return index
    raise AssertionError(f"{module} is on no floor of data/: add '{parts[2]}' to DATA_FLOORS in {__file__}")


def test_data_has_its_floors_and_loading_never_imports_prepare():
    wrong = []
    for module, targets in GRAPH.items():
        floor = _data_floor(module)
        if floor is None:
            continue
        for target in sorted(targets):
            to = _data_floor(target)
            if to is not None and to > floor:
                wrong.append(f"{module} (floor {floor}) imports {target} (floor {to})")
            if module.startswith("armd_scale.data.loading") and target.startswith("armd_scale.data.prepare"):
                wrong.append(f"{module} imports {target}: loading must not need the corpus builders")
    assert not wrong, "imports up the floors of data/:\n" + "\n".join(wrong)


def test_train_imports_neither_corpus_building_nor_tokenizer_training():
    """The built-in corpus and its tokenizer are prepared by the command layer (commands/train.py)."""
    found = [
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        if m.startswith("armd_scale.train")
        for t in targets
        if t.startswith("armd_scale.data.prepare")
    ]
    assert not found, found
