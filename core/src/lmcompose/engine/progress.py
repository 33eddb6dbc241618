"""Progress of a long walk: model states done out of the plan's, elapsed time and an ETA.

The ETA weighs what is left by what each kind of state (an edit, a prune, a quantization,
an evaluation of the base model) has cost so far, and divides by the speed observed (work
seconds per wall second), so it also holds when Ray tasks run side by side.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from lmcompose.engine.plan import Node, Plan

__all__ = ["ProgressEvent", "StateProgress", "format_duration"]


@dataclass(frozen=True)
class ProgressEvent:
    """One finished model state: ``done`` of ``total`` states, times in seconds."""

    done: int
    total: int
    elapsed_s: float
    eta_s: float | None
    label: str
    seconds: float
    rows: int

    def line(self) -> str:
        eta = format_duration(self.eta_s) if self.eta_s is not None else "?"
        return (
            f"{self.done}/{self.total} states, {format_duration(self.elapsed_s)} elapsed, ETA {eta} — "
            f"{self.label}: {self.seconds:.1f} s, {self.rows} row{'s' if self.rows != 1 else ''}"
        )


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _kind(node: Node) -> str:
    return "base" if node.action is None else node.action.kind


class StateProgress:
    """Counts the states of ``plan`` still needed (call after ``mark_needed``) as they finish."""

    def __init__(self, plan: Plan, callback: Callable[[ProgressEvent], None] | None = None):
        self.left: Counter[str] = Counter(
            _kind(n)
            for n in plan.root.walk()
            if (n.action is None and n.pending) or (n.action is not None and n.needed)
        )
        self.total = sum(self.left.values())
        self.done = 0
        self.spent: defaultdict[str, float] = defaultdict(float)  # seconds by kind
        self.count: Counter[str] = Counter()
        self.start = time.perf_counter()
        self.callback = callback

    def update(self, node: Node, seconds: float, rows: int) -> ProgressEvent:
        kind = _kind(node)
        self.done += 1
        self.left[kind] = max(0, self.left[kind] - 1)
        self.spent[kind] += seconds
        self.count[kind] += 1
        elapsed = time.perf_counter() - self.start
        event = ProgressEvent(self.done, self.total, elapsed, self.eta(elapsed), node.label, seconds, rows)
        if self.callback is not None:
            self.callback(event)
        return event

    def eta(self, elapsed: float) -> float | None:
        if not self.count:
            return None
        overall = sum(self.spent.values()) / sum(self.count.values())
        work_left = sum(n * (self.spent[k] / self.count[k] if self.count[k] else overall) for k, n in self.left.items())
        work_done = sum(self.spent.values())
        speed = work_done / elapsed if elapsed > 0 and work_done > 0 else 1.0
        return work_left / speed
