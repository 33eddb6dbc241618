"""Composability of a sweep (DESIGN §6, the paper's Appendix B): A, P, OI and MCE.

Each criterion ℓ is normalized to [0, 1], higher = better, and read on the **final** model
of each cell (after every step of the order, and after recompress re-runs):

* ``edit_success``, ``generalization``, ``locality`` — already in [0, 1] (whatever scorer the
  edit metric used); clipped to [0, 1].
* ``perplexity`` — ``exp(general_nll_base − general_nll)`` = base perplexity / perplexity,
  clipped to [0, 1], where the base is the unmodified model of the same replicate. 1 = no
  loss in language modelling; 0.5 = perplexity doubled; an infinite perplexity gives 0.

The x-axis γ is rescaled to [0, 1] over the sweep's own grid: with ``x="strength"`` the varied
field's normalized strength (its knob's [low, high] mapped to [0, 1], 0 = weakest; a field
that is not the knob uses its raw values), min–max rescaled; with ``x="avg_bits"`` the
average bits of the final models at each strength (mean over orders and replicates), rescaled
so that x = 0 is the most bits and 1 the fewest. Over that x and the set of orders O:

* ``A = ∫ (max_o ℓ_o − min_o ℓ_o) dx`` (for two orders, ∫ |ℓ(A→B) − ℓ(B→A)| dx) — how much
  the order matters (0 = not at all);
* ``P = 1 − ∫ max_o ℓ_o dx`` — what even the better order loses (0 = nothing);
* per strength, ``OI = max_o ℓ_o − min_o ℓ_o`` and ``MCE = 1 − max_o ℓ_o``.

Integrals use the trapezoid rule over the grid; a grid of one point gives A = OI and
P = MCE at that point. A and P are computed per replicate, then reported as the mean and the
sample standard deviation over replicates (0 with one replicate); likewise OI and MCE.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmcompose.errors import DataError

CRITERIA = ("edit_success", "generalization", "locality", "perplexity")
X_AXES = ("strength", "avg_bits")


def trapezoid(x: Sequence[float], y: Sequence[float]) -> float:
    """∫ y dx by the trapezoid rule (x ascending); one point gives y[0] (a unit-width grid)."""
    if len(x) != len(y) or not x:
        raise ValueError("x and y must be non-empty and of equal length")
    if len(x) == 1:
        return float(y[0])
    return float(sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1)))


def area_metrics(x: Sequence[float], curves: Mapping[Any, Sequence[float]]) -> dict[str, Any]:
    """A, P, and per-point OI and MCE for criterion curves ``{order: [ℓ at each x]}``.

    ``x`` must be ascending and in [0, 1]; every curve has one value per x."""
    if not curves:
        raise ValueError("no curves")
    cols = list(zip(*curves.values(), strict=True))
    hi = [max(c) for c in cols]
    lo = [min(c) for c in cols]
    oi = [h - low for h, low in zip(hi, lo, strict=True)]
    return {"A": trapezoid(x, oi), "P": 1.0 - trapezoid(x, hi), "OI": oi, "MCE": [1.0 - h for h in hi]}


def normalized_criterion(name: str, row: Mapping[str, Any], base: Mapping[str, Any] | None) -> float | None:
    """Criterion ``name`` of ``row`` in [0, 1], higher = better (None when not measured)."""
    if name == "perplexity":
        if base is None:
            return None
        nll, nll0 = row.get("general_nll"), base.get("general_nll")
        if nll0 is not None and "general_nll" in row:
            if nll is None:  # not finite when written (JSON has no inf)
                return 0.0
            return math.exp(min(0.0, nll0 - nll))
        ppl, ppl0 = row.get("perplexity"), base.get("perplexity")
        if ppl0 is None or ppl is None:
            return None
        return min(1.0, max(0.0, ppl0 / ppl)) if ppl > 0 else None
    v = row.get(name)
    if v is None:
        return None
    return min(1.0, max(0.0, float(v)))


def _mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


@dataclass
class CriterionResult:
    criterion: str
    A: list[float] = field(default_factory=list)  # one per replicate used
    P: list[float] = field(default_factory=list)
    OI: list[list[float]] = field(default_factory=list)  # per replicate, per strength
    MCE: list[list[float]] = field(default_factory=list)
    replicates: list[int] = field(default_factory=list)

    @property
    def A_mean(self) -> float | None:
        return _mean_std(self.A)[0]

    @property
    def A_std(self) -> float | None:
        return _mean_std(self.A)[1]

    @property
    def P_mean(self) -> float | None:
        return _mean_std(self.P)[0]

    @property
    def P_std(self) -> float | None:
        return _mean_std(self.P)[1]

    def per_strength(self, j: int, what: str) -> tuple[float | None, float | None]:
        return _mean_std([r[j] for r in getattr(self, what)])


@dataclass
class SweepData:
    """The sweep rows of one run folder, indexed: cells, final rows, base rows."""

    rows: list[dict[str, Any]]
    run_id: str
    vary: str
    orders: list[tuple[str, ...]]
    values: list[Any]  # sorted by normalized strength (weakest first)
    replicates: list[int]
    final: dict[tuple[tuple[str, ...], Any, int], dict[str, Any]]
    base: dict[int, dict[str, Any]]
    by_cell: dict[tuple[tuple[str, ...], Any, int], list[dict[str, Any]]]
    model: str = ""
    policy: str = ""

    @property
    def complete(self) -> bool:
        return all((o, v, r) in self.final for o in self.orders for v in self.values for r in self.replicates)


def load_sweep(source: str | Path | Sequence[Mapping[str, Any]]) -> SweepData:
    """Sweep rows from a run folder, a results.jsonl path, or a list of rows."""
    from lmcompose.results import RESULTS_FILE, read_rows

    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_dir():
            path = path / RESULTS_FILE
        if not path.exists():
            raise DataError(f"{path} does not exist: give a sweep's run folder (the one holding results.jsonl)")
        rows = read_rows(path)
        where = str(path)
    else:
        rows = [dict(r) for r in source]
        where = "the rows given"
    rows = [r for r in rows if r.get("sweep")]
    if not rows:
        raise DataError(f"{where} holds no sweep rows: `lmcompose report` needs the folder of an `lmcompose sweep`")
    ids = list(dict.fromkeys(r["run_id"] for r in rows))
    if len(ids) > 1:
        raise DataError(f"{where} mixes sweeps {', '.join(ids)}; keep one sweep per folder")
    orders = list(dict.fromkeys(tuple(r["order"]) for r in rows))
    raw_values = list(dict.fromkeys(_hashable(r["strength"]) for r in rows))
    norm = {}
    for r in rows:
        norm[_hashable(r["strength"])] = r.get("strength_normalized")
    values = sorted(raw_values, key=lambda v: (norm[v] if norm[v] is not None else _as_float(v)))
    replicates = sorted({int(r["replicate"]) for r in rows})
    by_cell: dict[tuple[tuple[str, ...], Any, int], list[dict[str, Any]]] = {}
    seen: set[tuple[str, int]] = set()
    for r in rows:
        key = (r["cell"], r["position"])
        if key in seen:  # a duplicate can only come from copying files by hand; keep the first
            continue
        seen.add(key)
        by_cell.setdefault((tuple(r["order"]), _hashable(r["strength"]), int(r["replicate"])), []).append(r)
    final, base = {}, {}
    for key, cell_rows in by_cell.items():
        cell_rows.sort(key=lambda r: r["position"])
        last = cell_rows[-1]
        if last["position"] == last.get("last_position", last["position"]):
            final[key] = last
        if cell_rows[0]["position"] == 0:
            base.setdefault(key[2], cell_rows[0])
    return SweepData(rows, ids[0], rows[0].get("vary", ""), orders, values, replicates, final, base, by_cell,
                     rows[0].get("model", ""), rows[0].get("policy", ""))


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


@dataclass
class Composability:
    """A, P (per replicate, mean, spread) and per-strength OI and MCE for each criterion."""

    x_axis: str
    values: list[Any]
    x: list[float]
    orders: list[tuple[str, ...]]
    criteria: dict[str, CriterionResult]
    curves: dict[str, dict[tuple[str, ...], list[tuple[float | None, float | None]]]]  # mean, std per x
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"x_axis": self.x_axis, "values": self.values, "x": self.x,
                               "orders": [list(o) for o in self.orders], "criteria": {}, "notes": self.notes}
        for name, c in self.criteria.items():
            out["criteria"][name] = {
                "A": c.A_mean, "A_std": c.A_std, "P": c.P_mean, "P_std": c.P_std, "A_per_replicate": c.A,
                "P_per_replicate": c.P, "replicates": c.replicates,
                "OI": [c.per_strength(j, "OI")[0] for j in range(len(self.values))],
                "OI_std": [c.per_strength(j, "OI")[1] for j in range(len(self.values))],
                "MCE": [c.per_strength(j, "MCE")[0] for j in range(len(self.values))],
                "MCE_std": [c.per_strength(j, "MCE")[1] for j in range(len(self.values))],
            }
        return out


def x_positions(data: SweepData, x_axis: str = "strength") -> list[float] | None:
    """Rescaled x in [0, 1] for each of ``data.values`` (None when the axis is not available)."""
    if x_axis not in X_AXES:
        raise DataError(f"x axis {x_axis!r} is not one of {', '.join(X_AXES)}")
    if x_axis == "strength":
        raw = []
        for v in data.values:
            n = next((r.get("strength_normalized") for r in data.rows if _hashable(r["strength"]) == v), None)
            raw.append(float(n) if n is not None else _as_float(v))
        lo, hi = min(raw), max(raw)
        return [(r - lo) / (hi - lo) if hi > lo else 0.0 for r in raw]
    bits = []
    for v in data.values:
        got = [row.get("avg_bits") for (o, val, _r), row in data.final.items() if val == v]
        got = [b for b in got if b is not None]
        if not got:
            return None
        bits.append(statistics.fmean(got))
    lo, hi = min(bits), max(bits)
    if hi - lo < 1e-9:
        return None
    return [(hi - b) / (hi - lo) for b in bits]


def composability(source: str | Path | Sequence[Mapping[str, Any]] | SweepData, x: str = "strength",
                  criteria: Sequence[str] = CRITERIA) -> Composability:
    """A, P, OI and MCE of a sweep (a run folder, a results.jsonl, rows, or loaded data)."""
    data = source if isinstance(source, SweepData) else load_sweep(source)
    xs = x_positions(data, x)
    notes: list[str] = []
    if xs is None:
        raise DataError(f"x axis {x!r} is not available for this sweep: average bits do not change over its strengths")
    pts = sorted(range(len(data.values)), key=lambda j: xs[j])
    values = [data.values[j] for j in pts]
    xv = [xs[j] for j in pts]
    if len(values) == 1:
        notes.append("one strength only: A is OI and P is MCE at that strength")
    result: dict[str, CriterionResult] = {}
    curves: dict[str, dict[tuple[str, ...], list[tuple[float | None, float | None]]]] = {}
    for name in criteria:
        cr = CriterionResult(name)
        per_rep_curves: dict[int, dict[tuple[str, ...], list[float]]] = {}
        for r in data.replicates:
            base = data.base.get(r)
            cur: dict[tuple[str, ...], list[float]] = {}
            ok = True
            for o in data.orders:
                ys = []
                for v in values:
                    row = data.final.get((o, v, r))
                    y = normalized_criterion(name, row, base) if row is not None else None
                    if y is None:
                        ok = False
                        break
                    ys.append(y)
                if not ok:
                    break
                cur[o] = ys
            if not ok:
                continue
            per_rep_curves[r] = cur
            m = area_metrics(xv, cur)
            cr.A.append(m["A"])
            cr.P.append(m["P"])
            cr.OI.append(m["OI"])
            cr.MCE.append(m["MCE"])
            cr.replicates.append(r)
        if not cr.replicates:
            continue
        missing = [r for r in data.replicates if r not in cr.replicates]
        if missing:
            notes.append(f"{name}: replicate(s) {missing} incomplete, left out")
        result[name] = cr
        curves[name] = {o: [_mean_std([per_rep_curves[r][o][j] for r in cr.replicates]) for j in range(len(values))]
                        for o in data.orders}
    return Composability(x, values, xv, data.orders, result, curves, notes)
