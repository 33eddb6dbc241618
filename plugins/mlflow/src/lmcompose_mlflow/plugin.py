"""The hook implementations: one tracker per process, created on the first event."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcompose import hookimpl

if TYPE_CHECKING:
    from lmcompose_mlflow.tracker import MLflowTracker

_TRACKER: MLflowTracker | None = None


def _tracker() -> MLflowTracker | None:
    global _TRACKER
    from lmcompose_mlflow.tracker import MLflowTracker, tracking_uri

    uri = tracking_uri()
    if uri is None:
        return None
    if _TRACKER is None or _TRACKER.uri != uri:
        _TRACKER = MLflowTracker(uri)
    return _TRACKER


@hookimpl
def row_written(row, run):
    tracker = _tracker()
    if tracker is not None:
        tracker.row(row, run)


@hookimpl
def run_closed(run, status):
    tracker = _tracker()
    if tracker is not None:
        tracker.close(run, status)
