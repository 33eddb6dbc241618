"""The composition engine: parse a sequence of steps, apply them in order, and evaluate
every metric on the base model and after every step.

Constraint policies (``--keep-compressed``):

* ``none`` — steps run as written;
* ``project`` (default) — after every step, each earlier compressor's ``project()`` runs in
  order, so a pruned model stays pruned and a quantized model stays on its grid;
* ``recompress`` — the paper's code: no projection in between; at the end, every compressor
  that ran before an editor is run again (fresh calibration) and evaluated once more.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from lmcompose.api import Context, EditRecord, Intervention, Metric, Progress, config_to_dict
from lmcompose.errors import ConfigError, LMComposeError, UnknownNameError, UsageError
from lmcompose.plugins import get_datasets, get_interventions, get_metrics, plugin_infos
from lmcompose.results import (
    CONFIG_FILE,
    RESULTS_FILE,
    append_row,
    read_rows,
    read_yaml,
    write_yaml_atomic,
)

POLICIES = ("none", "project", "recompress")
EDIT_KIND = "edit"


class MetricValueError(LMComposeError):
    """A metric returned NaN."""


# --------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------


@dataclass
class StepSpec:
    """One step of a sequence: an intervention name and field overrides."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.overrides:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_fmt(v)}" for k, v in self.overrides.items())


def _fmt(v: Any) -> str:
    if isinstance(v, list | tuple):
        return "+".join(map(str, v))
    return str(v).lower() if isinstance(v, bool) else str(v)


def parse_step(step: str | Mapping[str, Any] | StepSpec) -> StepSpec:
    """``"name:field=value,field=value"`` (split on the first colon only, so ``structure=2:4``
    works) or a YAML mapping ``{name: ..., field: value}`` / ``{name: {field: value}}``."""
    if isinstance(step, StepSpec):
        return step
    if isinstance(step, Mapping):
        if "name" in step:
            return StepSpec(str(step["name"]), {k: v for k, v in step.items() if k != "name"})
        if len(step) == 1:
            (name, fields), = step.items()
            if fields is None or isinstance(fields, Mapping):
                return StepSpec(str(name), dict(fields or {}))
        raise ConfigError(f"step {dict(step)!r}: write a step as 'name:field=value,...', {{name: x, field: value}} or {{x: {{field: value}}}}")
    if not isinstance(step, str) or not step.strip():
        raise ConfigError(f"step {step!r}: expected 'name[:field=value,...]'")
    name, sep, rest = step.strip().partition(":")
    overrides: dict[str, Any] = {}
    if sep and rest.strip():
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"step {step!r}: {part!r} is not field=value (fields are separated by commas)")
            if key.strip() in overrides:
                raise ConfigError(f"step {step!r}: field {key.strip()!r} is given twice")
            overrides[key.strip()] = value.strip()
    elif sep:
        raise ConfigError(f"step {step!r}: nothing after ':'; write {name}:field=value or just {name}")
    return StepSpec(name.strip(), overrides)


def build_intervention(spec: StepSpec) -> Intervention:
    cls = get_interventions().get(spec.name)
    return cls.from_overrides(spec.overrides)


def build_metrics(names: Sequence[str] | None, options: Mapping[str, Mapping[str, Any]] | None) -> list[Metric]:
    registry = get_metrics()
    options = dict(options or {})
    for key in options:
        if key not in registry:
            raise UnknownNameError("metric (in metric options)", key, registry.names())
    chosen = list(names) if names else registry.names()
    return [registry.get(n).from_overrides(options.get(n, {})) for n in chosen]


# --------------------------------------------------------------------------------------
# Run settings (what `lmcompose run` and config.yaml hold)
# --------------------------------------------------------------------------------------


