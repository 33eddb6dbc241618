"""The run folder: the single writer of ``config.yaml``, ``results.jsonl`` and ``per_edit.jsonl``.

Every command that writes results (run, sweep, study, merge) goes through a
:class:`RunFolder`, which

* takes an exclusive lock on the folder for as long as it is open (a second process is
  refused, naming the first one's pid; the lock dies with its process, so a killed run
  leaves no stale lock);
* refuses a folder that holds another run: a ``config.yaml`` or rows with another run id,
  naming the settings that differ;
* records the inputs a run's numbers depend on (model fingerprint, edit requests, data
  sources, versions) and refuses a resume whose inputs changed, naming them;
* records what else changes a number (``numerics:`` — thread count, deterministic mode,
  torch and its BLAS, the metrics' batch sizes; :mod:`lmcompose.engine.numerics`) and
  refuses a resume that would compute with other values, naming each and the fix;
* knows which rows are written (:meth:`done`), so a rerun resumes exactly;
* appends rows one whole line at a time and tells plugins about each one (the
  ``row_written`` hook); a row's per-edit scores go to ``per_edit.jsonl`` just before it,
  so a kill between the two leaves at worst a per-edit line whose row a resume writes
  again (readers keep the last line of a key, :func:`lmcompose.results.read_per_edit`);
* keeps the base model's reference measurements (:class:`lmcompose.api.References`: the
  locality prompts' answer-position argmaxes) in ``references/<key>.json``, one file per
  (kind, content digest, base model fingerprint), written atomically: computed once per
  edit batch, they are read back by a resumed run and handed to every Ray task of a study;
* never writes through a symbolic link: a link where the run writes a file or folder is
  refused on :meth:`~RunFolder.open`, naming it, and the lock, rows, per-edit scores and
  references are opened with O_NOFOLLOW (anyone who may write into a shared runs/ folder
  could otherwise make a run overwrite or append to a file its user owns).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from lmcompose.api import References
from lmcompose.engine.numerics import check_numerics
from lmcompose.errors import LMComposeError, UsageError, describe_value
from lmcompose.results import (
    CONFIG_FILE,
    PER_EDIT_FILE,
    RESULTS_FILE,
    append_row,
    open_no_link,
    read_rows,
    read_yaml,
    refuse_link,
    write_text_atomic,
    write_yaml_atomic,
)

if TYPE_CHECKING:
    from lmcompose.api import Context, EditRecord
    from lmcompose.engine.plan import Group
    from lmcompose.models.handle import LM

LOCK_FILE = ".lock"
REFERENCES_FOLDER = "references"
#: every file and folder a run, sweep, study, merge or report writes at the top of its folder
#: (the lock, the rows and per-edit scores, the config, the reports, the plots, saved models,
#: disk snapshots)
WRITTEN_ENTRIES = (
    LOCK_FILE,
    CONFIG_FILE,
    RESULTS_FILE,
    PER_EDIT_FILE,
    "report.md",
    "rows.csv",
    "plots",
    "models",
    ".snapshots",
    REFERENCES_FOLDER,
)
NUMERICS_KEY = "numerics"
# config.yaml keys that describe this invocation, not the run: never a reason to refuse
VOLATILE_KEYS = frozenset(
    {
        "created",
        "notes",
        "versions",
        "model_fingerprint",
        "model_source",
        "out",
        "inputs",
        "device",
        "data_dir",
        "snapshots",
        "executor",
        "threads",
        "numerics",
        "shard",
        "merged_from",
        "study",
        "counts",
        "cells",
    }
)

# config.yaml keys a command writes from the settings (the steps in order, the edit batches):
# a change shows as the setting it comes from, so these are never compared with a settings mapping
DERIVED_KEYS = frozenset({"order", "steps_resolved", "edit_batches"})

__all__ = [
    "FolderReferences",
    "RunFolder",
    "RunInfo",
    "RunInputs",
    "describe_changes",
    "edit_digests",
    "edits_digest",
    "row_cell_id",
    "run_inputs",
    "versions",
]


@dataclass
class RunInfo:
    """What the ``row_written`` and ``run_closed`` hooks are told about the run folder."""

    folder: Path
    run_id: str
    kind: str
    config: dict[str, object] = field(default_factory=dict)


def versions() -> dict[str, str]:
    """Python, torch, transformers, pluggy, lmcompose and every loaded plugin's version."""
    from lmcompose.plugins import plugin_infos

    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "pluggy", "lmcompose"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    for info in plugin_infos():
        if not info.builtin and info.error is None:
            out[info.distribution] = info.version
    return out


