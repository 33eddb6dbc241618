"""lmcompose: compose test-time interventions on causal language models and measure them.

The public API (importing this package does not import torch)::

    import lmcompose as lc
    lm = lc.load_model("smollm2-135m")
    edits = lc.load_edits("records", limit=10)
    rows = lc.compose(lm, ["magnitude:sparsity=0.5", "rtn:bits=4"], edits=edits, out="runs/x")
"""

from __future__ import annotations

import importlib
from typing import Any

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
from lmcompose.errors import ConfigError, DataError, LMComposeError, ModelLoadError, UsageError
from lmcompose.hookspecs import hookimpl
from lmcompose.plugins import get_architectures, get_datasets, get_interventions, get_metrics

__version__ = "0.1.0"

_LAZY = {
    "load_model": "lmcompose.models.loading",
    "tiny_model": "lmcompose.models.tiny",
    "compose": "lmcompose.compose",
    "load_edits": "lmcompose.compose",
    "RunSettings": "lmcompose.compose",
    "parse_step": "lmcompose.compose",
    "LM": "lmcompose.models.handle",
    "ArchSpec": "lmcompose.models.arch",
}

__all__ = [
    "ConfigError", "Context", "DataError", "EditDataset", "EditRecord", "Intervention", "LMComposeError",
    "LocalityPrompt", "Metric", "ModelLoadError", "MultiHop", "StepReport", "StrengthKnob", "TextCorpus",
    "UsageError", "get_architectures", "get_datasets", "get_interventions", "get_metrics", "hookimpl", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmcompose' has no attribute {name!r}")
