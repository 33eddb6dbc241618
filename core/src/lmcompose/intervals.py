"""Bootstrap intervals for A and P, and paired comparisons, from per-edit scores.

A and P (:mod:`lmcompose.composability`) are areas under curves of per-state means of
per-edit scores, so their uncertainty from the choice of edits is estimated by resampling
the edits (docs/studies.md, "Per-edit scores and intervals"):

* within each replicate, resample b draws n edit indices with replacement (n = the
  replicate's edits), and the **same** indices serve every state and every order of that
  replicate, so the pairing between the orders (and between the strengths) is kept; the
  generator is seeded by (seed, replicate), so two methods on the same edits draw the same
  indices and their difference is paired too;
* each state's criterion is the mean of its resampled edits' scores (over the edits that
  have a score, as the row's average is), clipped to [0, 1] as
  :func:`~lmcompose.composability.normalized_criterion` clips it; the curves are
  interpolated onto a common interval where the table uses one (the same segments as
  :func:`~lmcompose.composability.interpolate`), and A and P are the trapezoid areas of
  :func:`~lmcompose.composability.area_metrics`, per replicate, then averaged over the
  replicates — the reported value, recomputed B times (B = 1000 by default, seed 0);
* the 95% interval is the 2.5th to 97.5th percentile of the B values (percentile
  bootstrap); a paired comparison of two methods takes the B differences, their percentile
  interval, and the two-sided p-value ``min(1, 2 min(#(d ≤ 0) + 1, #(d ≥ 0) + 1) / (B + 1))``.

An interval that contains 0 is "not distinguishable" (from 0, or between the two methods).
Only the edit criteria have per-edit scores; perplexity is one number per model state and
gets no interval here. The functions are pure: arrays and mappings in, arrays and
dataclasses out.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from lmcompose.api._values import to_float
from lmcompose.composability import Composability, SweepData, per_width, row_position, segment
from lmcompose.engine.run_folder import row_cell_id
from lmcompose.errors import DataError

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
LEVEL = 0.95
EDIT_CRITERIA = ("edit_success", "generalization", "locality")

Order = tuple[str, ...]
EditKey = tuple[int, object]  # (record index, case id): unique even where case ids repeat or are null

__all__ = [
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "EDIT_CRITERIA",
    "LEVEL",
    "APInterval",
    "APSamples",
    "Difference",
    "MethodScores",
    "ReplicateScores",
    "area_samples",
    "bootstrap_ap",
    "bootstrap_p_value",
    "compare",
    "contains_zero",
    "interpolate_samples",
    "interval_of",
    "intervals_for",
    "method_scores",
    "percentile_interval",
    "resample_indices",
    "resampled_curves",
    "same_edits",
    "state_means",
]


@dataclass
class ReplicateScores:
    """One replicate of one method for one criterion: its edits and, per order, the
    per-edit scores of each state as a (strengths × edits) array (NaN: no score)."""

    edits: list[EditKey]
    orders: dict[Order, np.ndarray]


@dataclass
class MethodScores:
    """One method (a sweep, or an entry on a dataset) on one axis for one criterion: the
    x of each strength (ascending) and each replicate's scores."""

    criterion: str
    x: list[float]
    replicates: dict[int, ReplicateScores]


@dataclass
class APSamples:
    """The B bootstrap values of A and P (means over replicates), and how many resamples
    were left out because a state had no scored edit in them."""

    criterion: str
    A: np.ndarray
    P: np.ndarray
    dropped: int = 0


@dataclass
class APInterval:
    """95% intervals of A and P of one criterion, with the samples they come from."""

    criterion: str
    A: tuple[float, float]
    P: tuple[float, float]
    samples: APSamples

    def P_per_width(self, interval: tuple[float, float]) -> tuple[float, float] | None:
        """The interval of P ÷ the width of the x ``interval`` P was integrated over (the
        paper's [0, 1] scale; :func:`~lmcompose.composability.per_width`): each end divided,
        which is the percentile interval of the divided samples since the width is one
        positive number for every resample. None for a zero-width interval."""
        lo, hi = per_width(self.P[0], interval), per_width(self.P[1], interval)
        return None if lo is None or hi is None else (lo, hi)


