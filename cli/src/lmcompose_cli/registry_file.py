"""registry.yaml: the catalogue of plugins that `lmcompose install` and
`lmcompose plugins --available` read."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from lmcompose.errors import ConfigError, UsageError


@dataclass
class RegistryEntry:
    name: str
    kind: str
    distribution: str
    summary: str
    path: Path | None  # a first-party plugin's folder in this checkout, if present
    homepage: str | None = None

    @property
    def installed_version(self) -> str | None:
        try:
            return metadata.version(self.distribution)
        except metadata.PackageNotFoundError:
            return None


def find_registry() -> Path:
    """``LMCOMPOSE_REGISTRY``, else the registry.yaml of the checkout this CLI runs from,
    else one in the current folder or above."""
    env = os.environ.get("LMCOMPOSE_REGISTRY")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"LMCOMPOSE_REGISTRY={env!r} is not a file")
        return path
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / "registry.yaml").is_file():
                return folder / "registry.yaml"
    raise ConfigError("no registry.yaml found: run from an lmcompose checkout or set LMCOMPOSE_REGISTRY to its path")


def read_registry(path: Path | None = None) -> list[RegistryEntry]:
    from lmcompose.results import read_yaml

    path = path or find_registry()
    data: Mapping[str, object] = read_yaml(path)  # safe_load, a key given twice refused
    plugins = data.get("plugins")
    if not isinstance(plugins, list):
        raise ConfigError(f"{path}: expected a mapping with a 'plugins' list")
    out = []
    for i, item in enumerate(plugins):
        if not isinstance(item, dict) or not all(item.get(k) for k in ("name", "kind", "distribution")):
            raise ConfigError(f"{path}: plugin entry {i} needs name, kind and distribution")
        local = path.parent / item["path"] if item.get("path") else None
        out.append(
            RegistryEntry(
                item["name"],
                item["kind"],
                item["distribution"],
                item.get("summary", ""),
                local if local is not None and (local / "pyproject.toml").is_file() else None,
                item.get("homepage"),
            )
        )
    return out


def lookup(name: str, entries: list[RegistryEntry]) -> RegistryEntry:
    from lmcompose.errors import UnknownNameError

    for e in entries:
        if e.name == name:
            return e
    raise UnknownNameError(
        "plugin in registry.yaml",
        name,
        [e.name for e in entries],
        "Pass --package SPEC to install a package that is not in the registry.",
    )


def pip_command(action: str, target: str, editable: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "pip", action]
    if action == "uninstall":
        return [*cmd, "-y", target]
    # --no-deps would skip a plugin's own libraries; lmcompose itself is already installed
    return [*cmd, "-e", target] if editable else [*cmd, target]


def install_command(name: str | None, package: str | None) -> list[str]:
    if package:
        return pip_command("install", package)
    if name is None:
        raise UsageError("give a plugin NAME from registry.yaml, or --package SPEC")
    entry = lookup(name, read_registry())
    if entry.kind == "builtin":
        raise UsageError(f"{name!r} is built into lmcompose; nothing to install")
    if entry.path is not None:
        return pip_command("install", str(entry.path), editable=True)
    return pip_command("install", entry.distribution)


def uninstall_command(name: str | None, package: str | None) -> list[str]:
    if package:
        return pip_command("uninstall", package)
    if name is None:
        raise UsageError("give a plugin NAME from registry.yaml, or --package DIST")
    entry = lookup(name, read_registry())
    if entry.kind == "builtin":
        raise UsageError(f"{name!r} is built into lmcompose and cannot be uninstalled separately")
    return pip_command("uninstall", entry.distribution)
