"""Editors under compression, normalised by each editor's dense success (docs/replication.md).

An editor that writes fewer edits on the dense model has less to lose under compression, so
its raw P (area between the best order's edit success and 1) mixes two things: how well it
edits and how well its edits survive. This divides them. For each editor × compressor
entry of a study folder (studies/editors.yaml's, one editor and one compressor per entry),
per replicate:

* dense success d: the editor's edit success on the uncompressed model (the edit-first
  order's state after the edit; the same at every strength);
* kept fraction at each strength: each order's final edit success ÷ d, clipped to [0, 1]
  as the composability criteria are (a final model above its dense value keeps 1);
* normalised A and P: A and P of the kept-fraction curves (lmcompose.composability's
  trapezoids on the entry's own x axis, 1 − avg_bits / the base's bits), and P ÷ the axis' width (the
  share of the dense success the best order loses, averaged over the axis, in [0, 1]).

Then each pair of editors under the same compressor: the difference of normalised P ÷ w
per replicate (the editors of a replicate share its edits and calibration), its mean and a
95% t-interval over the replicates (df = replicates − 1; "n.d." where it holds 0). The
folder's rows hold means only (a folder written before per-edit scores has no
per_edit.jsonl), so the replicates are the only sample of the noise: with two of them the
interval is wide (t = 12.7), and it covers the edits' sampling and the calibration's
together.

    .venv/bin/python benchmarks/editors_kept.py docs/replication/editors-run [--criterion edit_success_f1]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path
from typing import Any

from lmcompose.composability import SweepData, area_metrics, composability
from lmcompose.errors import DataError
from lmcompose.studies.report import is_study, load_study_rows
from scipy.stats import t as student_t

ROOT = Path(__file__).resolve().parents[1]


def dense(data: SweepData, editor: str, criterion: str) -> dict[int, float]:
    """replicate -> the editor's edit success on the dense model: the state after the edit in
    the edit-first order, one state a study shares by every strength of a replicate (its rows'
    mean, should a folder hold it more than once)."""
    found: dict[int, list[float]] = {}
    for (order, _, r), rows in data.by_cell.items():
        if order[0] != editor:
            continue
        for row in rows:
            if row.get("position") == 1 and isinstance(row.get(criterion), int | float):
                found.setdefault(r, []).append(float(row[criterion]))
    return {r: statistics.fmean(xs) for r, xs in found.items()}


def kept(data: SweepData, editor: str, criterion: str) -> dict[str, Any] | None:
    """Per replicate: dense success, each order's kept fraction per strength, normalised A, P, P ÷ w."""
    d = dense(data, editor, criterion)
    comp = composability(data)
    if comp.single:
        return None
    width = comp.x[-1] - comp.x[0]
    per_rep: dict[int, dict[str, Any]] = {}
    for r, dr in sorted(d.items()):
        if dr <= 0:
            continue
        curves: dict[tuple[str, ...], list[float]] = {}
        for o in data.orders:
            ys = []
            for v in comp.values:
                row = data.final.get((o, v, r))
                if row is None or not isinstance(row.get(criterion), int | float):
                    break
                ys.append(min(1.0, max(0.0, float(row[criterion]) / dr)))
            else:
                curves[o] = ys
        if len(curves) != len(data.orders):
            continue  # an unfinished replicate
        m = area_metrics(comp.x, curves)
        assert m["A"] is not None and m["P"] is not None
        per_rep[r] = {"dense": dr, "curves": curves, "A": m["A"], "P": m["P"], "Pw": m["P"] / width}
    if not per_rep:
        return None
    return {"values": comp.values, "x": comp.x, "orders": data.orders, "reps": per_rep}


def spread(xs: list[float], digits: int = 3) -> str:
    """``mean (r0, r1, …)``: the mean and every replicate's value."""
    return f"{statistics.fmean(xs):.{digits}f} ({', '.join(f'{x:.{digits}f}' for x in xs)})"