class ComparisonContext(TypedDict, total=False):
    """What a :class:`Difference` compared: the dataset, the kind of pair (``compressor``
    or ``editor``), the method both share and the common x interval."""

    dataset: str
    kind: str
    shared: str
    interval: tuple[float, float]


@dataclass
class Difference:
    """A paired comparison of two methods on the same edits: ``first − second`` of ``what``
    (A or P) of ``criterion``, its interval and two-sided bootstrap p-value."""

    first: str
    second: str
    criterion: str
    what: str
    difference: float
    interval: tuple[float, float]
    p_value: float
    resamples: int
    context: ComparisonContext = field(default_factory=lambda: ComparisonContext())

    @property
    def distinguishable(self) -> bool:
        return not contains_zero(self.interval)

    def clause(self, digits: int = 3) -> str:
        """``A difference -0.023, 95% CI [-0.050, 0.004], p = 0.11 — not distinguishable``."""
        lo, hi = self.interval
        text = (
            f"{self.what} difference {self.difference:.{digits}f}, {round(LEVEL * 100)}% CI "
            f"[{lo:.{digits}f}, {hi:.{digits}f}], p = {_p_text(self.p_value)}"
        )
        return text if self.distinguishable else text + " — not distinguishable"


def _p_text(p: float) -> str:
    return f"{p:.2g}" if p >= 0.01 else f"{p:.1g}"


def contains_zero(interval: tuple[float, float]) -> bool:
    return interval[0] <= 0.0 <= interval[1]


# --------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------


def resample_indices(
    n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, replicate: int = 0
) -> np.ndarray:
    """(resamples × n) edit indices drawn with replacement, from a generator seeded by
    (seed, replicate): the same for every state, order and method of that replicate."""
    if n < 1:
        raise ValueError("no edits to resample")
    return np.random.default_rng([seed, replicate]).integers(0, n, size=(resamples, n))


def resampled_curves(scores: ReplicateScores, indices: np.ndarray) -> dict[Order, np.ndarray]:
    """Each order's criterion at each strength for each resample, (strengths × B): the mean
    of the resampled edits' scores (those that have one), clipped to [0, 1]; NaN where no
    resampled edit has a score."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples: NaN, counted as dropped
        for order, matrix in scores.orders.items():
            means = np.stack([np.nanmean(row[indices], axis=1) for row in matrix])
            out[order] = np.clip(means, 0.0, 1.0)
    return out


def interpolate_samples(x: Sequence[float], curve: np.ndarray, grid: Sequence[float]) -> np.ndarray:
    """``curve`` (len(x) × B) at each point of ``grid``, (len(grid) × B): the segments of
    :func:`~lmcompose.composability.interpolate`, applied to every resample at once."""
    rows = []
    for g in grid:
        i, t = segment(x, g)
        rows.append(curve[i] if t is None else curve[i] + t * (curve[i + 1] - curve[i]))
    return np.stack(rows)


def area_samples(x: Sequence[float], curves: Mapping[Order, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A and P of every resample (each curve len(x) × B): per strength, OI = best − worst
    order and MCE = 1 − best order, integrated by the trapezoid rule as
    :func:`~lmcompose.composability.area_metrics` does (same terms, same order)."""
    if len(x) < 2:
        raise ValueError("A and P need two strengths or more")
    stack = np.stack(list(curves.values()))
    hi, lo = stack.max(axis=0), stack.min(axis=0)
    oi, mce = hi - lo, 1.0 - hi
    a: np.ndarray | int = 0
    p: np.ndarray | int = 0
    for i in range(len(x) - 1):
        a = a + (x[i + 1] - x[i]) * (oi[i] + oi[i + 1]) / 2
        p = p + (x[i + 1] - x[i]) * (mce[i] + mce[i + 1]) / 2
    return np.asarray(a, dtype=float), np.asarray(p, dtype=float)