@dataclass
class RunSettings:
    """Everything that defines a run. ``-c config.yaml`` holds these keys; flags override."""

    model: str = ""
    steps: list[Any] = field(default_factory=list)
    out: str | None = None
    dataset: str | None = None
    dataset_source: str | None = None
    edits: int | None = None
    skip_invalid: bool = False
    seed: int = 0
    policy: str = "project"
    metrics: list[str] | None = None
    metric_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    data_dir: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "config") -> RunSettings:
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise UnknownNameError(f"setting in {where}", key, names)
        settings = cls(**{k: v for k, v in data.items()})
        if isinstance(settings.steps, str):
            settings.steps = settings.steps.split()
        if isinstance(settings.metrics, str):
            settings.metrics = [m.strip() for m in settings.metrics.split(",") if m.strip()]
        return settings

    @classmethod
    def from_file(cls, path: str | Path) -> RunSettings:
        return cls.from_mapping(read_yaml(Path(path)), where=str(path))

    def merged(self, **overrides: Any) -> RunSettings:
        """A copy with every override that is not None applied (CLI flags over the file)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def validate(self) -> tuple[list[Intervention], list[Metric]]:
        """Check everything that can be checked without loading a model; never imports torch."""
        if not self.model:
            raise ConfigError("no model given: pass MODEL (a named model such as smollm2-135m, a folder, or a .gguf file)")
        if not self.steps:
            raise ConfigError("no steps given: pass at least one STEP such as magnitude:sparsity=0.5")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.edits is not None and (not isinstance(self.edits, int) or self.edits < 1):
            raise ConfigError(f"edits={self.edits!r}: ask for at least 1 edit")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed={self.seed!r} must be an integer")
        from lmcompose.models.loading import DTYPES

        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        steps = [build_intervention(parse_step(s)) for s in self.steps]
        metrics = build_metrics(self.metrics, self.metric_options)
        if self.dataset is not None:
            entry = get_datasets().entry(self.dataset)
            if entry.extra.get("kind", "edits") != "edits":
                raise ConfigError(f"dataset {self.dataset!r} is a text corpus, not an edit dataset")
        return steps, metrics

    def resolved(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["steps"] = [str(parse_step(s)) for s in self.steps]
        return d

    def run_id(self) -> str:
        key = {k: v for k, v in self.resolved().items() if k not in {"out", "device", "data_dir"}}
        return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------
# Evaluation and composition
# --------------------------------------------------------------------------------------


def evaluate(lm: Any, metrics: Sequence[Metric], ctx: Context, where: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    start = time.perf_counter()
    for metric in metrics:
        if metric.requires_edits and not ctx.edits:
            continue
        for key, v in metric.compute(lm, ctx).items():
            if isinstance(v, float) and math.isnan(v):
                raise MetricValueError(
                    f"metric {metric.name!r} gave NaN for {key!r} {where}: the model's outputs are not finite. "
                    "Check the step's settings (a too-strong compression?), or run in float32"
                )
            values[key] = v
    values["eval_s"] = time.perf_counter() - start
    return values


def versions() -> dict[str, str]:
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


def _step_row_fields(step: Intervention) -> dict[str, Any]:
    knob = step.strength
    value = step.strength_value
    return {
        "step": {"name": step.name, "kind": step.kind, "config": config_to_dict(step.config)},
        "strength": value,
        "strength_field": knob.field if knob else None,
        "strength_normalized": knob.normalize(value) if knob and value is not None else None,
    }


def compose(
    lm: Any,
    steps: Sequence[str | Mapping[str, Any] | StepSpec | Intervention],
    *,
    edits: Sequence[EditRecord] | None = None,
    out: str | Path | None = None,
    policy: str = "project",
    metrics: Sequence[str] | Sequence[Metric] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    ctx: Context | None = None,
    run_id: str | None = None,
    replicate: int = 0,
    config: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Apply ``steps`` to ``lm`` in order, evaluating every metric on the base model and after
    each step; return the rows (also appended to ``out/results.jsonl`` when ``out`` is set).

    ``config`` (optional) is written to ``out/config.yaml`` together with versions and the
    base model's fingerprint. Rerunning into the same folder with the same run id skips the
    evaluations already recorded there.
    """
    if policy not in POLICIES:
        raise ConfigError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
    interventions = [s if isinstance(s, Intervention) else build_intervention(parse_step(s)) for s in steps]
    if metrics and all(isinstance(m, Metric) for m in metrics):
        metric_objs = list(metrics)  # type: ignore[arg-type]
    else:
        metric_objs = build_metrics(metrics, metric_options)  # type: ignore[arg-type]
    ctx = ctx or Context(seed=seed)
    if edits is not None:
        ctx.edits = list(edits)
    if any(s.kind == EDIT_KIND for s in interventions) and not ctx.edits:
        raise UsageError("an edit step needs edit requests: pass --dataset NAME and --edits N (or edits= in Python)")
    order = [s.name for s in interventions]
    run_id = run_id or hashlib.sha1(json.dumps([order, [config_to_dict(s.config) for s in interventions], seed, policy], default=str).encode()).hexdigest()[:12]

    results_path = None
    done: set[int] = set()
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        results_path = out_dir / RESULTS_FILE
        done = {r["position"] for r in read_rows(results_path) if r.get("run_id") == run_id and r.get("replicate", 0) == replicate}
        resolved = dict(config or {})
        resolved.update({
            "run_id": run_id,
            "order": order,
            "steps_resolved": [{"name": s.name, "kind": s.kind, "config": config_to_dict(s.config)} for s in interventions],
            "policy": policy,
            "seed": seed,
            "model_fingerprint": lm.fingerprint(),
            "model_source": lm.source,
            "versions": versions(),
            "notes": ctx.notes,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        config_path = out_dir / CONFIG_FILE
        if not config_path.exists():
            write_yaml_atomic(config_path, resolved)

    base = {"run_id": run_id, "model": lm.name, "order": order, "replicate": replicate, "policy": policy}
    rows: list[dict[str, Any]] = []

    def record(position: int, fields: dict[str, Any], elapsed: float, details: dict[str, Any], where: str, force_eval: bool = False) -> None:
        if position in done and not force_eval:
            return
        values = evaluate(lm, metric_objs, ctx, where)
        if position in done:
            return  # evaluated only to set references for later positions
        row = {**base, "position": position, **fields, "elapsed_s": elapsed,
               "step_details": {k: v for k, v in details.items() if isinstance(v, int | float | str | bool) or v is None},
               **values, "notes": list(ctx.notes), "timestamp": time.time()}
        if results_path is not None:
            append_row(results_path, row)
        rows.append(row)

    n_total = len(interventions)
    all_done = all(p in done for p in range(n_total + 1))
    record(0, {"step": None, "strength": None, "strength_field": None, "strength_normalized": None}, 0.0, {},
           "on the base model", force_eval=not all_done)
    applied: list[Intervention] = []
    for i, step in enumerate(interventions, start=1):
        report = step.apply(lm, ctx)
        elapsed = report.elapsed_s
        if policy == "project":
            start = time.perf_counter()
            for earlier in applied:
                if earlier.has_project():
                    earlier.project(lm)
            elapsed += time.perf_counter() - start
        applied.append(step)
        record(i, _step_row_fields(step), elapsed, report.details, f"after step {i} ({step.name})")

    if policy == "recompress":
        position = n_total
        for j, step in enumerate(interventions):
            edited_later = any(s.kind == EDIT_KIND for s in interventions[j + 1 :])
            if step.has_project() and step.kind != EDIT_KIND and edited_later:
                position += 1
                again = type(step)(step.config)
                report = again.apply(lm, ctx)
                fields = _step_row_fields(again)
                fields["step"]["recompress"] = True
                record(position, fields, report.elapsed_s, report.details, f"after re-running {step.name}")
    return rows


def load_edits(dataset: str, source: str | Path | None = None, limit: int | None = None, seed: int | None = 0,
               replicate: int = 0, skip_invalid: bool = False, ctx: Context | None = None) -> list[EditRecord]:
    """Load edit requests from a registered edit dataset (``limit`` records, replicate
    ``replicate`` of a seeded permutation). Notes (sample data used, records skipped) go to
    ``ctx`` when given."""
    entry = get_datasets().entry(dataset)
    if entry.extra.get("kind", "edits") != "edits":
        raise ConfigError(f"dataset {dataset!r} is a text corpus, not an edit dataset")
    ds = entry.load()()
    kwargs: dict[str, Any] = {"source": source, "limit": limit, "seed": seed}
    if replicate:
        kwargs["replicate"] = replicate
    if skip_invalid:
        kwargs["skip_invalid"] = True
    records = ds.load(**kwargs)
    if ctx is not None:
        for note in getattr(ds, "notes", []):
            ctx.note(note)
    return records


def run(settings: RunSettings, progress: Progress | None = None) -> tuple[list[dict[str, Any]], Context]:
    """Validate, load the model and edits, and compose (the `lmcompose run` command)."""
    import os

    settings.validate()
    if settings.data_dir:
        if not Path(settings.data_dir).is_dir():
            raise ConfigError(f"data folder {settings.data_dir!r} does not exist")
        os.environ["LMCOMPOSE_DATA_DIR"] = str(Path(settings.data_dir).resolve())
    run_id = settings.run_id()
    if settings.out:
        cfg = Path(settings.out) / CONFIG_FILE
        if cfg.exists():
            other = read_yaml(cfg).get("run_id")
            if other != run_id:
                raise UsageError(
                    f"{settings.out} already holds another run (run_id {other}, this one is {run_id}); "
                    "choose another --out, or delete that folder"
                )
    from lmcompose.models.loading import load_model

    ctx = Context(seed=settings.seed, device=settings.device, dtype=settings.dtype, progress=progress or Progress())
    edits = None
    needs_edits = any(get_interventions().get(parse_step(s).name).kind == EDIT_KIND for s in settings.steps)
    if settings.dataset or settings.edits or needs_edits:
        name = settings.dataset or "records"
        if settings.dataset is None:
            ctx.note("no --dataset given: using the bundled sample edits (dataset 'records')")
        edits = load_edits(name, settings.dataset_source, settings.edits, settings.seed, skip_invalid=settings.skip_invalid, ctx=ctx)
    lm = load_model(settings.model, dtype=settings.dtype, device=settings.device, progress=ctx.progress)
    rows = compose(
        lm, settings.steps, edits=edits, out=settings.out, policy=settings.policy, metrics=settings.metrics,
        metric_options=settings.metric_options, seed=settings.seed, ctx=ctx, run_id=run_id, config=settings.resolved(),
    )
    return rows, ctx
