"""results.jsonl (one JSON row per evaluation, appended atomically) and config.yaml."""

from __future__ import annotations

import errno
import glob
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import yaml

from lmcompose._limits import MAX_NESTING
from lmcompose.errors import UsageError

__all__ = [
    "CONFIG_FILE",
    "PER_EDIT_FILE",
    "RESULTS_FILE",
    "read_per_edit",
    "read_rows",
    "read_rows_checked",
    "read_yaml",
]

# The readers (read_rows, read_per_edit, read_yaml) give the files' JSON and YAML as dict[str, Any]:
# their values are whatever a file holds, and the reports, composability and CLI that read them
# check each value where they use it; everything this package writes is typed (engine.schema).
RESULTS_FILE = "results.jsonl"
PER_EDIT_FILE = "per_edit.jsonl"  # each row's per-edit scores, beside results.jsonl
CONFIG_FILE = "config.yaml"


@runtime_checkable
class _Scalar(Protocol):
    """A 0-d tensor or a numpy scalar: ``item()`` gives its Python number."""

    def item(self) -> object: ...


def _clean(value: object) -> object:
    """JSON-safe: non-finite floats become None (JSON has no NaN), tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, _Scalar) and callable(value.item):  # 0-d tensors / numpy scalars
        return _clean(value.item())
    return value


def link_refused(path: Path) -> UsageError:
    """The one message for a symbolic link where lmcompose writes a file or folder."""
    try:
        target = f" (to {os.readlink(path)})"
    except OSError:
        target = ""
    return UsageError(
        f"{path} is a symbolic link{target}; lmcompose never writes through a link (it would change what "
        "the link points to): remove the link, or use another folder"
    )


def refuse_link(path: Path) -> None:
    """One UsageError when ``path`` is a symbolic link (a file or folder a run writes)."""
    if path.is_symlink():
        raise link_refused(path)


def open_no_link(path: Path, flags: int) -> int:
    """``os.open`` that never follows a symbolic link at ``path`` (O_NOFOLLOW: checked by
    the open itself, so a link put there after any check is refused too). A created file
    gets 0666 less the umask, as with open()."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and path.is_symlink():
            raise link_refused(path) from None
        raise


