"""lmcompose: compose test-time interventions on causal language models and measure them.

The public API (importing this package does not import torch)::

    import lmcompose as lc
    lm = lc.load_model("smollm2-135m")
    edits = lc.load_edits("records", limit=10)
    rows = lc.compose(lm, ["magnitude:sparsity=0.5", "rtn:bits=4"], edits=edits, out="runs/x")
    lc.sweep(lm, ["magnitude", "rtn"], vary="rtn.bits=8,4,3", out="runs/y")  # every order, every strength
    lc.composability("runs/y")                                                # A, P, OI, MCE per criterion
    lc.run_study(lc.load_study("studies/quick.yaml"), out="runs/z")           # the paper's whole experiment
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lmcompose.api import (
    Context,
    EditDataset,
    EditRecord,
    Intervention,
    LocalityPrompt,
    Metric,
    MultiHop,
    StepReport,
    StrengthKnob,
    TextCorpus,
)

# compose, composability and sweep are bound eagerly (none of their modules imports torch): a
# lazy binding would be shadowed by the submodule of the same name once anything imports it,
# and `lc.compose(...)` would then call a module.
from lmcompose.composability import composability
from lmcompose.compose import compose
from lmcompose.errors import ConfigError, DataError, LMComposeError, ModelLoadError, UsageError
from lmcompose.hookspecs import hookimpl
from lmcompose.plugins import get_architectures, get_datasets, get_interventions, get_metrics
from lmcompose.sweep import sweep

__version__ = "0.4.0"

if TYPE_CHECKING:  # what __getattr__ imports on first use, for the type checker
    from lmcompose.compose import RunSettings as RunSettings
    from lmcompose.compose import load_edits as load_edits
    from lmcompose.compose import parse_step as parse_step
    from lmcompose.models.arch import ArchSpec as ArchSpec
    from lmcompose.models.handle import LM as LM
    from lmcompose.models.loading import load_model as load_model
    from lmcompose.models.tiny import tiny_model as tiny_model
    from lmcompose.reports import write_report as write_report
    from lmcompose.studies.runner import merge_studies as merge_studies
    from lmcompose.studies.runner import run_study as run_study
    from lmcompose.studies.spec import load_study as load_study
    from lmcompose.sweep import SweepSettings as SweepSettings

_LAZY = {
    "load_model": "lmcompose.models.loading",
    "tiny_model": "lmcompose.models.tiny",
    "load_edits": "lmcompose.compose",
    "RunSettings": "lmcompose.compose",
    "parse_step": "lmcompose.compose",
    "SweepSettings": "lmcompose.sweep",
    "write_report": "lmcompose.reports",
    "load_study": "lmcompose.studies.spec",
    "run_study": "lmcompose.studies.runner",
    "merge_studies": "lmcompose.studies.runner",
    "LM": "lmcompose.models.handle",
    "ArchSpec": "lmcompose.models.arch",
}

__all__ = [
    "ConfigError",
    "Context",
    "DataError",
    "EditDataset",
    "EditRecord",
    "Intervention",
    "LMComposeError",
    "LocalityPrompt",
    "Metric",
    "ModelLoadError",
    "MultiHop",
    "StepReport",
    "StrengthKnob",
    "TextCorpus",
    "UsageError",
    "composability",
    "compose",
    "get_architectures",
    "get_datasets",
    "get_interventions",
    "get_metrics",
    "hookimpl",
    "sweep",
    *_LAZY,
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmcompose' has no attribute {name!r}")