def t_interval(xs: list[float], level: float = 0.95) -> str:
    """The mean's ``level`` t-interval over the replicates, ``n.d.`` where it holds 0; "–" for one replicate."""
    if len(xs) < 2:
        return "– (one replicate)"
    m, se = statistics.fmean(xs), statistics.stdev(xs) / len(xs) ** 0.5
    half = float(student_t.ppf((1 + level) / 2, len(xs) - 1)) * se
    lo, hi = m - half, m + half
    return f"[{lo:+.3f}, {hi:+.3f}]" + (" n.d." if lo <= 0 <= hi else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "run",
        type=Path,
        nargs="?",
        default=ROOT / "docs" / "replication" / "editors-run",
        help="a study folder with one editor and one compressor per entry (default: docs/replication/editors-run)",
    )
    ap.add_argument("--criterion", default="edit_success_f1", help="the row field to normalise (default: f1)")
    args = ap.parse_args()
    if not (args.run / "results.jsonl").is_file():
        raise SystemExit(f"editors_kept.py: {args.run} has no results.jsonl: give a study's run folder")
    if not is_study(args.run):
        raise SystemExit(f"editors_kept.py: {args.run} is not a study folder (no study rows in results.jsonl)")
    try:
        sweeps = load_study_rows(args.run).sweeps
    except DataError as exc:
        raise SystemExit(f"editors_kept.py: {exc}") from None
    found: dict[tuple[str, str, str], dict[str, Any]] = {}  # (dataset, compressor, editor) -> kept()
    for (_entry, dataset), data in sweeps.items():
        if len(data.orders) < 2:
            continue
        first = data.rows[0]
        editor, compressor = first.get("editor"), first.get("compressor")
        if not isinstance(editor, str) or not isinstance(compressor, str):
            continue  # an entry without one editor and one compressor
        k = kept(data, editor, args.criterion)
        if k is not None:
            found[(dataset, compressor, editor)] = k
    if not found:
        raise SystemExit(f"editors_kept.py: no editor × compressor entry of {args.run} has a finished replicate")
    print(
        f"\n## Kept fraction of the dense {args.criterion} (each order's final ÷ the editor's dense value), "
        "mean (replicate values)\n"
    )
    print("| dataset | compressor | editor | dense | strength | edit → compress | compress → edit |")
    print("|---|---|---|---|---|---|---|")
    for (dataset, compressor, editor), k in sorted(found.items()):
        reps = sorted(k["reps"])
        dense_text = spread([k["reps"][r]["dense"] for r in reps], 2)
        for i, v in enumerate(k["values"]):
            cols = []
            for first in (editor, compressor):
                o = next(o for o in k["orders"] if o[0] == first)
                cols.append(spread([k["reps"][r]["curves"][o][i] for r in reps], 2))
            print(f"| {dataset} | {compressor} | {editor} | {dense_text} | {v} | {cols[0]} | {cols[1]} |")
    print("\n## Normalised A and P (kept-fraction curves), mean (replicate values)\n")
    print("| dataset | compressor | editor | x interval | A | P | P ÷ w |")
    print("|---|---|---|---|---|---|---|")
    for (dataset, compressor, editor), k in sorted(found.items()):
        reps = sorted(k["reps"])
        cols = [spread([k["reps"][r][what] for r in reps]) for what in ("A", "P", "Pw")]
        print(f"| {dataset} | {compressor} | {editor} | [{k['x'][0]:.3f}, {k['x'][-1]:.3f}] | {' | '.join(cols)} |")
    print("\n## Editor against editor, normalised P ÷ w (first − second), per replicate\n")
    print(
        "The t-interval's spread has replicates − 1 degrees of freedom (1 with two replicates), and no "
        "correction is made for the number of pairs below: an interval that excludes 0 among many is "
        "suggestive, not a finding.\n"
    )
    print("| dataset | compressor | first | second | difference (replicates) | 95% t-interval |")
    print("|---|---|---|---|---|---|")
    groups: dict[tuple[str, str], list[str]] = {}
    for dataset, compressor, editor in sorted(found):
        groups.setdefault((dataset, compressor), []).append(editor)
    for (dataset, compressor), editors in groups.items():
        for a, b in itertools.combinations(editors, 2):
            ka, kb = found[(dataset, compressor, a)], found[(dataset, compressor, b)]
            reps = sorted(ka["reps"].keys() & kb["reps"].keys())
            if not reps:
                continue
            diffs = [ka["reps"][r]["Pw"] - kb["reps"][r]["Pw"] for r in reps]
            print(f"| {dataset} | {compressor} | {a} | {b} | {spread(diffs)} | {t_interval(diffs)} |")


if __name__ == "__main__":
    main()