def append_row(path: Path, row: Mapping[str, object]) -> None:
    """Append one row with a single write on an O_APPEND descriptor, then fsync: a killed run
    leaves whole rows (at worst one torn last line, which read_rows skips). A link at
    ``path`` is refused, never appended to."""
    data = (json.dumps(_clean(row), sort_keys=False) + "\n").encode()
    fd = open_no_link(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        # a torn line from an earlier kill must not swallow this row
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def flag_nonfinite(row: dict[str, object]) -> list[str]:
    """Make ``row`` what the writer writes: a top-level value that is NaN or ±Infinity (a
    results file written by hand or by another tool; JSON readers accept both) becomes null and
    is flagged under ``nonfinite`` (``nan``, ``inf``, ``-inf``), as the engine flags a metric,
    so no average takes it in; one nested deeper becomes null. Returns the keys flagged that
    were not flagged already."""
    held = row.get("nonfinite")
    flags: dict[object, object] = dict(held) if isinstance(held, dict) else {}
    new = []
    for key, value in list(row.items()):
        if isinstance(value, float) and not math.isfinite(value):
            if key not in flags:
                new.append(key)
            flags[key] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
            row[key] = None
        elif isinstance(value, dict | list) and key != "nonfinite":
            row[key] = _clean(value)
    if flags:
        row["nonfinite"] = flags
    return new


def nonfinite_note(where: str, keys: list[str]) -> str:
    """The note for a row whose ``keys`` held NaN or Infinity when read."""
    return (
        f"{where}: {', '.join(keys)} not finite (NaN or Infinity, which lmcompose writes as null); "
        "flagged, not averaged in"
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete row of a results file (torn lines from an interrupted write, and lines
    that are not JSON objects, skipped; :func:`read_rows_checked` says which)."""
    return read_rows_checked(path)[0]


_TOO_DEEP = object()  # a line json.loads gave up on (RecursionError)


def read_rows_checked(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a results file and a note for every line skipped other than a torn last
    line (which a kill during a write leaves, and a resume rewrites): a line that is not a
    JSON object, nests deeper than MAX_NESTING, or has a ``position`` that is not a whole
    number >= 0 (every reader sorts and keys rows by it); and for every row that held NaN or
    Infinity (flagged as the writer flags them: :func:`flag_nonfinite`)."""
    if not path.exists():
        return [], []
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError as exc:
        from lmcompose.errors import DataError

        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i != last:
                problems.append(f"{path.name} line {i + 1} is not valid JSON and was skipped")
            continue
        except RecursionError:
            row = _TOO_DEEP
        if row is _TOO_DEEP or (isinstance(row, dict) and (nesting_depth(row) or 0) > MAX_NESTING):
            problems.append(f"{path.name} line {i + 1} nests deeper than {MAX_NESTING} levels and was skipped")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path.name} line {i + 1} is not a JSON object ({type(row).__name__}) and was skipped")
            continue
        position = row.get("position", 0)
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            problems.append(
                f"{path.name} line {i + 1} has position {position!r}, not a whole number >= 0, and was skipped"
            )
            continue
        flagged = flag_nonfinite(row)
        if flagged:
            problems.append(nonfinite_note(f"{path.name} line {i + 1}", flagged))
        rows.append(row)
    return rows, problems


def read_per_edit(path: Path, run_id: str | None = None) -> dict[tuple[str, int], dict[str, Any]]:
    """The per-edit lines of a run folder (or a per_edit.jsonl path) by the key of their
    row, (cell id, position); the last line of a key wins (a run killed between a per-edit
    line and its row writes both again on resume). ``run_id``: that run's lines only. A
    folder without per_edit.jsonl (written before it existed) gives {}."""
    path = Path(path)
    if path.is_dir():
        path = path / PER_EDIT_FILE
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for line in read_rows(path):
        if (run_id is not None and line.get("run_id") != run_id) or "position" not in line:
            continue
        cell = line.get("cell")
        position = line["position"]
        if not isinstance(position, int):  # pragma: no cover - read_rows skips such a line
            continue
        key = (str(cell) if cell is not None else f"run|r{line.get('replicate', 0)}", position)
        out[key] = line
    return out


def replace_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` through a temporary file beside it and rename it into place, so a kill
    leaves the old file or the new one, never half of one. ``write(tmp_path)`` writes. The
    temporary file has a name no one can guess (created with O_EXCL) and the file gets the
    mode a plain open() gives (0666 less the umask); a link at ``path`` is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_link(path)
    _remove_orphans(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{_tmp_prefix(path)}{os.getpid()}-")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600 whatever the umask
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process
    return True


def _remove_orphans(path: Path) -> None:
    """Remove the temporary files a killed writer of ``path`` left behind
    (``.NAME.tmp-PID-RANDOM``, or ``.NAME.tmp-PID`` from earlier versions)."""
    prefix = _tmp_prefix(path)
    for tmp in path.parent.glob(glob.escape(prefix) + "*"):
        pid = tmp.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)) and not tmp.is_dir():
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> Path:
    return replace_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> Path:
    """Give ``path`` and, for a folder, everything in it the mode a plain open() or mkdir()
    would (0666 or 0777 less the umask; links left alone). mkdtemp, mkstemp and safetensors
    make 0700 folders and 0600 files whatever the umask, so without this a saved model could
    not be read by the group or by a server's account."""
    mask = _umask()

    def fix(p: str, folder: bool) -> None:
        if not os.path.islink(p):
            os.chmod(p, (0o777 if folder else 0o666) & ~mask)

    fix(str(path), path.is_dir())
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for d in dirs:
                fix(os.path.join(root, d), True)
            for f in files:
                fix(os.path.join(root, f), False)
    return path


def write_yaml_atomic(path: Path, data: Mapping[str, object]) -> None:
    write_text_atomic(path, yaml.safe_dump(_clean(data), sort_keys=False))


MAX_YAML_NODES = 1_000_000


def nesting_depth(data: object, limit: int = MAX_NESTING) -> int | None:
    """How many levels of lists and mappings ``data`` nests (a scalar is 0), counted without
    recursion and only up to ``limit + 1``; None for a structure that contains itself (a YAML
    alias inside its own anchor). Every reader of a user's YAML or JSON checks it, so nothing
    recursive (the alias count, row cleaning, a digest) meets a file nested thousands deep."""
    depth: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[object, bool]] = [(data, False)]
    while stack:
        obj, finished = stack.pop()
        if not isinstance(obj, dict | list):
            continue
        key = id(obj)
        children = list(obj.values()) if isinstance(obj, dict) else obj
        if finished:
            active.discard(key)
            depth[key] = 1 + max((depth.get(id(c), 0) for c in children if isinstance(c, dict | list)), default=0)
            if depth[key] > limit:
                return limit + 1
            continue
        if key in depth:
            continue
        if key in active:
            return None
        active.add(key)
        stack.append((obj, True))
        stack.extend((c, False) for c in children if isinstance(c, dict | list) and id(c) not in depth)
    return depth.get(id(data), 0)


def too_deep(what: str) -> str:
    """The message for a file nested deeper than MAX_NESTING levels."""
    return (
        f"{what} nests lists or mappings more than {MAX_NESTING} levels deep; no lmcompose file is nested "
        "that deep: check it was written as intended"
    )


def expanded_size(data: object, limit: int = MAX_YAML_NODES) -> int | None:
    """How many values ``data`` holds once YAML aliases are expanded (each alias counts as a
    full copy of what it names), computed without expanding: a repeated object is sized
    once. Stops counting past ``limit``; None for a structure that contains itself."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(obj: object) -> int | None:
        if not isinstance(obj, dict | list):
            return 1
        key = id(obj)
        if key in sizes:
            return sizes[key]
        if key in active:
            return None
        active.add(key)
        total = 1
        for child in obj.values() if isinstance(obj, dict) else obj:
            n = size(child)
            if n is None:
                return None
            total = min(limit + 1, total + n)
        active.discard(key)
        sizes[key] = total
        return total

    return size(data)


class _DuplicateKeyError(yaml.YAMLError):
    """A mapping that gives one key twice (PyYAML would keep the last value without a word)."""

    def __init__(self, key: object, first_line: int, line: int):
        super().__init__(key, first_line, line)
        self.key, self.first_line, self.line = key, first_line, line

    def __str__(self) -> str:
        return (
            f"key {self.key!r} is given twice (line {self.first_line} and line {self.line}); the second would "
            "silently replace the first: keep one"
        )


#: The safe loader (plain data only, never a Python object), libyaml's when installed: the
#: pure-Python one takes seconds for a study with a grid of thousands of values.
if TYPE_CHECKING:
    from yaml import SafeLoader as _SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping. Keys a merge (``<<``)
    brings in may still be overridden: that is what a merge is for."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[object, object]:
        if isinstance(node, yaml.MappingNode):
            first: dict[object, int] = {}
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first
                except TypeError:  # an unhashable key: construct_mapping names it
                    continue
                if seen:
                    raise _DuplicateKeyError(key, first[key], key_node.start_mark.line + 1)
                first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (safe_load, a key given twice refused); every problem
    is one ConfigError naming the file."""
    from lmcompose.errors import ConfigError

    if "\x00" in str(path):
        raise ConfigError(f"config file {str(path)!r} is not a path (it holds a NUL character)")
    try:
        data: object = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except _DuplicateKeyError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        if "maximum nesting depth" in str(exc):  # libyaml's own limit, reached before ours
            raise ConfigError(too_deep(f"config file {path}")) from None
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except RecursionError:  # the parser recurses once per level
        raise ConfigError(too_deep(f"config file {path}")) from None
    if data is None:
        return {}
    depth = nesting_depth(data)
    if depth is None:
        raise ConfigError(
            f"config file {path} refers to itself (a YAML alias inside its own anchor); write the values out"
        )
    if depth > MAX_NESTING:
        raise ConfigError(too_deep(f"config file {path}"))
    size = expanded_size(data)
    if size is None:  # pragma: no cover - nesting_depth has refused it
        raise ConfigError(
            f"config file {path} refers to itself (a YAML alias inside its own anchor); write the values out"
        )
    if size > MAX_YAML_NODES:
        raise ConfigError(
            f"config file {path} expands to more than {MAX_YAML_NODES:,} values (YAML aliases repeat "
            "anchored parts); a config is never that large: write it without nested aliases"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data
