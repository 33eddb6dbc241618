"""results.jsonl (one JSON row per evaluation, appended atomically) and config.yaml."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.yaml"


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None (JSON has no NaN), tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # 0-d tensors / numpy scalars
        return _clean(value.item())
    return value


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row with a single write on an O_APPEND descriptor, then fsync: a killed run
    leaves whole rows (at worst one torn last line, which read_rows skips)."""
    data = (json.dumps(_clean(row), sort_keys=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # a torn line from an earlier kill must not swallow this row
        if os.fstat(fd).st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete row of a results file (torn lines from an interrupted write skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def write_yaml_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(_clean(data), f, sort_keys=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


MAX_YAML_NODES = 1_000_000


def expanded_size(data: Any, limit: int = MAX_YAML_NODES) -> int | None:
    """How many values ``data`` holds once YAML aliases are expanded (each alias counts as a
    full copy of what it names), computed without expanding: a repeated object is sized
    once. Stops counting past ``limit``; None for a structure that contains itself."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(obj: Any) -> int | None:
        if not isinstance(obj, dict | list):
            return 1
        key = id(obj)
        if key in sizes:
            return sizes[key]
        if key in active:
            return None
        active.add(key)
        total = 1
        for child in (obj.values() if isinstance(obj, dict) else obj):
            n = size(child)
            if n is None:
                return None
            total = min(limit + 1, total + n)
        active.discard(key)
        sizes[key] = total
        return total

    return size(data)


def read_yaml(path: Path) -> dict[str, Any]:
    from lmcompose.errors import ConfigError

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    if data is None:
        return {}
    size = expanded_size(data)
    if size is None:
        raise ConfigError(f"config file {path} refers to itself (a YAML alias inside its own anchor); write the values out")
    if size > MAX_YAML_NODES:
        raise ConfigError(f"config file {path} expands to more than {MAX_YAML_NODES:,} values (YAML aliases repeat "
                          "anchored parts); a config is never that large: write it without nested aliases")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data
