"""lm-evaluation-harness as a metric: any lm-eval task evaluated on the model in memory after
every step.

The model is wrapped as ``HFLM(pretrained=model, tokenizer=tokenizer)`` — the weights the run
holds, never a reload — and ``lm_eval.simple_evaluate`` runs the configured tasks. Rows get the
task's own metric names, ``TASK/METRIC`` (``lmcompose_facts/acc``, ``mmlu/acc``, their
``_stderr``); lm-eval's default filter suffix ``,none`` is dropped, other filters stay
(``gsm8k/exact_match,strict-match``).

Options (``--metric-option`` / ``metric_options: {lmeval: {...}}``): ``tasks`` (comma-separated
task or group names, default ``lmcompose_facts``), ``num_fewshot`` (default 0), ``limit``
(documents per task, 0 = all), ``batch_size``, ``include_path`` (a folder of your own task
YAMLs). ``lmcompose_facts`` ships with this plugin: 40 multiple-choice factual questions over a
local JSON file, so the metric runs and is tested offline; hub tasks (MMLU, HellaSwag, ...)
download their data through ``datasets`` the first time (docs/metrics.md).
"""

from __future__ import annotations

import difflib
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lmcompose.api import Context, Metric
from lmcompose.errors import ConfigError

if TYPE_CHECKING:
    from lmcompose import LM

BUNDLED_TASK = "lmcompose_facts"


@dataclass
class LMEvalConfig:
    tasks: str = field(default=BUNDLED_TASK, metadata={"help": "comma-separated lm-eval task or group names"})
    num_fewshot: int = field(default=0, metadata={"help": "few-shot examples per prompt", "range": (0, 64)})
    limit: int = field(default=0, metadata={"help": "documents per task (0 = all)", "range": (0, 1 << 30)})
    batch_size: int = field(default=8, metadata={"help": "requests per forward pass", "range": (1, 4096)})
    include_path: str = field(default="", metadata={"help": "a folder of extra task YAMLs (lm-eval's include_path)"})


def bundled_task_dir() -> Path:
    """A folder holding the bundled task's YAML with the absolute path of its data file
    (lm-eval resolves ``data_files`` against the working directory, not the YAML)."""
    from lmcompose.data import cache_dir

    pkg = resources.files("lmcompose_lmeval").joinpath("tasks")
    data = Path(str(pkg.joinpath("facts.jsonl")))
    text = pkg.joinpath("facts.yaml.in").read_text(encoding="utf-8").replace("@DATA@", str(data))
    folder = cache_dir() / "lmeval-tasks"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "lmcompose_facts.yaml"
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp", encoding="utf-8") as f:
            f.write(text)
        Path(f.name).replace(target)
    return folder


class TaskIndex(Protocol):
    """What lmcompose reads of lm-eval's TaskManager: the names of its tasks, groups and tags."""

    @property
    def all_tasks(self) -> list[str]: ...


_MANAGERS: dict[tuple[str, ...], TaskIndex] = {}


def task_manager(include_path: str = "") -> TaskIndex:
    """lm-eval's TaskManager with the bundled task (and ``include_path``) added; built once per
    process (indexing lm-eval's few thousand task files takes seconds)."""
    paths = [str(bundled_task_dir())] + ([str(Path(include_path).expanduser().resolve())] if include_path else [])
    key = tuple(paths)
    if key not in _MANAGERS:
        from lm_eval.tasks import TaskManager

        if include_path and not Path(include_path).expanduser().is_dir():
            raise ConfigError(f"metric 'lmeval': include_path {include_path!r} is not a folder of task YAMLs")
        _MANAGERS[key] = TaskManager(include_path=paths, verbosity="ERROR")
    return _MANAGERS[key]


def task_names(text: str) -> list[str]:
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise ConfigError("metric 'lmeval': tasks is empty; name at least one lm-eval task, e.g. tasks=lmcompose_facts")
    return names


def check_tasks(names: list[str], manager: TaskIndex) -> None:
    """Each name is an lm-eval task, group or tag; else one ConfigError with the closest names."""
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ConfigError(
                f"metric 'lmeval': task {name!r} is not in lm-eval's registry{hint}; "
                "`lm-eval ls tasks` lists them (or add your YAML folder with include_path=)"
            )


def flatten(results: Mapping[str, Mapping[str, object]]) -> dict[str, float | None]:
    """lm-eval's ``results`` as ``TASK/METRIC`` -> value (``,none`` dropped; non-numbers skipped)."""
    out: dict[str, float | None] = {}
    for task, metrics in sorted(results.items()):
        for key, value in metrics.items():
            if key == "alias" or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            name = key[: -len(",none")] if key.endswith(",none") else key
            v = float(value)
            out[f"{task}/{name}"] = v if math.isfinite(v) else None
    return out


class LMEval(Metric):
    """lm-evaluation-harness tasks on the in-memory model (see the module docstring)."""

    name = "lmeval"
    keys = ()  # the tasks' own metric names, known once lm-eval has run
    Config = LMEvalConfig
    config: LMEvalConfig

    def __init__(self, config: object = None):
        super().__init__(config)
        self.tasks = task_names(self.config.tasks)
        check_tasks(self.tasks, task_manager(self.config.include_path))  # when the run is set up, before any row

    def compute(self, lm: LM, ctx: Context) -> dict[str, float | None]:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        manager = task_manager(self.config.include_path)
        wrapped = HFLM(
            pretrained=lm.model,
            tokenizer=lm.tokenizer,
            batch_size=self.config.batch_size,
            device=str(lm.device),
            max_length=lm.max_positions,
        )
        wrapped._device = lm.device  # HFLM takes model.device, which is meta for an offloaded model
        with ctx.progress.task(f"lm-eval: {', '.join(self.tasks)}", None):
            out = lm_eval.simple_evaluate(
                model=wrapped,
                tasks=self.tasks,
                num_fewshot=self.config.num_fewshot,
                limit=self.config.limit or None,
                task_manager=manager,
                log_samples=False,
                bootstrap_iters=1000,
                random_seed=ctx.seed,
                numpy_random_seed=ctx.seed,
                torch_random_seed=ctx.seed,
                fewshot_random_seed=ctx.seed,
                verbosity="ERROR",
            )
        return flatten(out["results"])
