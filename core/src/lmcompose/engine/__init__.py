"""The engine under every command that writes results (run, sweep, study).

* :mod:`~lmcompose.engine.plan` — the plan: cells and the prefix tree of model states they
  share, built from settings alone; its partition into tasks and shards;
* :mod:`~lmcompose.engine.driver` — the one run-id recipe and :func:`execute`, the sequence
  every command runs once it has a plan (folder, config, what is left, executor, rows);
* :mod:`~lmcompose.engine.schema` — the typed rows of results.jsonl and per_edit.jsonl;
* :mod:`~lmcompose.engine.executor` — walks (part of) a plan on a loaded model, applies
  steps, evaluates metrics, yields rows;
* :mod:`~lmcompose.engine.run_folder` — the single writer of config.yaml and results.jsonl:
  lock, run-id, input and numerics checks, the done-set for resume;
* :mod:`~lmcompose.engine.numerics` — what else changes a number (thread count, deterministic
  mode, torch and its BLAS, batch sizes): recorded, checked on resume, set for a run;
* :mod:`~lmcompose.engine.policy` — the constraint policy's rules, once.

Importing this package does not import torch.
"""

from lmcompose.engine.driver import Loaded, Outcome, execute, run_id
from lmcompose.engine.executor import Executor, StateResult, evaluate
from lmcompose.engine.plan import Action, Cell, Node, Plan, PlanCounts, Task
from lmcompose.engine.policy import EDIT_KIND, POLICIES, TRAINING_KINDS, UNLEARN_KIND
from lmcompose.engine.run_folder import RunFolder, RunInfo
from lmcompose.engine.schema import PerEditLine, RunRow, StudyRow, SweepRow

__all__ = [
    "EDIT_KIND",
    "POLICIES",
    "TRAINING_KINDS",
    "UNLEARN_KIND",
    "Action",
    "Cell",
    "Executor",
    "Loaded",
    "Node",
    "Outcome",
    "PerEditLine",
    "Plan",
    "PlanCounts",
    "RunFolder",
    "RunInfo",
    "RunRow",
    "StateResult",
    "StudyRow",
    "SweepRow",
    "Task",
    "evaluate",
    "execute",
    "run_id",
]
