"""Hook specifications: the whole plugin interface of lmcompose.

A plugin is a module (or object) with functions marked ``@lmcompose.hookimpl`` whose names
are the hooks below, exposed through an entry point in the group ``lmcompose``::

    [project.entry-points.lmcompose]
    myplugin = "lmcompose_myplugin.plugin"

Each ``register_*`` hook receives a registrar callable. Call it once per thing the plugin
provides; never keep a reference to it. Its signature is::

    register(target, name=None, summary=None, **extra) -> Entry

``target`` is the class/object itself, or a lazy ``"module:attr"`` string (then ``name`` is
required) that is imported only when the thing is used — this keeps ``lmcompose plugins``
and ``--help`` from importing heavy libraries. Registering a name that another plugin
already registered keeps the first registration (built-ins load first); the later one is
skipped and its plugin reported as failed, naming both distributions (fatal with
``--strict``).

Hook implementations must not declare default values for their parameters (pluggy
ignores them, see pluggy#442), and must not import torch at module import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pluggy

from lmcompose.registry import Registrar

if TYPE_CHECKING:
    from lmcompose.engine.run_folder import RunInfo

PROJECT_NAME = "lmcompose"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: The registrar a ``register_*`` hook receives: ``register(target, name=None, summary=None,
#: **extra)`` (:class:`lmcompose.registry.Registrar`); what it returns is the new entry.
Register = Registrar[object]


@hookspec
def register_interventions(register: Register) -> None:
    """Register interventions (operators that change a model in place).

    :param register: registrar; ``register(InterventionClass)`` or
        ``register("pkg.module:InterventionClass", name="x", summary="...")``. The class
        must subclass :class:`lmcompose.Intervention` (``name``, ``kind``, ``Config``,
        ``strength``, ``apply``, optionally ``project``). ``kind`` is ``edit``, ``prune``,
        ``quantize``, ``unlearn`` or a kind of the plugin's own; ``edit`` and ``unlearn``
        steps train weights (the ``recompress`` policy re-runs a compressor before them).

    The host collects every registration into ``get_interventions()``, a
    ``Registry[type[Intervention]]``; the composition engine looks steps up there by name.
    The return value is ignored.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register metrics evaluated on the base model and after every step.

    :param register: registrar; ``register(MetricClass)`` or a lazy string with ``name=``.
        The class must subclass :class:`lmcompose.Metric` (``name``, ``keys``,
        ``higher_is_better``, ``compute(lm, ctx) -> dict[str, float]``).

    The host collects them into ``get_metrics()``; each key ``compute`` returns becomes a
    column of results.jsonl. The return value is ignored.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register edit datasets and text corpora.

    :param register: registrar; ``register(DatasetClass)`` or a lazy string with ``name=``.
        Edit datasets subclass :class:`lmcompose.EditDataset`
        (``load(source, limit, seed) -> list[EditRecord]``); text corpora subclass
        :class:`lmcompose.TextCorpus` (``load_text(split, source) -> str``).

    The host collects them into ``get_datasets()``; ``lmcompose run --dataset NAME`` and
    ``lmcompose.load_edits(NAME)`` look them up there. The return value is ignored.
    """


@hookspec
def register_architectures(register: Register) -> None:
    """Register architecture specs: where a model family keeps its decoder layers,
    attention and MLP projections, final norm, embeddings and LM head.

    :param register: registrar; ``register(ArchSpec(...))`` (an
        :class:`lmcompose.models.ArchSpec`, whose ``name`` is the registry key). The spec's
        ``model_types`` lists the ``config.model_type`` values it handles.

    The host collects them into ``get_architectures()``; ``load_model`` picks the spec whose
    ``model_types`` contains the model's ``config.model_type``. The return value is ignored.
    """


@hookspec
def register_commands(app: object) -> None:
    """Add commands to the ``lmcompose`` command line.

    :param app: the root ``typer.Typer`` application (typed loosely so that core does not
        depend on typer). Add commands with ``@app.command()`` or groups with
        ``app.add_typer(...)``.

    Called once when the CLI starts, after the built-in commands are defined. The return
    value is ignored.
    """


@hookspec
def row_written(row: Mapping[str, object], run: RunInfo) -> None:
    """Called after every row is appended to a run folder's ``results.jsonl`` (runs, sweeps,
    studies, merges): the hook a tracker (MLflow, W&B, a dashboard) builds on.

    :param row: the row as written (a JSON-ready dict: ``run_id``, ``cell``, ``position``,
        ``step``, one key per metric, ...). Do not modify it.
    :param run: a :class:`lmcompose.engine.RunInfo`: ``folder`` (Path), ``run_id``, ``kind``
        (``run``, ``sweep``, ``study``) and ``config`` (the resolved settings).

    The row is already on disk when the hook runs, so a tracker that fails loses nothing:
    the host reports the failure once (naming the plugin) and keeps writing. The return value
    is ignored.
    """


@hookspec
def run_closed(run: RunInfo, status: str) -> None:
    """Called once when a command stops writing a run folder.

    :param run: the :class:`lmcompose.engine.RunInfo` that ``row_written`` received.
    :param status: ``finished`` (every row of the run is written), ``incomplete`` (the
        command ended with rows missing, e.g. a failed task or a shard), or ``failed`` (it
        stopped on an error or an interrupt).

    Trackers close what they opened for the run here. The return value is ignored.
    """
