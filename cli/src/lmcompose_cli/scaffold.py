"""`lmcompose new-plugin`: render a plugin package from the templates in this package."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from lmcompose.errors import UsageError

KINDS = ("intervention", "metric", "dataset")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
SUMMARIES = {
    "intervention": "adds seeded Gaussian noise to the decoder projections (an lmcompose intervention)",
    "metric": "mean absolute weight of the decoder projections (an lmcompose metric)",
    "dataset": "edit requests in a simple JSON schema (an lmcompose edit dataset)",
}


def plugin_names(name: str) -> dict[str, str]:
    if not NAME.match(name):
        raise UsageError(
            f"plugin name {name!r}: use lowercase letters, digits and '_', starting with a letter (e.g. noise)"
        )
    module = f"lmcompose_{name}"
    return {
        "name": name,
        "module": module,
        "dist": f"lmcompose-{name.replace('_', '-')}",
        "Class": "".join(part.capitalize() for part in name.split("_")),
    }


def render(name: str, kind: str, dest: Path) -> Path:
    """Write the plugin package for ``name`` of ``kind`` into ``dest/<dist>``; return it."""
    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r}: use one of {', '.join(KINDS)}")
    values = plugin_names(name)
    values["kind"] = kind
    values["summary"] = f"{values['dist']}: {SUMMARIES[kind]}"
    target = dest / values["dist"]
    if target.exists():
        raise UsageError(f"{target} already exists; choose another --dir or name")
    root = resources.files("lmcompose_cli").joinpath("templates")
    files: dict[str, str] = {}
    for part in ("common", kind):
        _collect(root.joinpath(part), "", files)
    for rel, text in sorted(files.items()):
        out_rel = rel.replace("__module__", values["module"]).replace("__name__", name)
        out = target / out_rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_fill(text, values), encoding="utf-8")
    return target


def _collect(node, prefix: str, files: dict[str, str]) -> None:
    for child in node.iterdir():
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            if child.name != "__pycache__":
                _collect(child, rel + "/", files)
        elif not child.name.endswith(".pyc"):
            files[rel] = child.read_text(encoding="utf-8")


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text
