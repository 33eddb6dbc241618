"""The ICLR extension's per-pair summary of a study: order-free error and order sensitivity
of every method pair at one strength, per pair of categories, as tables and heatmaps.

*Composable Interventions for Language Models* (ICLR 2025) summarises each pair of methods
from two categories (editing × compression, unlearning × compression, editing × unlearning)
at one strength by

* **E_OF** (order-free error) = 1 − the better order's criterion: for an accuracy, 1 − the
  best order's accuracy; for WMDP (forget accuracy, lower is better) the lower order's
  accuracy itself;
* **E_OS** (order sensitivity) = |m(A→B) − m(B→A)|, the orders' difference.

On the normalized criteria of :mod:`lmcompose.composability` (each in [0, 1], higher is
better; forget accuracy entering as 1 − accuracy) these are MCE and OI at that strength
(mean ± sample std over replicates), so this module reads them from the study's
:class:`~lmcompose.composability.Composability` results. The strength of each entry is the
middle value of its grid (the second of three: sparsity 0.45 of [0.25, 0.45, 0.65], 4 bits
of [8, 4, 3]) unless ``at`` names the value of the varied field
(``{"sparsity": 0.45, "bits": 4}``); an entry whose grid lacks that value falls back to
its middle value, and the table says which strength each cell read.

With per-edit scores (per_edit.jsonl) each edit criterion's cell also says how sure it is:
E_OF's 95% bootstrap interval over the edits, and for E_OS (an absolute value, whose own
interval could never hold 0) the signed difference d = m(the row's method first) −
m(the column's method first) with its interval, "n.d." where that holds 0 (the orders are
not distinguishable). The resamples are :mod:`lmcompose.intervals`' (the same edits for both
orders of a replicate, means over replicates).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lmcompose.api._values import to_float
from lmcompose.composability import CRITERIA, Composability, SweepData
from lmcompose.errors import UsageError
from lmcompose.intervals import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    contains_zero,
    method_scores,
    percentile_interval,
    resample_indices,
    resampled_curves,
)
from lmcompose.reports.tables import Table, fmt_mean_std

if TYPE_CHECKING:
    from lmcompose.reports.study import StudyData

#: the category pairs, as (row role, column role, title), in the ICLR paper's order
CATEGORY_PAIRS = (
    ("editor", "compressor", "editing × compression"),
    ("unlearner", "compressor", "unlearning × compression"),
    ("editor", "unlearner", "editing × unlearning"),
)
MEASURES = (("E_OF", "MCE"), ("E_OS", "OI"))
CRITERION_NAMES = {
    "edit_success": "edit success",
    "generalization": "generalization",
    "locality": "locality",
    "perplexity": "perplexity (base ppl / ppl)",
    "forget_accuracy": "forget accuracy (WMDP's role)",
    "retain_accuracy": "retain accuracy (MMLU's role)",
}

__all__ = [
    "CATEGORY_PAIRS",
    "PairCell",
    "PairInterval",
    "order_effect_cells",
    "order_effect_tables",
    "pair_intervals",
    "plot_order_effects",
]


@dataclass
class PairCell:
    """One method pair's E_OF and E_OS per criterion at one strength, on one dataset."""

    pair: str  # the category pair's title
    dataset: str
    entry: str
    row: str  # the method of the row role (editor or unlearner)
    column: str  # the method of the column role (compressor or unlearner)
    field: str  # the varied field
    value: Hashable  # the strength read
    replicates: int
    measures: dict[str, dict[str, tuple[float | None, float | None]]]  # criterion -> E_OF/E_OS -> (mean, std)
    #: criterion -> E_OF's interval, and the signed order difference d (row's method first − column's
    #: method first) with its interval; edit criteria with per-edit scores only
    intervals: dict[str, PairInterval] = dataclasses.field(default_factory=dict)


@dataclass
class PairInterval:
    """How sure one criterion's E_OF and E_OS are: E_OF's 95% interval, and the signed
    difference d between the orders (its point, a mean over replicates, and interval)."""

    e_of: tuple[float, float]
    d: float
    d_interval: tuple[float, float]

    def e_of_text(self) -> str:
        if any(math.isnan(x) for x in self.e_of):
            return " [–]"  # a state without a scored edit
        return f" [{self.e_of[0]:.3f}, {self.e_of[1]:.3f}]"

    def d_text(self) -> str:
        lo, hi = self.d_interval
        if any(math.isnan(x) for x in (self.d, lo, hi)):
            return "; d –"  # a state without a scored edit: no difference to state
        text = f"; d {self.d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        return text + " n.d." if contains_zero(self.d_interval) else text