def bootstrap_ap(
    method: MethodScores,
    grid: Sequence[float] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    indices: Mapping[int, np.ndarray] | None = None,
) -> APSamples:
    """A and P of ``method`` recomputed on B resamples of its edits (on ``grid`` when given:
    the curves interpolated onto it, as on a common interval). ``indices`` (replicate ->
    B × n) replaces the seeded draw (a test computes a case by hand with it)."""
    per_a, per_p = [], []
    x = list(grid) if grid is not None else method.x
    for r, scores in sorted(method.replicates.items()):
        idx = indices[r] if indices is not None else resample_indices(len(scores.edits), resamples, seed, r)
        curves = resampled_curves(scores, idx)
        if grid is not None:
            curves = {o: interpolate_samples(method.x, c, x) for o, c in curves.items()}
        a, p = area_samples(x, curves)
        per_a.append(a)
        per_p.append(p)
    a_mean, p_mean = np.mean(per_a, axis=0), np.mean(per_p, axis=0)
    dropped = int(np.sum(np.isnan(a_mean) | np.isnan(p_mean)))
    return APSamples(method.criterion, a_mean, p_mean, dropped)


def state_means(
    states: Mapping[str, Mapping[int, np.ndarray]],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, tuple[float, np.ndarray]]:
    """Each state's criterion (mean per-edit score) and its B bootstrap values, means over
    the replicates: ``states`` maps a state's name to replicate -> its per-edit scores (NaN:
    no score), every state of a replicate scored on the same edits in the same order. A
    replicate's resamples are :func:`resample_indices` of (seed, replicate), the same for
    every state, so the difference of two states' samples is paired (the same edits drawn
    for both). A state's point is the mean over replicates of its edits' mean, as a row
    reports it; a resample without a scored edit is NaN (left out by
    :func:`percentile_interval`). Each state's mean is over its own scored edits, so a
    difference of two states compares the same edits only where their NaN (unscored) edits
    coincide, as they do for scores that exist per record whatever the model (MQuAKE's
    multi-hop cases)."""
    if not states:
        return {}
    names = list(states)
    replicates = sorted(states[names[0]])
    for name in names:
        if sorted(states[name]) != replicates:
            raise ValueError(f"state {name!r} has replicates {sorted(states[name])}, not {replicates}")
    points: dict[str, list[float]] = {name: [] for name in names}
    samples: dict[str, list[np.ndarray]] = {name: [] for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples stay NaN
        for r in replicates:
            n = {len(states[name][r]) for name in names}
            if len(n) != 1:
                raise ValueError(f"replicate {r}: the states have {sorted(n)} edits, not one count")
            idx = resample_indices(n.pop(), resamples, seed, r)
            for name in names:
                scores = np.asarray(states[name][r], dtype=float)
                points[name].append(float(np.nanmean(scores)))
                samples[name].append(np.nanmean(scores[idx], axis=1))
        return {name: (float(np.mean(points[name])), np.mean(samples[name], axis=0)) for name in names}


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of ``samples`` (NaN left out; (NaN, NaN)
    where every sample is NaN)."""
    tail = (1.0 - level) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice: (NaN, NaN)
        lo, hi = np.nanpercentile(samples, [tail, 100.0 - tail])
    return float(lo), float(hi)


def interval_of(samples: APSamples, level: float = LEVEL) -> APInterval:
    return APInterval(
        samples.criterion, percentile_interval(samples.A, level), percentile_interval(samples.P, level), samples
    )


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference being 0: twice the smaller share of the
    resampled differences on either side of 0 (each share counted as (k + 1) / (B + 1)),
    capped at 1. Identical methods (every difference 0) give 1."""
    d = differences[~np.isnan(differences)]
    b = len(d)
    below = (int(np.sum(d <= 0)) + 1) / (b + 1)
    above = (int(np.sum(d >= 0)) + 1) / (b + 1)
    return min(1.0, 2 * min(below, above))


def compare(
    first: str,
    second: str,
    a: APSamples,
    b: APSamples,
    point: Mapping[str, tuple[float, float]],
    level: float = LEVEL,
    context: ComparisonContext | None = None,
) -> list[Difference]:
    """The paired differences ``first − second`` of A and of P from two methods' bootstrap
    samples drawn with the same edit indices; ``point`` maps A and P to the two methods'
    reported values."""
    out = []
    for what, da, db in (("A", a.A, b.A), ("P", a.P, b.P)):
        diff = da - db
        out.append(
            Difference(
                first,
                second,
                a.criterion,
                what,
                point[what][0] - point[what][1],
                percentile_interval(diff, level),
                bootstrap_p_value(diff),
                int(np.sum(~np.isnan(diff))),
                context.copy() if context else ComparisonContext(),
            )
        )
    return out


# --------------------------------------------------------------------------------------
# from a run folder's rows and per-edit lines
# --------------------------------------------------------------------------------------


def method_scores(
    data: SweepData,
    comp: Composability,
    per_edit: Mapping[tuple[str, int], Mapping[str, object]],
    criterion: str,
) -> tuple[MethodScores | None, str | None]:
    """The per-edit scores behind ``comp``'s curves of ``criterion`` (an edit criterion):
    for each replicate A and P used, each order's final model at each strength, read from
    the per-edit line of its row. Returns (scores, None), or (None, why not)."""
    if criterion not in EDIT_CRITERIA:
        return None, f"{criterion} has no per-edit scores"
    cr = comp.criteria.get(criterion)
    if cr is None or comp.single or not comp.values:
        return None, f"{criterion}: no A and P to put an interval on"
    replicates: dict[int, ReplicateScores] = {}
    for r in cr.replicates:
        edits: list[EditKey] | None = None
        orders: dict[Order, np.ndarray] = {}
        for o in comp.orders:
            matrix = []
            for v in comp.values:
                row = data.final.get((o, v, r))
                line = per_edit.get((row_cell_id(row), row_position(row))) if row is not None else None
                if row is None or line is None:
                    return (
                        None,
                        f"{criterion}: no per-edit scores for the final model of {' → '.join(o)} at {v}, replicate {r}",
                    )
                scores, case_ids = line.get("scores") or {}, line.get("case_ids") or []
                if not isinstance(scores, Mapping) or not isinstance(case_ids, list):
                    raise DataError(
                        f"the per-edit line of {row_cell_id(row)} position {row['position']}: scores must be a "
                        "mapping of criterion to scores and case_ids a list"
                    )
                got = scores.get(criterion)
                keys: list[EditKey] = list(enumerate(case_ids))
                if not isinstance(got, list) or len(got) != len(keys) or not keys:
                    return (
                        None,
                        f"{criterion}: the per-edit line of {row_cell_id(row)} position {row['position']} "
                        f"has no {criterion} scores",
                    )
                if edits is None:
                    edits = keys
                elif keys != edits:
                    return None, f"{criterion}: replicate {r}'s states were scored on different edits"
                matrix.append([np.nan if s is None else to_float(s) for s in got])
            orders[o] = np.asarray(matrix, dtype=float)
        assert edits is not None
        replicates[r] = ReplicateScores(edits, orders)
    return MethodScores(criterion, list(comp.x), replicates), None


def same_edits(a: MethodScores, b: MethodScores) -> bool:
    """True if two methods were scored on the same edits: the same replicates, and in each
    the same (index, case id) list."""
    return a.replicates.keys() == b.replicates.keys() and all(
        a.replicates[r].edits == b.replicates[r].edits for r in a.replicates
    )


def intervals_for(
    data: SweepData,
    comp: Composability,
    per_edit: Mapping[tuple[str, int], Mapping[str, object]],
    grid: Sequence[float] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[dict[str, APInterval], list[str]]:
    """The interval of A and P of each edit criterion of ``comp`` (on ``grid`` when given,
    e.g. a common interval's), and a note for each criterion that has none and why."""
    out: dict[str, APInterval] = {}
    notes = []
    for criterion in EDIT_CRITERIA:
        if criterion not in comp.criteria:
            continue
        scores, why = method_scores(data, comp, per_edit, criterion)
        if scores is None:
            notes.append(f"no interval: {why}")
            continue
        samples = bootstrap_ap(scores, grid, resamples, seed)
        if samples.dropped:
            notes.append(f"{criterion}: {samples.dropped} of {resamples} resamples had a state without a scored edit")
        out[criterion] = interval_of(samples)
    return out, notes
