"""Core's types stay precise: at most 10 uses of ``Any`` per 1,000 lines (issue 39), counted
as benchmarks/code_shape.py counts them (the syntax tree's uses, string annotations included,
import lines not)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _code_shape():
    spec = importlib.util.spec_from_file_location("code_shape", ROOT / "benchmarks" / "code_shape.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_core_uses_any_at_most_ten_times_per_thousand_lines():
    shape = _code_shape()
    lines, anys = shape.shape(shape.sources(shape.CORE))
    per_thousand = 1000 * anys / lines
    assert per_thousand <= 10, f"core uses Any {anys} times in {lines} lines ({per_thousand:.1f} per 1,000)"


def test_the_count_sees_uses_and_string_annotations_but_not_imports():
    shape = _code_shape()
    text = (
        "from typing import Any\n"
        "import typing\n"
        "x: dict[str, Any] = {}\n"
        "def f(a: 'list[Any]', b: typing.Any) -> 'Any': ...\n"
        "# Any in a comment, and 'Any' in a plain string\n"
        "s = 'Any'\n"
    )
    assert shape.count_any(text) == 4
    assert shape.count_any("from typing import Any\n") == 0