#: criteria that measure one category's own goal: read only on the pairs that hold it
#: (edit success on a pair without an editor scores edits never made); the rest (perplexity,
#: retain accuracy) measure what every intervention should keep
OWN_CRITERIA = {
    "edit_success": "editor",
    "generalization": "editor",
    "locality": "editor",
    "forget_accuracy": "unlearner",
}


def _applies(criterion: str, roles: tuple[str, str]) -> bool:
    return criterion not in OWN_CRITERIA or OWN_CRITERIA[criterion] in roles


def _strength_index(comp: Composability, field: str, at: Mapping[str, object] | None) -> int:
    """The index of ``at[field]`` in the entry's grid, else its middle value's."""
    if at and field in at:
        want = at[field]
        for j, v in enumerate(comp.values):
            numbers = isinstance(v, int | float) and isinstance(want, int | float)
            if v == want or (numbers and math.isclose(to_float(v), to_float(want))):
                return j
    return (len(comp.values) - 1) // 2


def pair_intervals(
    sweep: SweepData,
    comp: Composability,
    per_edit: Mapping[tuple[str, int], Mapping[str, object]],
    j: int,
    first_method: str,
    second_method: str,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, PairInterval]:
    """Each edit criterion's :class:`PairInterval` at strength index ``j``: the orders'
    curves resampled as A and P's are (clipped means of the same resampled edits in both
    orders), E_OF = 1 − the better order and d = the order that starts with
    ``first_method`` − the other, each a mean over replicates; d's point is the rows' own
    (the composability curves of ``comp``), as E_OS's is. Criteria without per-edit
    scores, or an order pair in which neither order starts with ``first_method`` nor ends
    with ``second_method``, get none."""
    if len(comp.orders) != 2:
        return {}
    first = next((o for o in comp.orders if o[0] == first_method), None)
    first = first or next((o for o in comp.orders if o[-1] == second_method), None)
    if first is None:
        return {}
    second = next(o for o in comp.orders if o != first)
    out = {}
    for name in comp.criteria:
        scores, _ = method_scores(sweep, comp, per_edit, name)
        if scores is None:
            continue
        e_of, d = [], []
        for r, rep in sorted(scores.replicates.items()):
            curves = resampled_curves(rep, resample_indices(len(rep.edits), resamples, seed, r))
            a, b = curves[first][j], curves[second][j]
            e_of.append(1.0 - np.maximum(a, b))
            d.append(a - b)
        reported = comp.criteria[name].curves  # replicate -> order -> the rows' normalized criterion
        point = float(np.mean([reported[r][first][j] - reported[r][second][j] for r in scores.replicates]))
        out[name] = PairInterval(
            percentile_interval(np.mean(e_of, axis=0)), point, percentile_interval(np.mean(d, axis=0))
        )
    return out


