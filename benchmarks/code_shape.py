"""The code's shape (issue 39): lines per area of core and the CLI, and ``Any`` per 1,000 lines.

``Any`` is counted in the syntax tree: every use of the name ``Any`` (``typing.Any`` too),
including inside string annotations, and not the ``from typing import Any`` lines themselves.
tests/test_code_shape.py keeps core at or under 10 per 1,000 lines.

    python benchmarks/code_shape.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "src" / "lmcompose"
CLI = ROOT / "cli" / "src" / "lmcompose_cli"
SKIP = ("templates",)


def sources(package: Path) -> list[Path]:
    """The package's Python files, without the CLI's templates (they hold {{placeholders}})."""
    return sorted(p for p in package.rglob("*.py") if not any(s in p.parts for s in SKIP))


def _annotation_strings(tree: ast.AST) -> list[str]:
    """String annotations (``"dict[str, Any]"``) whose names ``ast`` leaves unparsed."""
    found: list[str] = []
    for node in ast.walk(tree):
        annotations: list[ast.expr | None] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            annotations += [a.annotation for a in every if a is not None]
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        for a in annotations:
            for sub in ast.walk(a) if a is not None else ():
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    found.append(sub.value)
    return found


def count_any(text: str) -> int:
    """How many times the name ``Any`` is used (not imported) in one module's source."""

    def uses(tree: ast.AST) -> int:
        n = 0
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "Any":
                n += 1
            elif isinstance(node, ast.Attribute) and node.attr == "Any":
                n += 1
        return n

    tree = ast.parse(text)
    total = uses(tree)
    for s in _annotation_strings(tree):
        try:
            total += uses(ast.parse(s, mode="eval"))
        except SyntaxError:
            continue
    return total


def shape(files: list[Path]) -> tuple[int, int]:
    """(lines, uses of Any) over ``files``."""
    lines = anys = 0
    for f in files:
        text = f.read_text(encoding="utf-8")
        lines += len(text.splitlines())
        anys += count_any(text)
    return lines, anys


def area_of(path: Path, package: Path) -> str:
    rel = path.relative_to(package)
    return rel.parts[0] + "/" if len(rel.parts) > 1 else "(top-level modules)"


def main() -> int:
    rows: list[tuple[str, int, int]] = []
    for name, package in (("lmcompose", CORE), ("lmcompose_cli", CLI)):
        files = sources(package)
        areas: dict[str, list[Path]] = {}
        for f in files:
            areas.setdefault(area_of(f, package), []).append(f)
        for area in sorted(areas):
            rows.append((f"{name}/{area}", *shape(areas[area])))
        rows.append((f"{name} (all)", *shape(files)))
    print(f"{'area':40} {'lines':>7} {'Any':>5} {'Any/1000':>9}")
    for area, lines, anys in rows:
        print(f"{area:40} {lines:7d} {anys:5d} {1000 * anys / max(lines, 1):9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
