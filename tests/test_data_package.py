"""lmcompose.data and lmcompose.api import each other without a circle: no module of either
package imports (at module level or inside a function; imports for type checkers only, under
``if TYPE_CHECKING:``, do not run and do not count) a module that imports it back, directly
or through others. Each imports in a fresh interpreter without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "core" / "src"
PACKAGES = ("lmcompose.data", "lmcompose.api")


def module_path(src: Path, name: str) -> Path | None:
    """The file of module ``name`` under ``src`` (a package's ``__init__.py``), or None."""
    base = src.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def package_modules(src: Path, package: str) -> list[str]:
    folder = src.joinpath(*package.split("."))
    return sorted(package if p.name == "__init__.py" else f"{package}.{p.stem}" for p in folder.glob("*.py"))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports(src: Path, name: str, root: str) -> set[str]:
    """The modules under ``root`` that running module ``name`` can import: every import
    statement outside ``if TYPE_CHECKING:`` blocks, ``from P import m`` meaning module
    ``P.m`` where that is a module, plus the packages a target lies in that ``name`` does not
    (their ``__init__`` runs first), the root package excepted (everything runs it first)."""
    path = module_path(src, name)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if module_path(src, sub) is not None else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    out: set[str] = set()
    own = set(_ancestors(name)) | {name}
    for target in found:
        if target != root and not target.startswith(root + "."):
            continue
        while target and module_path(src, target) is None:  # an attribute of a module: the module
            target = target.rpartition(".")[0]
        if not target or target == name:
            continue
        out.add(target)
        out.update(a for a in _ancestors(target) if a != root and a not in own)
    return out


def circle_through(src: Path, start: str, root: str) -> list[str] | None:
    """A chain of imports from ``start`` back to ``start`` (``[start, ..., start]``), or None."""
    graph: dict[str, set[str]] = {}
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        name, chain = stack.pop()
        if name not in graph:
            graph[name] = imports(src, name, root)
        for target in sorted(graph[name]):
            if target == start:
                return [*chain, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*chain, target]))
    return None


@pytest.mark.parametrize("module", [m for p in PACKAGES for m in package_modules(SRC, p)])
def test_no_module_imports_back_into_a_module_that_imports_it(module):
    chain = circle_through(SRC, module, "lmcompose")
    assert chain is None, "import circle: " + " -> ".join(chain)


def test_the_data_package_holds_its_modules():
    assert set(package_modules(SRC, "lmcompose.data")) >= {
        "lmcompose.data",
        "lmcompose.data.corpora",
        "lmcompose.data.download",
        "lmcompose.data.edits",
        "lmcompose.data.files",
        "lmcompose.data.wikitext",
        "lmcompose.data.windows",
    }


def test_the_circle_finder_finds_a_circle_held_by_a_function_local_import(tmp_path):
    """The check above can fail: the circle the data package replaced (api -> data -> corpora
    -> edit_data -> api, closed by imports inside functions) is found."""
    pkg = tmp_path / "lc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from lc.compose import run\n")
    (pkg / "compose.py").write_text("import lc.api\n\ndef run():\n    pass\n")
    (pkg / "api.py").write_text("def batches():\n    from lc.data import windows\n")
    (pkg / "data.py").write_text("def windows():\n    from lc.corpora import load\n")
    (pkg / "corpora.py").write_text("def load():\n    from lc import edit_data\n")
    (pkg / "edit_data.py").write_text(
        "from typing import TYPE_CHECKING\nfrom lc.api import batches\nif TYPE_CHECKING:\n    import lc.compose\n"
    )
    assert circle_through(tmp_path, "lc.api", "lc") == ["lc.api", "lc.data", "lc.corpora", "lc.edit_data", "lc.api"]
    assert circle_through(tmp_path, "lc.compose", "lc") is None  # the TYPE_CHECKING import does not run


PROBE = """
import importlib, sys
importlib.import_module({module!r})
print("TORCH_IMPORTED" if "torch" in sys.modules else "OK")
"""


def test_each_module_imports_alone_in_a_fresh_interpreter_without_torch():
    modules = [m for p in PACKAGES for m in package_modules(SRC, p)] + ["lmcompose.corpora", "lmcompose.edit_data"]
    for module in modules:
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0 and out.stdout.strip() == "OK", module + ": " + out.stdout + out.stderr
