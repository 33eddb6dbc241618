"""Reports rebuilt from a run folder's rows alone (results.jsonl, and per_edit.jsonl for the
bootstrap intervals).

* :mod:`~lmcompose.reports.tables` — the tables both reports build and how they write numbers;
* :mod:`~lmcompose.reports.sweep` — a sweep's report (A/P, OI/MCE, final metrics, every step);
* :mod:`~lmcompose.reports.study` — a study's (Table 1, comparisons, the flat ``rows.csv``);
* :mod:`~lmcompose.reports.figures` — the figures of both;
* :mod:`~lmcompose.reports.order_effects` — a study's E_OF / E_OS per method pair of two
  categories at one strength (the ICLR extension's tables and heatmaps);
* :func:`write_report` — the report a folder's kind calls for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmcompose.reports.study import StudyReport
    from lmcompose.reports.sweep import Report

__all__ = ["folder_kind", "write_report"]


def folder_kind(run_dir: str | Path) -> str:
    """``study`` or ``sweep``: the kind of report the folder's rows call for (a study's rows
    carry its labels; the report is rebuilt from the rows alone, never from config.yaml)."""
    from lmcompose.reports.study import is_study

    return "study" if is_study(run_dir) else "sweep"


def write_report(
    run_dir: str | Path, plots: bool = True, axes: Sequence[str] | None = None, at: Mapping[str, object] | None = None
) -> Report | StudyReport:
    """Rebuild the report of the folder ``run_dir`` (report.md, plots/*.png; a study's
    rows.csv too) for its kind (:func:`folder_kind`): a study's Table 1 and figures, or a
    sweep's tables (on each of ``axes``; a study is tabled on the first; ``at``: a study's
    order-effect strengths, :func:`lmcompose.reports.order_effects.order_effect_cells`). A run's rows have no
    report: one DataError says so."""
    from lmcompose.reports.tables import check_axes

    chosen = check_axes(axes)
    if folder_kind(run_dir) == "study":
        from lmcompose.reports.study import write_study_report

        return write_study_report(run_dir, plots=plots, axis=chosen[0] if chosen else None, at=at)
    from lmcompose.reports.sweep import write_sweep_report

    return write_sweep_report(run_dir, plots=plots, axes=chosen)