#: the versions every run depends on, whichever plugins it uses
CORE_VERSIONS = frozenset({"python", "torch", "transformers", "pluggy", "lmcompose"})


def used_versions(
    recorded: Mapping[str, str], steps: Iterable[str], metrics: Iterable[str], datasets: Iterable[str | None]
) -> dict[str, str]:
    """``recorded`` (:func:`versions`) cut to the core and the distributions that provide the
    run's steps, metrics and edit datasets: a plugin the run never calls changes none of its
    numbers, so its version is neither recorded nor checked on resume (installing or
    upgrading an unrelated plugin does not refuse a running study)."""
    from lmcompose.plugins import get_datasets, get_interventions, get_metrics

    used: set[str] = set()
    for registry, names in ((get_interventions(), steps), (get_metrics(), metrics), (get_datasets(), datasets)):
        for name in set(names):
            if name is None:
                continue
            try:
                used.add(registry.entry(name).distribution)
            except LMComposeError:  # not registered: its build fails elsewhere, with its own message
                continue
    return {k: v for k, v in recorded.items() if k in CORE_VERSIONS or k in used}


def edits_digest(batch: Sequence[EditRecord]) -> str:
    """A checksum of a batch of edit requests (every field, so a changed record is seen)."""
    text = json.dumps([e.to_dict() for e in batch], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def edit_digests(batches: Mapping[Group, Sequence[EditRecord]]) -> dict[str, str]:
    """Each group's (dataset, replicate) batch of edit requests by its :func:`edits_digest`,
    labelled ``r0`` (a run or sweep) or ``counterfact/r0`` (a study), in order."""

    def label(group: Group) -> str:
        return ("" if group[0] is None else f"{group[0]}/") + f"r{group[1]}"

    ordered = sorted(batches.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
    return {label(g): edits_digest(b) for g, b in ordered}


class _RunInputKeys(TypedDict):
    model_fingerprint: str
    edits: dict[str, str]
    corpora: dict[str, str]
    versions: dict[str, str]


class _Revision(TypedDict, total=False):
    model_revision: str | None


class _Controls(TypedDict, total=False):
    unedited: dict[str, str]


class RunInputs(_RunInputKeys, _Revision, _Controls):
    """``inputs:`` of config.yaml (:func:`run_inputs`): what a run's numbers depend on beyond
    its settings; ``model_revision`` for a hub model, ``unedited`` when the run has control records."""


def run_inputs(
    lm: LM,
    edits: Mapping[Group, Sequence[EditRecord]],
    ctx: Context | None = None,
    unedited: Mapping[Group, Sequence[EditRecord]] | None = None,
) -> RunInputs:
    """What a run's numbers depend on beyond its settings: the base model's weights, the edit
    requests of every group (dataset, replicate) and its control records (``unedited``, when
    the run has them), the text corpora and the software. A resume is refused when any of
    them changed (:meth:`RunFolder.write_config` compares them)."""
    from lmcompose.data import corpus_identity

    revision: _Revision = {"model_revision": lm.revision} if getattr(lm, "revision", None) else {}
    controls: _Controls = {"unedited": edit_digests(unedited)} if unedited else {}
    return {
        **revision,
        "model_fingerprint": lm.fingerprint(),
        "edits": edit_digests(edits),
        **controls,
        "corpora": corpus_identity(ctx),
        "versions": versions(),
    }


class FolderReferences(References):
    """:class:`lmcompose.api.References` kept in a run folder's ``references/``: each one read
    from its file when first asked for, each new one written atomically to ``<key>.json``
    (never through a link). A file that cannot be read, or that holds another reference than
    its name says, counts as absent (the reference is computed again and the file replaced)."""

    def __init__(self, folder: Path, model: str | None):
        super().__init__(model)
        self.folder = folder

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def _read(self, key: str) -> dict[str, object] | None:
        return _read_reference(self._path(key))

    def _write(self, record: dict[str, object]) -> None:
        refuse_link(self.folder)
        write_text_atomic(self._path(str(record["key"])), json.dumps(record, separators=(",", ":")) + "\n")


def _read_reference(path: Path) -> dict[str, object] | None:
    """A stored reference (opened with O_NOFOLLOW), or None if absent, unreadable or not one."""
    try:
        fd = open_no_link(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.EACCES):
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        try:
            data = json.loads(f.read())
        except ValueError:
            return None
    ok = isinstance(data, dict) and data.get("key") == path.stem and "value" in data
    return data if ok else None


def row_cell_id(row: Mapping[str, object]) -> str:
    """The cell a row belongs to: its ``cell`` (sweeps, studies), or the replicate of a run."""
    cell = row.get("cell")
    return str(cell) if cell is not None else f"run|r{row.get('replicate', 0)}"


SHOWN = 80  # characters of a changed value shown in a "what changed" line


def _json(value: object) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _shown_pair(old: object, new: object) -> tuple[str, str]:
    """The two values as JSON, each cut to about :data:`SHOWN` characters around the first
    place they differ (two long lists that differ near the end show their ends, never two
    identical beginnings)."""
    a, b = _json(old), _json(new)
    if len(a) <= SHOWN and len(b) <= SHOWN:
        return a, b
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    start = max(0, same - SHOWN // 3)

    def window(text: str) -> str:
        piece = text[start : start + SHOWN]
        return ("..." if start else "") + piece + ("..." if start + SHOWN < len(text) else "")

    return window(a), window(b)


def _describe_change(old: object, new: object, key: str, out: list[str]) -> None:
    """Append ``key: old → new`` for each place the two values differ: mappings by their
    dotted keys, lists of the same length by their indices (``compressors[0].vary``)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in sorted(set(old) | set(new), key=str):
            _describe_change(old.get(k), new.get(k), f"{key}.{k}", out)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _describe_change(a, b, f"{key}[{i}]", out)
    elif _json(old) != _json(new):
        shown_old, shown_new = _shown_pair(old, new)
        out.append(f"{key}: {shown_old} → {shown_new}")


def comparable_versions(inputs: Mapping[str, object], other: Mapping[str, object]) -> dict[str, object]:
    """``inputs`` with its ``versions`` cut to the distributions ``other`` records too: a
    plugin installed (or removed) since the run started changes no number of it — a plugin
    the run uses cannot go missing without its steps failing to build — so only a version
    that changed refuses a resume."""
    mine, theirs = inputs.get("versions"), other.get("versions")
    if not isinstance(mine, Mapping) or not isinstance(theirs, Mapping):
        return dict(inputs)
    return {**inputs, "versions": {k: v for k, v in mine.items() if k in theirs}}


def describe_changes(
    old: Mapping[str, object], new: Mapping[str, object], ignore: frozenset[str] = VOLATILE_KEYS, prefix: str = ""
) -> list[str]:
    """``key: old → new`` for every setting that differs between two resolved configs
    (nested mappings by their dotted key, ``corpora.test: ... → ...``, lists of the same
    length by index, ``compressors[0].vary: ... → ...``; a long value is shown around the
    place where it differs)."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        if key in ignore or key == "run_id":
            continue
        _describe_change(old.get(key), new.get(key), f"{prefix}{key}", out)
    return out


class RunFolder:
    """One run folder, open for writing by this process (use as a context manager)."""

    def __init__(
        self,
        path: str | Path,
        run_id: str,
        kind: str,
        config: Mapping[str, object] | None = None,
        numerics: Mapping[str, object] | None = None,
    ):
        self.path = Path(path)
        self.run_id = run_id
        self.kind = kind
        self.config = dict(config or {})
        #: what this process would compute with (checked on :meth:`open` when known then)
        self.numerics = dict(numerics) if numerics is not None else None
        self._lock_fd: int | None = None
        self._active = False  # set once config.yaml is written or checked: the run_closed hook is owed
        self.status: str | None = None  # what run_closed reports; default finished (failed on an exception)
        self.results = self.path / RESULTS_FILE
        self.per_edit = self.path / PER_EDIT_FILE
        self.config_path = self.path / CONFIG_FILE

    # -- opening ---------------------------------------------------------------------
    def __enter__(self) -> RunFolder:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if self._active:
                from lmcompose.plugins import notify_run_closed

                self._active = False
                notify_run_closed(self.info, "failed" if exc_type is not None else (self.status or "finished"))
        finally:
            self.close()

    def open(self) -> RunFolder:
        """Create the folder, lock it, and check that it holds no other run."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create the run folder {self.path}: {exc.strerror or exc}; choose a writable --out"
            ) from None
        if not os.access(self.path, os.W_OK):
            raise UsageError(f"the run folder {self.path} is not writable; choose a writable --out")
        for name in WRITTEN_ENTRIES:
            refuse_link(self.path / name)
        self._lock()
        try:
            self._check_other_run()
        except BaseException:
            self.close()
            raise
        return self

    def check(self) -> None:
        """What :meth:`open` would refuse (a folder that cannot be created or written, one in
        use by another process, one holding another run or other numerics), checked without
        creating or changing anything. A command calls it before it loads a model or data,
        and opens the folder once everything that can refuse has been checked, so a refusal
        leaves no folder behind."""
        if not self.path.exists():
            parent = next((p for p in self.path.absolute().parents if p.exists()), None)
            if parent is not None and not parent.is_dir():
                raise self._cannot_create(os.strerror(errno.ENOTDIR))
            if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
                raise self._cannot_create(os.strerror(errno.EACCES))
            return
        if not self.path.is_dir():
            raise self._cannot_create(os.strerror(errno.EEXIST))
        if not os.access(self.path, os.W_OK):
            raise UsageError(f"the run folder {self.path} is not writable; choose a writable --out")
        for name in WRITTEN_ENTRIES:
            refuse_link(self.path / name)  # before config.yaml is read through a link
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            fd = None  # no lock file (or not one to read): open() takes the lock or says why not
        if fd is not None:
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # taken by another process's exclusive lock
            except OSError:
                raise self._in_use() from None
            finally:
                os.close(fd)  # closing releases the shared lock
        self._check_other_run()

    def _cannot_create(self, why: str) -> UsageError:
        return UsageError(f"cannot create the run folder {self.path}: {why}; choose a writable --out")

    def _in_use(self) -> UsageError:
        try:
            holder = (self.path / LOCK_FILE).read_text().strip() or "?"
        except OSError:
            holder = "?"
        return UsageError(
            f"{self.path} is in use by another lmcompose process (pid {holder}); "
            "wait for it to finish, or choose another --out"
        )

    def _lock(self) -> None:
        import fcntl

        lock_path = self.path / LOCK_FILE
        fd = open_no_link(lock_path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            try:
                holder = lock_path.read_text().strip() or "?"
            except OSError:
                holder = "?"
            raise UsageError(
                f"{self.path} is in use by another lmcompose process (pid {holder}); "
                "wait for it to finish, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            import fcntl

            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_other_run(self) -> None:
        if self.config_path.exists():
            existing = read_yaml(self.config_path)
            other = existing.get("run_id")
            if other != self.run_id:
                changes = describe_changes(existing, {**self.config, "kind": self.kind}, VOLATILE_KEYS | DERIVED_KEYS)
                what = ("; what changed: " + "; ".join(changes)) if changes else ""
                raise UsageError(
                    f"{self.path} already holds another run (run_id {other}, this one is {self.run_id}){what}. "
                    "Choose another --out, or delete that folder"
                )
            check_numerics(existing.get(NUMERICS_KEY), self.numerics, str(self.path), self.run_id)
        others = sorted({str(r.get("run_id")) for r in read_rows(self.results) if r.get("run_id") != self.run_id})
        if others:
            raise UsageError(
                f"{self.results} holds rows of another run ({', '.join(others)}; this one is {self.run_id}). "
                "Choose another --out, or delete that folder"
            )

    # -- config and inputs -----------------------------------------------------------
    def write_config(
        self, inputs: Mapping[str, object] | None = None, numerics: Mapping[str, object] | None = None, **extra: object
    ) -> None:
        """Write config.yaml (the resolved settings, ``numerics``, ``inputs`` and ``extra``), or,
        when the folder already has one, check that the numerics this run computes with and the
        inputs it depends on are the recorded ones (a value not recorded is accepted).
        ``numerics``: default the ones given to the constructor."""
        inputs = dict(inputs or {})
        numerics = dict(numerics) if numerics is not None else self.numerics
        self._active = True
        if self.config_path.exists():
            existing = read_yaml(self.config_path)
            self.config = {k: v for k, v in existing.items() if k != "inputs"}
            check_numerics(existing.get(NUMERICS_KEY), numerics, str(self.path), self.run_id)
            recorded = existing.get("inputs")
            if recorded is not None:
                if not isinstance(recorded, Mapping):
                    raise UsageError(
                        f"{self.config_path}: inputs is {describe_value(recorded)}, not the mapping a run records "
                        "(edited by hand?); restore it, or start a new run in another --out"
                    )
                changed = describe_changes(
                    comparable_versions(recorded, inputs), comparable_versions(inputs, recorded), ignore=frozenset()
                )
                if changed:
                    raise UsageError(
                        f"{self.path}: the inputs of run {self.run_id} changed since it started, so its rows "
                        f"would mix data: {'; '.join(changed)}. Restore them, or start a new run in another --out"
                    )
            return
        data: dict[str, object] = {**self.config, "run_id": self.run_id, "kind": self.kind, **extra}
        if numerics:
            data[NUMERICS_KEY] = numerics
        if inputs:
            data["inputs"] = inputs
        data.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_yaml_atomic(self.config_path, data)
        self.config = {k: v for k, v in data.items() if k != "inputs"}

    # -- base-model references ---------------------------------------------------------
    def references(self, model: str | None) -> FolderReferences:
        """The base-model references of this run (``model``: the base model's fingerprint),
        read from and written to ``references/``."""
        return FolderReferences(self.path / REFERENCES_FOLDER, model)

    def reference_records(self) -> dict[str, dict[str, object]]:
        """Every reference stored here, by key (what a Ray driver hands its tasks)."""
        folder = self.path / REFERENCES_FOLDER
        refuse_link(folder)
        if not folder.is_dir():
            return {}
        out = {}
        for path in sorted(folder.glob("*.json")):
            record = _read_reference(path)
            if record is not None:
                out[str(record["key"])] = record
        return out

    def write_references(self, records: Mapping[str, Mapping[str, object]]) -> int:
        """Store references computed elsewhere (by a Ray task), each under its own key;
        returns how many were new here."""
        store = self.references(None)
        held = self.reference_records()
        new = 0
        for key, record in records.items():
            model = record.get("model")
            named = References(model if isinstance(model, str) else None).key(
                str(record.get("kind")), str(record.get("content"))
            )
            if key != record.get("key") or key != named:
                raise ValueError(f"reference record {key!r} is not what its key names (kind, content, model)")
            if key not in held:
                store._write(dict(record))
                new += 1
        return new

    # -- rows ------------------------------------------------------------------------
    def rows(self) -> list[dict[str, object]]:
        return [r for r in read_rows(self.results) if r.get("run_id") == self.run_id]

    def done(self) -> set[tuple[str, int]]:
        """(cell id, position) of every row of this run already written."""
        return {(row_cell_id(r), p) for r in self.rows() if isinstance(p := r.get("position"), int)}

    @property
    def info(self) -> RunInfo:
        return RunInfo(self.path, self.run_id, self.kind, self.config)

    def append(self, row: Mapping[str, object], per_edit: Mapping[str, object] | None = None) -> None:
        """Append one row (a single write, fsynced) and call the ``row_written`` hook; its
        per-edit line first, when given (:meth:`append_per_edit`)."""
        from lmcompose.plugins import notify_row_written

        if row.get("run_id") != self.run_id:
            raise ValueError(f"row of run {row.get('run_id')!r} written to the folder of run {self.run_id!r}")
        if per_edit is not None:
            if (per_edit.get("cell"), per_edit.get("position")) != (row_cell_id(row), row.get("position")):
                raise ValueError(
                    f"per-edit line of cell {per_edit.get('cell')!r} position {per_edit.get('position')!r} given "
                    f"with the row of cell {row_cell_id(row)!r} position {row.get('position')!r}"
                )
            self.append_per_edit(per_edit)
        append_row(self.results, row)
        notify_row_written(row, self.info)

    def append_per_edit(self, line: Mapping[str, object]) -> None:
        """Append one line of per-edit scores to per_edit.jsonl (a single write, fsynced):
        keyed as its row is (run id, cell, position), with the dataset, replicate, the case
        id of each edit (edit i is ``(i, case_ids[i])``, so duplicate or missing case ids
        never collide) and ``scores`` (key -> one value per edit)."""
        if line.get("run_id") != self.run_id:
            raise ValueError(
                f"per-edit line of run {line.get('run_id')!r} written to the folder of run {self.run_id!r}"
            )
        append_row(self.per_edit, dict(line))
