"""Moved: the sweep's report is :mod:`lmcompose.reports.sweep`, the tables both reports share
:mod:`lmcompose.reports.tables`, and :func:`lmcompose.reports.write_report` writes the report a
folder's kind calls for. This module re-exports them under their old names."""

from lmcompose.reports import write_report
from lmcompose.reports.sweep import (
    PLOT_CAPTIONS,
    PLOTS_DIR,
    REPORT_FILE,
    Report,
    build_report,
    render_markdown,
    write_sweep_report,
)
from lmcompose.reports.tables import (
    METRIC_COLUMNS,
    NO_PER_EDIT_NOTE,
    Table,
    ap_table,
    base_format_line,
    check_axes,
    final_table,
    fmt_mean_std,
    fmt_p_per_width,
    fmt_with_interval,
    interval_caption,
    interval_text,
    locality_notes,
    oi_table,
    order_text,
    p_width_caption,
    step_table,
)

__all__ = [
    "METRIC_COLUMNS",
    "NO_PER_EDIT_NOTE",
    "PLOTS_DIR",
    "PLOT_CAPTIONS",
    "REPORT_FILE",
    "Report",
    "Table",
    "ap_table",
    "base_format_line",
    "build_report",
    "check_axes",
    "final_table",
    "fmt_mean_std",
    "fmt_p_per_width",
    "fmt_with_interval",
    "interval_caption",
    "interval_text",
    "locality_notes",
    "oi_table",
    "order_text",
    "p_width_caption",
    "render_markdown",
    "step_table",
    "write_report",
    "write_sweep_report",
]
