"""The plugin API is one documented surface: docs/plugins.md lists each module plugins may
import and its names; each of those modules' ``__all__`` is exactly that list, every name
exists, and every first-party plugin imports only listed names from lmcompose."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def documented() -> dict[str, set[str]]:
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = text.split("## The plugin API", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        m = re.match(r"- `(lmcompose[\w.]*)` — [^—]* — (.*)$", line)
        if m:
            out[m.group(1)] = set(re.findall(r"`(\w+)`", m.group(2)))
    return out


def test_every_listed_module_exports_exactly_its_listed_names():
    api = documented()
    assert len(api) >= 10
    for module, names in api.items():
        mod = importlib.import_module(module)
        assert set(mod.__all__) == names, module
        assert [n for n in names if not hasattr(mod, n)] == [], module


def imports_from_lmcompose(path: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) of every ``from lmcompose... import name`` and ``import lmcompose...``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and (node.module == "lmcompose" or node.module.startswith("lmcompose."))
        ):
            out += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [
                (a.name, "*", node.lineno)
                for a in node.names
                if a.name == "lmcompose" or a.name.startswith("lmcompose.")
            ]
    return out


def test_plugins_import_only_the_plugin_api():
    api = documented()
    bad = []
    files = sorted((ROOT / "plugins").glob("*/src/*/**/*.py"))
    assert files
    for f in files:
        for module, name, line in imports_from_lmcompose(f):
            if module not in api or (name != "*" and name not in api[module]):
                bad.append(f"{f.relative_to(ROOT)}:{line}: from {module} import {name}")
    assert bad == [], "plugins import private lmcompose names:\n" + "\n".join(bad)


def test_paths_is_a_leaf_module():
    """lmcompose.paths imports nothing else from lmcompose at import time, so any module can
    ask for the cache or data folder without importing models, data or the API."""
    tree = ast.parse((ROOT / "core" / "src" / "lmcompose" / "paths.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [n.module for n in top if isinstance(n, ast.ImportFrom)] + [
        a.name for n in top if isinstance(n, ast.Import) for a in n.names
    ]
    assert names and not [n for n in names if n and n.startswith("lmcompose")]
    for module in ("lmcompose.data", "lmcompose.data.edits", "lmcompose.models.loading"):
        source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")  # a package: __init__
        assert "from lmcompose.paths import cache_dir" in source, module
