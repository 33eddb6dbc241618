"""The noise floor of a study's A and P, from the cells its ``noise_floor`` repeated.

A repetition (``noise`` label ``seed=S`` or ``threads=T`` on its rows) recomputes chosen cells
under another calibration seed or thread count: nothing about the experiment changes, so
whatever moves is noise. For each (entry, dataset) whose every cell was repeated, A and P
are computed on the repetition exactly as on the study's own rows (same axis); the noise
floor of a criterion is the largest |A_repeated − A| (and |P_repeated − P|) over the
repetitions. Where only some cells were repeated, the table gives the largest change of the
criterion on a repeated final model instead (no area can be formed from part of a curve).
An A below its noise floor is indistinguishable from noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lmcompose.composability import (
    CRITERIA,
    Composability,
    SweepData,
    composability,
    load_sweep,
    normalized_criterion,
)
from lmcompose.errors import DataError
from lmcompose.reports.tables import Table

__all__ = ["NoiseFloor", "noise_floor_table", "noise_floors", "noise_sweeps"]


@dataclass(frozen=True)
class NoiseFloor:
    """How far one criterion of one (entry, dataset) moved under the repetitions:
    ``dA``/``dP`` the largest |ΔA| and |ΔP| (None where the whole sweep was not repeated),
    ``d_cell`` the largest change of the criterion on one repeated final model."""

    entry: str
    dataset: str
    criterion: str
    labels: tuple[str, ...]
    dA: float | None
    dP: float | None
    d_cell: float | None


def noise_sweeps(rows: Sequence[Mapping[str, object]]) -> dict[tuple[str, str, str], SweepData]:
    """The repeated rows as one sweep per (entry, dataset, repetition label)."""
    out: dict[tuple[str, str, str], SweepData] = {}
    keys = dict.fromkeys((str(r["entry"]), str(r["dataset"]), str(r["noise"])) for r in rows if r.get("noise"))
    for e, d, label in keys:
        part = [r for r in rows if r.get("noise") == label and r["entry"] == e and r["dataset"] == d]
        out[(e, d, label)] = load_sweep(part)
    return out


def _largest(values: Sequence[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return max(got) if got else None


def noise_floors(
    main: Mapping[tuple[str, str], SweepData],
    comps: Mapping[tuple[str, str], Composability],
    noise: Mapping[tuple[str, str, str], SweepData],
) -> dict[tuple[str, str, str], NoiseFloor]:
    """The noise floor per (entry, dataset, criterion) that a repetition covers."""
    out: dict[tuple[str, str, str], NoiseFloor] = {}
    for e, d in dict.fromkeys((e, d) for e, d, _ in noise):
        labels = tuple(lab for (e2, d2, lab) in noise if (e2, d2) == (e, d))
        base = main.get((e, d))
        comp = comps.get((e, d))
        for name in CRITERIA:
            dA: list[float | None] = []
            dP: list[float | None] = []
            cells: list[float | None] = []
            for label in labels:
                rep = noise[(e, d, label)]
                if base is not None and comp is not None and _covers(rep, base):
                    a, p = _area_changes(rep, comp, name)
                    dA.append(a)
                    dP.append(p)
                if base is not None:
                    cells += _cell_changes(rep, base, name)
            if any(v is not None for v in (*dA, *cells)):
                out[(e, d, name)] = NoiseFloor(e, d, name, labels, _largest(dA), _largest(dP), _largest(cells))
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return abs(a - b) if a is not None and b is not None else None


def _area_changes(rep: SweepData, comp: Composability, name: str) -> tuple[float | None, float | None]:
    """|ΔA| and |ΔP| of criterion ``name`` between the study's sweep and a repetition of it."""
    c0 = comp.criteria.get(name)
    try:
        c1 = composability(rep, x=comp.x_axis).criteria.get(name)
    except DataError:
        c1 = None
    if c0 is None or c1 is None:
        return None, None
    return _diff(c1.A_mean, c0.A_mean), _diff(c1.P_mean, c0.P_mean)


def _covers(rep: SweepData, base: SweepData) -> bool:
    """The repetition has every final model of the sweep."""
    return set(base.final) <= set(rep.final)


def _cell_changes(rep: SweepData, base: SweepData, name: str) -> list[float | None]:
    out: list[float | None] = []
    for key, row in rep.final.items():
        main_row = base.final.get(key)
        if main_row is None:
            continue
        r = key[2]
        a = normalized_criterion(name, main_row, base.base.get(r))
        b = normalized_criterion(name, row, rep.base.get(r) or base.base.get(r))
        out.append(_diff(a, b))
    return out


def noise_floor_table(floors: Mapping[tuple[str, str, str], NoiseFloor]) -> Table | None:
    """The noise floor per (entry, dataset, criterion); None without repetitions."""
    if not floors:
        return None

    def num(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    rows = [
        [f.entry, f.dataset, f.criterion, ", ".join(f.labels), num(f.dA), num(f.dP), num(f.d_cell)]
        for f in floors.values()
    ]
    return Table(
        "Noise floor: A and P under other calibration seeds or thread counts",
        ["compressor", "dataset", "criterion", "repeated under", "|ΔA|", "|ΔP|", "largest cell change"],
        rows,
        "The study's `noise_floor` cells recomputed under each repetition (another calibration seed for every "
        "compressor, or another thread count for every step); nothing about the experiment changed, so these "
        "differences are noise. |ΔA| and |ΔP|: the largest change of A and P (means over replicates, same axis) "
        "over the repetitions, where the whole sweep was repeated (– otherwise); largest cell change: the largest "
        "change of the normalized criterion on one final model. An A at or below its |ΔA| cannot be told apart "
        "from noise (marked ≈noise in Table 1).",
    )