def order_effect_cells(
    data: StudyData,
    comps: Mapping[tuple[str, str], Composability],
    at: Mapping[str, object] | None = None,
    per_edit: Mapping[tuple[str, int], Mapping[str, object]] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> list[PairCell]:
    """E_OF and E_OS of every paired entry (an entry of two categories run in two orders),
    with :func:`pair_intervals` where ``per_edit`` has the scores; a field of ``at`` that no
    such entry varies is one UsageError naming the fields they do."""
    out = []
    for (entry, ds), comp in comps.items():
        roles = data.roles(entry)
        sweep = data.sweeps.get((entry, ds))
        if sweep is None or len(comp.orders) < 2:
            continue
        for row_role, col_role, title in CATEGORY_PAIRS:
            other = ({"editor", "compressor", "unlearner"} - {row_role, col_role}).pop()
            if roles[row_role] is None or roles[col_role] is None or roles[other] is not None:
                continue
            field = sweep.vary.split(".")[-1]
            j = _strength_index(comp, field, at)
            measures: dict[str, dict[str, tuple[float | None, float | None]]] = {}
            n = 0
            for name in CRITERIA:
                c = comp.criteria.get(name)
                if c is None or not _applies(name, (row_role, col_role)):
                    continue
                n = max(n, len(c.replicates))
                measures[name] = {label: c.per_strength(j, what) for label, what in MEASURES}
            cell = PairCell(
                title, ds, entry, str(roles[row_role]), str(roles[col_role]), field, comp.values[j], n, measures
            )
            if per_edit and not comp.single:
                found = pair_intervals(sweep, comp, per_edit, j, cell.row, cell.column, resamples, seed)
                cell.intervals = {k: v for k, v in found.items() if k in measures}
            out.append(cell)
    varied = sorted({c.field for c in out})
    for name in at or {}:
        if name not in varied:
            raise UsageError(
                f"at: no entry paired in both orders varies {name!r}; give one of {', '.join(varied) or 'none'} "
                "(lmcompose report DIR --at FIELD=VALUE)"
            )
    return out


def _by_pair(cells: Sequence[PairCell]) -> list[tuple[str, str, list[PairCell], list[str]]]:
    """(category pair, dataset, its cells, the criteria they measure), pairs in the paper's order."""
    out = []
    for _, _, title in CATEGORY_PAIRS:
        for ds in dict.fromkeys(c.dataset for c in cells):
            part = [c for c in cells if c.pair == title and c.dataset == ds]
            if part:
                out.append((title, ds, part, [n for n in CRITERIA if any(n in c.measures for c in part)]))
    return out


def order_effect_tables(cells: Sequence[PairCell]) -> list[Table]:
    """One table per category pair and dataset: a row per method pair, each criterion's
    E_OF / E_OS (mean ± std over replicates)."""
    tables = []
    for title, ds, part, names in _by_pair(cells):
        rows = []
        for c in part:
            cols = [c.row, c.column, f"{c.field}={c.value}"]
            for n in names:
                m = c.measures.get(n)
                if m is None:
                    cols.append("–")
                    continue
                (of, of_s), (os_, os_s) = m["E_OF"], m["E_OS"]
                iv = c.intervals.get(n)
                cols.append(
                    f"{fmt_mean_std(of, of_s, c.replicates, 3)}{iv.e_of_text() if iv else ''} / "
                    f"{fmt_mean_std(os_, os_s, c.replicates, 3)}{iv.d_text() if iv else ''}"
                )
            rows.append(cols)
        first, second = title.split(" × ")
        caption = (
            "Each cell: E_OF / E_OS (the ICLR paper's order-free error and order sensitivity), mean ± "
            "std over replicates, on the normalized criterion (higher is better; forget accuracy enters as "
            "1 − accuracy, so its E_OF is the lower order's forget accuracy). E_OF = 1 − the better "
            "order's criterion; E_OS = the two orders' difference. The strength is each entry's middle "
            "value unless the report was asked for another."
        )
        if any(c.intervals for c in part):
            caption += (
                " [a, b] after E_OF: its 95% bootstrap interval over the edits (per-edit scores); d [a, b] after "
                f"E_OS: the signed difference, the {first} method first − the {second} method first (a mean over "
                "replicates, so E_OS exceeds |d| where the replicates disagree in sign), with its interval; n.d. "
                "where that holds 0: the data do not exclude equal orders. The intervals resample the edits "
                "only (the replicates' and the calibration's noise are the ± std's and the noise floor's), and "
                "no correction is made for the many cells: read a single exclusion of 0 with care."
            )
        tables.append(
            Table(
                f"Order effects at one strength, {title}: {ds}",
                [first, second, "strength", *[CRITERION_NAMES.get(n, n) for n in names]],
                rows,
                caption,
            )
        )
    return tables


def plot_order_effects(cells: Sequence[PairCell], model: str, path_for: Callable[[str, str], Path]) -> list[Path]:
    """Heatmaps, one figure per category pair and dataset (``path_for(title, dataset)`` gives
    its path): rows of panels E_OF and E_OS, a column per criterion, each panel the row
    methods × the column methods."""
    from lmcompose.reports.figures import save_figure, use_agg

    out = []
    for title, ds, part, names in _by_pair(cells):
        row_methods = list(dict.fromkeys(c.row for c in part))
        col_methods = list(dict.fromkeys(c.column for c in part))
        use_agg()
        import matplotlib.pyplot as plt

        w = max(3.2, 0.9 * len(col_methods) + 1.6)
        h = max(2.4, 0.55 * len(row_methods) + 1.4)
        fig, axes = plt.subplots(2, len(names), figsize=(w * len(names), h * 2), squeeze=False)
        for i, (label, _) in enumerate(MEASURES):
            for k, name in enumerate(names):
                ax = axes[i][k]
                grid = [[math.nan] * len(col_methods) for _ in row_methods]
                for c in part:
                    mean = (c.measures.get(name) or {}).get(label, (None, None))[0]
                    if mean is not None:
                        grid[row_methods.index(c.row)][col_methods.index(c.column)] = mean
                ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis_r" if label == "E_OF" else "magma_r")
                for a, row in enumerate(grid):
                    for b, v in enumerate(row):
                        text = "–" if math.isnan(v) else f"{v:.2f}"
                        ax.text(b, a, text, ha="center", va="center", fontsize=8, color="white" if v > 0.5 else "black")
                ax.set_xticks(range(len(col_methods)), col_methods, fontsize=8, rotation=30)
                ax.set_yticks(range(len(row_methods)), row_methods, fontsize=8)
                ax.set_title(f"{label}: {CRITERION_NAMES.get(name, name)}", fontsize=9)
        fig.suptitle(f"{model}: {title} on {ds}, one strength per pair (0 = best)", fontsize=10)
        fig.tight_layout()
        out.append(save_figure(fig, path_for(title, ds)))
    return out
