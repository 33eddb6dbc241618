"""Moved: the figures of both reports are :mod:`lmcompose.reports.figures`; this module
re-exports a sweep's under their old names."""

from lmcompose.reports.figures import (
    CRITERION_LABELS,
    CURVE_METRICS,
    order_label,
    plot_composability,
    plot_curves,
    plot_nll,
    plot_topk,
    save_figure,
)

__all__ = [
    "CRITERION_LABELS",
    "CURVE_METRICS",
    "order_label",
    "plot_composability",
    "plot_curves",
    "plot_nll",
    "plot_topk",
    "save_figure",
]
