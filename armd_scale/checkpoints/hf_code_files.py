"""The Python files a custom-code (`armd` layout) Hugging Face folder ships: armd_scale's own modules.

The folder's code is not a second copy of the model. The roots (hf_code/configuration_armd.py and
hf_code/modeling_armd.py, the transformers glue) import the package's model modules; the exporter
follows every package-relative import from the roots, transitively, and copies each module it reaches
into the folder under its own file name, rewriting only those imports to sibling imports
(`from ..model.layers import Block` -> `from .layers import Block`). transformers' dynamic-module
loader then copies every file that `from .x import y` names, so the folder loads without armd_scale.

Following imports, not a list, means a module the model starts to use is shipped the day it is
imported. What the closure may import is checked here, with transformers' own rule (its
`check_imports` reads every import outside a try block): torch, transformers and the standard library
only; an optional dependency must be imported inside a try block. A module that needs more is
refused at export time, naming the file, so the dependency is cut at its source.

`shipped_files()` also returns, per file, the exact line rewrites applied (recorded in the folder's
armd_scale.json), so a test can show that each shipped file is the package source with only those
rewrites: the exported code agrees with the package by construction.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .report import ConversionError

PACKAGE = "armd_scale"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
ROOTS = (f"{PACKAGE}.checkpoints.hf_code.configuration_armd", f"{PACKAGE}.checkpoints.hf_code.modeling_armd")
ALLOWED = frozenset({"torch", "transformers", *sys.stdlib_module_names})
_FROM = re.compile(r"^(\s*from\s+)(\.+[\w.]*)(\s+import\b)")


@dataclass
class ShippedFile:
    """One file of the folder: which package module it is, and the import lines rewritten in it."""

    name: str  # file name in the folder
    module: str  # the armd_scale module it is copied from
    source: Path
    text: str = ""
    rewrites: list[tuple[int, str, str]] = field(default_factory=list)  # (line number, package line, shipped line)

    def record(self) -> dict:
        """What armd_scale.json keeps: the source (relative to the package's parent) and the rewrites."""
        return {
            "module": self.module,
            "source": self.source.relative_to(PACKAGE_DIR.parent).as_posix(),
            "rewrites": [list(r) for r in self.rewrites],
        }


def module_file(module: str) -> Path:
    """The source file of an armd_scale module; a package (an __init__.py) cannot be shipped flat."""
    rel = Path(*module.split(".")[1:])
    path = (PACKAGE_DIR / rel).with_suffix(".py")
    if not path.is_file():
        raise ConversionError(
            f"the exported code imports {module}, which is not a module file (a package's __init__ cannot be "
            "shipped as a sibling): import the module that defines the name"
        )
    return path


def _target(module: str, node: ast.ImportFrom) -> str:
    package = module.rsplit(".", 1)[0].split(".")
    base = package[: len(package) - (node.level - 1)]
    if node.module is None:  # `from . import x`: transformers' loader would not copy x
        raise ConversionError(
            f"{module}: `from {'.' * node.level} import ...` cannot be shipped (transformers copies only files "
            "named as `from .x import y`); import the names from their module"
        )
    return ".".join([*base, node.module])


def _check_absolute(module: str, tree: ast.AST) -> None:
    """Refuse an import outside torch, transformers and the standard library that is not in a try block
    (what transformers' check_imports would require to be installed where the folder is loaded)."""

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Try):
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name.split(".")[0] not in ALLOWED:
                raise ConversionError(
                    f"{module} (shipped with the Hugging Face export) imports {name} outside a try block: the "
                    "exported code may import torch, transformers and the standard library only"
                )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)


def shipped_files(roots: tuple[str, ...] = ROOTS) -> dict[str, ShippedFile]:
    """{file name: ShippedFile} for the roots and every armd_scale module they import, transitively."""
    files: dict[str, ShippedFile] = {}
    pending = list(roots)
    while pending:
        module = pending.pop(0)
        name = module.rsplit(".", 1)[1] + ".py"
        if name in files:
            if files[name].module != module:
                raise ConversionError(
                    f"the exported code needs {files[name].module} and {module}: both would be {name} in the folder"
                )
            continue
        shipped = files[name] = ShippedFile(name, module, module_file(module))
        text = shipped.source.read_text()
        tree = ast.parse(text, str(shipped.source))
        _check_absolute(module, tree)
        lines = text.splitlines(keepends=True)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            target = _target(module, node)
            module_file(target)
            pending.append(target)
            old = lines[node.lineno - 1]
            new, count = _FROM.subn(rf"\g<1>.{target.rsplit('.', 1)[1]}\g<3>", old, count=1)
            if not count:
                raise ConversionError(f"{shipped.source}:{node.lineno}: cannot rewrite this import to a sibling import")
            if new != old:
                lines[node.lineno - 1] = new
                shipped.rewrites.append((node.lineno, old.rstrip("\n"), new.rstrip("\n")))
        shipped.rewrites.sort()
        shipped.text = "".join(lines)
    return files


def write_code(folder: Path) -> dict[str, dict]:
    """Write the shipped files into `folder`; returns {file name: record} for armd_scale.json."""
    files = shipped_files()
    for name, shipped in files.items():
        (folder / name).write_text(shipped.text)
    return {name: shipped.record() for name, shipped in sorted(files.items())}
