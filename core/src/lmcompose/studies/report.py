"""Moved: a study's report is :mod:`lmcompose.reports.study` and its figures are in
:mod:`lmcompose.reports.figures`; this module re-exports them under their old names."""

from lmcompose.reports import study as _study
from lmcompose.reports.figures import (
    FIGURE_METRICS,
    METRIC_LABELS,
    LogitPanel,
    figure3_notes,
    figure3_panels,
    has_unedited_control,
    plot_family,
    plot_logits,
    plot_nll_decay,
)
from lmcompose.reports.study import *  # noqa: F403 - the old module's names

__all__ = [
    *_study.__all__,
    "FIGURE_METRICS",
    "METRIC_LABELS",
    "LogitPanel",
    "figure3_notes",
    "figure3_panels",
    "has_unedited_control",
    "plot_family",
    "plot_logits",
    "plot_nll_decay",
]
