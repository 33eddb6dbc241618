"""Moved: the sweep's report is :mod:`lmcompose.reports.sweep`, the tables both reports share
:mod:`lmcompose.reports.tables`, and :func:`lmcompose.reports.write_report` writes the report a
folder's kind calls for. This module re-exports them under their old names."""

from lmcompose.reports import sweep as _sweep
from lmcompose.reports import tables as _tables
from lmcompose.reports import write_report
from lmcompose.reports.sweep import *  # noqa: F403 - the old module's names
from lmcompose.reports.tables import *  # noqa: F403 - the old module's names

__all__ = [*_sweep.__all__, *_tables.__all__, "write_report"]
