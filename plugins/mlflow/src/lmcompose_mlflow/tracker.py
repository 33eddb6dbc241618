"""Log lmcompose rows to MLflow: a run folder is an MLflow run, each cell a nested run.

Metrics of a row are logged at ``step = position`` (0 = the base model, then one per step),
so MLflow's charts show each criterion along the sequence. The parent run holds the run
folder's settings as parameters and config.yaml as an artifact; a cell's run holds its
order, strength, dataset and replicate as parameters. Runs are found again by their tags
(``lmcompose.run_id``, ``lmcompose.cell``), so a resumed study logs into the same runs.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

ENV_URI = "LMCOMPOSE_MLFLOW"
ENV_EXPERIMENT = "LMCOMPOSE_MLFLOW_EXPERIMENT"
CELL_PARAMS = (
    "order",
    "strength",
    "vary",
    "dataset",
    "entry",
    "editor",
    "compressor",
    "family",
    "replicate",
    "policy",
    "model",
)
STATUS = {"finished": "FINISHED", "incomplete": "KILLED", "failed": "FAILED"}
MAX_PARAM = 500  # MLflow's limit on a parameter's value

__all__ = ["MLflowTracker", "tracking_uri"]


class RunInfo(Protocol):
    """What the ``row_written`` and ``run_closed`` hooks tell a tracker about the run folder
    (a ``lmcompose.engine.RunInfo``)."""

    @property
    def folder(self) -> Path: ...

    @property
    def run_id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def config(self) -> Mapping[str, object]: ...


def tracking_uri() -> str | None:
    """The store named by ``LMCOMPOSE_MLFLOW`` (``1``: MLflow's own default), or None (off)."""
    raw = os.environ.get(ENV_URI, "").strip()
    if not raw or raw.lower() in {"0", "false", "no", "off"}:
        return None
    if raw.lower() in {"1", "true", "yes", "on"}:
        return os.environ.get("MLFLOW_TRACKING_URI") or "file:./mlruns"
    return raw


def _metrics(row: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in row.items():
        if k in {"position", "last_position", "replicate", "timestamp", "strength", "strength_normalized"}:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            continue
        out[k] = float(v)
    return out


def _param(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= MAX_PARAM else text[: MAX_PARAM - 3] + "..."


class MLflowTracker:
    """One tracking store; remembers the MLflow runs it opened in this process."""

    def __init__(self, uri: str):
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses the file store otherwise
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment = os.environ.get(ENV_EXPERIMENT, "lmcompose")
        self._experiment_id: str | None = None
        self._parents: dict[str, str] = {}
        self._cells: dict[tuple[str, str], str] = {}
        self._steps: dict[str, set[int]] = {}

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            self._experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        return self._experiment_id

    def _find(self, tags: Mapping[str, str]) -> str | None:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id()], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def parent(self, run: RunInfo) -> str:
        """The MLflow run of a run folder (created with its settings the first time)."""
        if run.run_id in self._parents:
            return self._parents[run.run_id]
        tags = {"lmcompose.run_id": run.run_id}
        found = self._find(tags)
        if found is None:
            name = run.config.get("name") if isinstance(run.config.get("name"), str) else run.folder.name
            created = self.client.create_run(
                self.experiment_id(),
                run_name=f"{run.kind}: {name}",
                tags={**tags, "lmcompose.kind": run.kind, "lmcompose.folder": str(run.folder)},
            )
            found = created.info.run_id
            from mlflow.entities import Param

            params = [
                Param(str(k), _param(v))
                for k, v in sorted(run.config.items())
                if k not in {"study", "counts", "inputs", "versions"} and v is not None
            ][:100]
            if params:
                self.client.log_batch(found, params=params)
            self.client.log_text(found, json.dumps(run.config, indent=1, default=str), "config.json")
            self._parents[run.run_id] = found
        else:
            self.client.update_run(found, status="RUNNING")
            self._parents[run.run_id] = found
            self._backfill(run)
        return found

    def _backfill(self, run: RunInfo) -> None:
        """A resumed run: log the rows that reached results.jsonl but not MLflow (a kill
        between the two), so every cell's history is whole."""
        from lmcompose.results import RESULTS_FILE, read_rows

        for row in read_rows(run.folder / RESULTS_FILE):
            if row.get("run_id") == run.run_id:
                self.row(row, run)

    def _logged_steps(self, run_id: str, row: Mapping[str, Any]) -> set[int]:
        """The positions a cell's MLflow run already has (read once per cell and process)."""
        if run_id not in self._steps:
            keys = list(_metrics(row))
            history = self.client.get_metric_history(run_id, keys[0]) if keys else []
            self._steps[run_id] = {m.step for m in history}
        return self._steps[run_id]

    def cell(self, row: Mapping[str, Any], run: RunInfo) -> str:
        cell = str(row.get("cell") or f"run|r{row.get('replicate', 0)}")
        key = (run.run_id, cell)
        if key in self._cells:
            return self._cells[key]
        parent = self.parent(run)
        tags = {"lmcompose.run_id": run.run_id, "lmcompose.cell": cell}
        found = self._find(tags)
        if found is None:
            from mlflow.entities import Param

            created = self.client.create_run(
                self.experiment_id(), run_name=cell, tags={**tags, "mlflow.parentRunId": parent}
            )
            found = created.info.run_id
            params = [Param(k, _param(row[k])) for k in CELL_PARAMS if row.get(k) is not None]
            self.client.log_batch(found, params=params)
        self._cells[key] = found
        return found

    def row(self, row: Mapping[str, Any], run: RunInfo) -> None:
        from mlflow.entities import Metric

        run_id = self.cell(row, run)
        step = int(row.get("position", 0))
        logged = self._logged_steps(run_id, row)
        if step in logged:
            return
        stamp = int(float(row.get("timestamp") or time.time()) * 1000)
        metrics = [Metric(k, v, stamp, step) for k, v in _metrics(row).items()]
        for start in range(0, len(metrics), 900):  # log_batch takes at most 1000 metrics
            self.client.log_batch(run_id, metrics=metrics[start : start + 900])
        logged.add(step)
        last = row.get("last_position")
        if last is not None and step == last:
            self.client.set_terminated(run_id, "FINISHED")

    def close(self, run: RunInfo, status: str) -> None:
        parent = self._parents.get(run.run_id)
        if parent is None:
            return
        for (rid, _cell), child in list(self._cells.items()):
            if rid == run.run_id and self.client.get_run(child).info.status == "RUNNING":
                self.client.set_terminated(child, STATUS.get(status, "FINISHED"))
        self.client.set_terminated(parent, STATUS.get(status, "FINISHED"))
