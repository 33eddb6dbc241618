"""Core concepts: EditRecord, StepReport, Context, and the Intervention / Metric / dataset
base classes, plus config parsing shared by all of them. The plugin API (docs/plugins.md):
plugins import these names from here, not from the modules that define them:

- :mod:`lmcompose.api.records`: edit records (``EditRecord``, ``LocalityPrompt``, ``MultiHop``);
- :mod:`lmcompose.api.config`: config coercion and checks (``build_config``, ``StrengthKnob``,
  ``setting`` and ``Check``: what a field takes, checked as run and study settings are);
- :mod:`lmcompose.api.context`: the run context (``Context``, ``Progress``, ``References``);
- :mod:`lmcompose.api.interfaces`: the plugin base classes and ``StepReport``.

Nothing here imports torch at module import time: listing plugins and validating configs
must stay cheap.
"""

from __future__ import annotations

from lmcompose.api.config import (
    Check,
    StrengthKnob,
    build_config,
    config_fields,
    config_to_dict,
    field_help,
    setting,
)
from lmcompose.api.context import Context, Progress, References
from lmcompose.api.interfaces import (
    PER_EDIT_KEY,
    EditDataset,
    Intervention,
    Metric,
    NoConfig,
    StepReport,
    TextCorpus,
)
from lmcompose.api.records import EditRecord, LocalityPrompt, MultiHop

__all__ = [
    "Check",
    "Context",
    "EditDataset",
    "EditRecord",
    "Intervention",
    "LocalityPrompt",
    "Metric",
    "MultiHop",
    "NoConfig",
    "PER_EDIT_KEY",
    "Progress",
    "References",
    "StepReport",
    "StrengthKnob",
    "TextCorpus",
    "build_config",
    "config_fields",
    "config_to_dict",
    "field_help",
    "setting",
]
