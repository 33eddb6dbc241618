"""Saving model states: the final model of a run (``--save-model DIR``) or of chosen cells of a
sweep or study (``--save-cells PATTERN``), as standard Hugging Face folders.

Each folder holds what plain ``AutoModelForCausalLM.from_pretrained`` reads (config.json,
safetensors weights, tokenizer files) — nothing in it needs lmcompose — plus two sidecars that
only lmcompose reads: the compression state (``lmcompose_compression.*``: pruning masks and
quantization grids, so ``project()`` works after reloading with ``lmcompose.load_model``) and
``lmcompose_model.json`` (which run and cell made it, and its steps).

A folder is written under a temporary name beside its target and renamed into place when
complete, so a folder that exists is whole; a killed run leaves only a ``.tmp-`` folder, which
the next run removes. The plan marks the states to save as needed
(:meth:`lmcompose.engine.plan.Plan.mark_needed`'s ``force``), so resuming a finished sweep with a
new ``--save-cells`` recomputes just those models, writing no row twice.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lmcompose.errors import ConfigError, UsageError
from lmcompose.results import follow_umask, refuse_link

if TYPE_CHECKING:  # pragma: no cover
    from lmcompose.engine.plan import Cell, Plan
    from lmcompose.models.handle import LM

PROVENANCE_FILE = "lmcompose_model.json"
MODELS_FOLDER = "models"

__all__ = [
    "MODELS_FOLDER",
    "PROVENANCE_FILE",
    "SaveTargets",
    "atomic_folder",
    "cell_folder_name",
    "check_apart_from_run",
    "check_save_folder",
    "match_cells",
    "models_folder",
    "run_files_in",
    "write_model_folder",
]


def check_save_folder(path: str | Path, overwrite: bool, flag: str = "--save-model") -> Path:
    """``path`` if a model may be saved there: absent, an empty folder, or (``overwrite``) a
    folder to replace that holds no run's results. Anything else is one UsageError naming the
    fix; checked before a model is loaded, so a refusal costs nothing (callers that write a run
    folder check the two lie apart with :func:`check_apart_from_run`)."""
    p = Path(path).expanduser()
    refuse_link(p)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a folder; name a new folder")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise UsageError(
            f"{flag} {path}: the folder exists and is not empty; name a new folder, or pass --overwrite to replace it"
        )
    if p.is_dir() and overwrite:
        found = run_files_in(p)
        if found is not None:
            raise UsageError(
                f"{flag} {path}: holds the results of a run ({found}); --overwrite replaces a saved model, "
                "never a run folder: name another folder"
            )
    parent = p.parent
    if parent.exists() and not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: cannot write into {parent}; name a folder you may write to")
    return p


def check_apart_from_run(
    target: str | Path,
    folder: str | Path,
    flag: str,
    label: str,
    holds: str = "config.yaml and results.jsonl",
    *,
    inside_ok: bool = False,
) -> None:
    """Refuse a folder to save into that is ``folder`` (the run written, or the folder
    exported: ``label`` names it in the message), or holds it (replacing either would delete
    its ``holds``), or, unless ``inside_ok``, lies inside it. Paths are compared resolved, so a
    symbolic link or ``..`` does not hide the overlap."""
    t, f = Path(target).expanduser().resolve(), Path(folder).expanduser().resolve()
    if t == f:
        raise UsageError(
            f"{flag} {target} is {label}: saving there would replace its {holds}; name a folder outside {folder}"
        )
    if t in f.parents:
        raise UsageError(
            f"{flag} {target} holds {label}: saving there would delete its {holds}; name a folder outside {folder}"
        )
    if f in t.parents and not inside_ok:
        raise UsageError(
            f"{flag} {target} lies inside {label}, which holds only the run's own files; name a folder outside {folder}"
        )


def models_folder(run_folder: str | Path) -> Path:
    """``OUT/models``, where ``--save-cells`` writes, refused when it resolves to the run folder
    or a folder above it (a symbolic link): a cell's model would replace the run's files."""
    root = Path(run_folder) / MODELS_FOLDER
    label = f"the run folder {run_folder} (--out)"
    check_apart_from_run(root, run_folder, "--save-cells' folder", label, inside_ok=True)
    return root


def run_files_in(folder: Path) -> Path | None:
    """The first file under ``folder`` that marks a run folder (its results.jsonl, or its
    config.yaml beside the lock file), or None."""
    from lmcompose.engine.run_folder import LOCK_FILE
    from lmcompose.results import CONFIG_FILE, RESULTS_FILE

    for root, _dirs, files in os.walk(folder):
        if RESULTS_FILE in files:
            return Path(root) / RESULTS_FILE
        if CONFIG_FILE in files and LOCK_FILE in files:
            return Path(root) / CONFIG_FILE
    return None


@contextmanager
def atomic_folder(target: Path, what: str = "the model") -> Iterator[Path]:
    """A temporary folder beside ``target`` to write into; when the block ends without an
    error it replaces ``target`` (removed first if there), else it is removed. A full disk or
    a folder that cannot be written is one UsageError; nothing half-written is left. A
    ``target`` that holds a run's results is never removed (the callers refuse it before any
    work; this is the last guard). What it holds gets the modes plain open() and mkdir() give
    (the umask's), not mkdtemp's 0700 or safetensors' 0600; a link at ``target`` is refused."""
    refuse_link(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    try:
        yield tmp
        follow_umask(tmp)
        if target.exists():
            found = run_files_in(target) if target.is_dir() else None
            if found is not None:
                raise UsageError(
                    f"cannot write {what} to {target}: it holds the results of a run ({found}), which are "
                    "never replaced; name another folder"
                )
            shutil.rmtree(target)
        tmp.rename(target)
    except OSError as exc:
        raise UsageError(
            f"cannot write {what} to {target}: {exc.strerror or exc}. Free disk space there or "
            "name another folder; rerun the same command to resume"
        ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_model_folder(lm: LM, target: Path, provenance: Mapping[str, object]) -> Path:
    """Write ``lm`` (weights, tokenizer, compression sidecar) and ``provenance`` to ``target``
    (replacing what is there): into a temporary folder beside it, renamed into place when
    complete."""
    with atomic_folder(target) as tmp:
        lm.save(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(dict(provenance), indent=1, default=str) + "\n", encoding="utf-8")
    return target


def cell_folder_name(cell_id: str) -> str:
    """A file-system name for a cell id: ``counterfact|wanda|memit>wanda|0.5|r0`` becomes
    ``counterfact__wanda__memit-wanda__0.5__r0``."""
    name = cell_id.replace("|", "__").replace(">", "-")
    return re.sub(r"[^\w.=+:-]+", "_", name).replace(":", "_") or "cell"


def match_cells(cells: Iterable[Cell], pattern: str, flag: str = "--save-cells") -> list[Cell]:
    """The cells whose id matches ``pattern``: ``all`` (or ``*``), or comma-separated globs over
    cell ids (``memit>*`` for the final models of one order). A pattern that matches no cell is
    a ConfigError listing some ids."""
    cells = list(cells)
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError(f"{flag}: give a pattern: all, or globs over cell ids such as 'memit>*'")
    globs = [g.strip() for g in pattern.split(",") if g.strip()]
    if any(g in {"all", "*"} for g in globs):
        return cells
    hits = [c for c in cells if any(fnmatch.fnmatchcase(c.id, g) for g in globs)]
    if not hits:
        some = ", ".join(repr(c.id) for c in cells[:4])
        raise ConfigError(
            f"{flag} {pattern!r} matches none of the {len(cells)} cells (ids such as {some}); "
            "use all, or a glob over those ids"
        )
    return hits


@dataclass
class SaveTargets:
    """The model states to save: node id -> the folders it goes to (one per cell whose final
    model it is; a state shared by several chosen cells is written once per cell folder)."""

    by_node: dict[str, list[Path]] = field(default_factory=dict)
    provenance: dict[str, dict[str, object]] = field(default_factory=dict)  # folder -> its lmcompose_model.json
    overwrite: bool = False

    @classmethod
    def for_cells(
        cls,
        plan: Plan,
        cells: Iterable[Cell],
        folder_of: Mapping[str, Path],
        *,
        overwrite: bool = False,
        extra: Mapping[str, object] | None = None,
    ) -> SaveTargets:
        """Each cell's final model (the node after its last action) to ``folder_of[cell.id]``."""
        targets = cls(overwrite=overwrite)
        finals = _final_nodes(plan)
        for cell in cells:
            node_id = finals[cell.id]
            path = Path(folder_of[cell.id])
            targets.by_node.setdefault(node_id, []).append(path)
            targets.provenance[str(path)] = {
                "run_id": plan.run_id,
                "cell": cell.id,
                "order": list(cell.names),
                "policy": plan.policy,
                "steps": [{"name": a.name, "fields": dict(a.overrides), "recompress": a.again} for a in cell.actions],
                **cell.labels,
                **(extra or {}),
            }
        return targets

    @classmethod
    def for_study(
        cls,
        plan: Plan,
        pattern: str,
        root: Path,
        extra: Mapping[str, object] | None = None,
        only: set[str] | None = None,
    ) -> SaveTargets:
        """The cells matching ``pattern`` (and in ``only``, a shard's cells, when given), each in
        ``root/<cell folder name>`` (``root``: the run folder's :func:`models_folder`)."""
        models_folder(root.parent)
        chosen = [c for c in match_cells(plan.cells, pattern) if only is None or c.id in only]
        used: set[str] = set()
        folder_of = {}
        for c in chosen:
            name = cell_folder_name(c.id)
            if name in used:  # two ids that only differ in characters the file system cannot hold
                import hashlib

                name += "-" + hashlib.sha1(c.id.encode()).hexdigest()[:6]
            used.add(name)
            folder_of[c.id] = root / name
        return cls.for_cells(plan, chosen, folder_of, extra=extra)

    def missing(self) -> set[str]:
        """The node ids with a folder still to write (a folder with its provenance file is
        complete; with ``overwrite`` every folder is written again)."""
        return {n for n, paths in self.by_node.items() if self.overwrite or any(not _complete(p) for p in paths)}

    def clean_stale(self) -> None:
        """Remove the temporary folders a killed writer left beside the targets."""
        for parent in {p.parent for paths in self.by_node.values() for p in paths}:
            if parent.is_dir():
                for stale in parent.glob(".tmp-*"):
                    shutil.rmtree(stale, ignore_errors=True)

    def save(self, node_id: str, lm: LM) -> list[Path]:
        """Write ``lm`` to every folder of ``node_id`` not written yet; return the folders written."""
        written = []
        for path in self.by_node.get(node_id, []):
            if _complete(path) and not self.overwrite:
                continue
            write_model_folder(lm, path, self.provenance.get(str(path), {}))
            written.append(path)
        return written


def _complete(path: Path) -> bool:
    """A saved folder is complete once it holds its provenance file (written last, renamed in)."""
    return (path / PROVENANCE_FILE).is_file()


def _final_nodes(plan: Plan) -> dict[str, str]:
    """cell id -> the id of the node its last action reaches."""
    out: dict[str, str] = {}
    for node in plan.root.walk():
        for cell in node.cells:
            if node.depth == len(cell.actions):
                out[cell.id] = node.id
    return out
