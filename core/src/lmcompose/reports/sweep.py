"""The report of a sweep, rebuilt from its results.jsonl (and per_edit.jsonl, for the
bootstrap intervals of A and P): tables (A/P, OI/MCE, final metrics, metrics after every
step; :mod:`lmcompose.reports.tables`), ``report.md`` and ``plots/*.png``
(:mod:`lmcompose.reports.figures`) in the run folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmcompose.composability import Composability, SweepData, available_axes, composability, load_sweep
from lmcompose.errors import DataError
from lmcompose.intervals import DEFAULT_RESAMPLES, DEFAULT_SEED, EDIT_CRITERIA, APInterval, intervals_for
from lmcompose.reports.tables import (
    NO_PER_EDIT_NOTE,
    Table,
    ap_table,
    base_format_line,
    check_axes,
    final_table,
    locality_notes,
    oi_table,
    order_text,
    step_table,
)
from lmcompose.results import read_per_edit, refuse_link, write_text_atomic

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"

__all__ = [
    "PLOTS_DIR",
    "PLOT_CAPTIONS",
    "REPORT_FILE",
    "Report",
    "build_report",
    "render_markdown",
    "write_sweep_report",
]


@dataclass
class Report:
    data: SweepData
    composability: dict[str, Composability]
    tables: list[Table]
    step_table: Table
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path: Path | None = None
    intervals: dict[str, dict[str, APInterval]] = field(default_factory=dict)  # axis -> criterion -> interval


def build_report(
    run: str | Path | SweepData,
    axes: Sequence[str] | None = None,
    per_edit: Mapping[tuple[str, int], Mapping[str, object]] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Report:
    """Tables and composability of a sweep from its results.jsonl, on ``axes`` (default:
    compression when average bits change, and strength); the edit criteria's A and P with
    bootstrap intervals from ``per_edit`` (read from the folder's per_edit.jsonl when
    ``run`` is a path; ``resamples``, ``seed``)."""
    data = run if isinstance(run, SweepData) else load_sweep(run)
    if per_edit is None and not isinstance(run, SweepData):
        per_edit = read_per_edit(Path(run) if Path(run).is_dir() else Path(run).parent, data.run_id)
    per_edit = per_edit or {}
    comps: dict[str, Composability] = {}
    notes: list[str] = list(data.notes) + locality_notes(data.rows)
    if not data.complete:
        notes.append(
            "the sweep is not complete (interrupted?): rerun the same `lmcompose sweep` command to finish it; "
            "A/P use the replicates whose cells are all finished"
        )
    for axis in check_axes(axes) or available_axes(data):
        try:
            c = composability(data, x=axis)
        except DataError as exc:
            notes.append(str(exc))
            continue
        if c.criteria:
            comps[axis] = c
            notes.extend(n for n in c.notes if n not in notes)
    intervals: dict[str, dict[str, APInterval]] = {}
    if per_edit:
        for axis, c in comps.items():
            if not c.single:
                intervals[axis], why = intervals_for(data, c, per_edit, None, resamples, seed)
                notes.extend(n for n in why if n not in notes)
    elif any(name in c.criteria for c in comps.values() if not c.single for name in EDIT_CRITERIA):
        notes.append(NO_PER_EDIT_NOTE.format(extra="", what="sweep"))
    tables = []
    for axis, c in comps.items():
        if not c.single:  # one strength has no A and P: its OI and MCE are in their own table
            tables.append(ap_table(c, data, intervals.get(axis) if per_edit else None))
    if comps:
        tables.append(oi_table(next(iter(comps.values())), data))
    tables.append(final_table(data))
    return Report(data, comps, tables, step_table(data), notes=notes, intervals=intervals)


def write_sweep_report(run_dir: str | Path, plots: bool = True, axes: Sequence[str] | None = None) -> Report:
    """Build the report of the sweep in ``run_dir`` and write report.md and plots/*.png there."""
    from lmcompose.reports import figures as plotting

    run_dir = Path(run_dir)
    report = build_report(run_dir, axes)
    data = report.data
    written: list[Path] = []
    if plots:
        pdir = run_dir / PLOTS_DIR
        refuse_link(pdir)
        pdir.mkdir(exist_ok=True)
        for p in (
            plotting.plot_curves(data, pdir / "curves.png"),
            *(
                plotting.plot_composability(
                    c, data, pdir / ("composability.png" if i == 0 else f"composability_{axis}.png")
                )
                for i, (axis, c) in enumerate(report.composability.items())
            ),
            plotting.plot_nll(data, pdir / "nll.png"),
            plotting.plot_topk(data, pdir / "topk.png"),
        ):
            if p is not None:
                written.append(p)
    report.plots = written
    write_text_atomic(run_dir / REPORT_FILE, render_markdown(report, run_dir))
    report.path = run_dir / REPORT_FILE
    return report


PLOT_CAPTIONS = {
    "curves.png": "Final-model metrics against strength, one line per order (paper Fig. 1–2).",
    "composability.png": "Normalized criteria per order with the A and P areas shaded, on the report's first x axis "
    "(Fig. 4).",
    "composability_strength.png": "The same with x = the normalized strength.",
    "nll.png": "Edit NLL and general NLL of the final model against strength (Fig. 5).",
    "topk.png": "Top-k next tokens of the first edit's prompt before and after each step, strongest strength (Fig. 3).",
}


def _count(value: object) -> int:
    """How many items a row's list field holds (0 where it has none)."""
    return len(value) if isinstance(value, list | tuple) else 0


def render_markdown(report: Report, run_dir: Path | None = None) -> str:
    d = report.data
    first = d.rows[0]
    lines = [
        f"# Sweep report: {d.model}",
        "",
        f"- run id: `{d.run_id}`",
        base_format_line(d.rows, d.model),
        f"- orders: {'; '.join(order_text(o) for o in d.orders)}",
        f"- varied: `{d.vary}` = {', '.join(str(v) for v in d.values)}",
        f"- replicates: {len(d.replicates)}; edits per replicate: {_count(first.get('edit_ids'))}",
        f"- constraint policy: {d.policy}",
        f"- rows: {len(d.rows)} (rebuilt from results.jsonl)",
        "",
        "Criteria are normalized to [0, 1], higher = better: edit success, generalization and locality as measured; "
        "perplexity as base perplexity / perplexity (clipped to 1). x is compression, 1 − avg_bits / base_bits "
        "(0 = uncompressed), when average bits change over the sweep, and the normalized strength too; each table "
        "says its interval. See docs/sweeps.md.",
        "",
    ]
    for n in report.notes:
        lines += [f"> note: {n}", ""]
    lines += ["## Composability", ""]
    for t in report.tables:
        if t.title.startswith("Composability") or t.title.startswith("Order interference"):
            lines += [t.markdown()]
    lines += ["## Metrics", ""]
    for t in report.tables:
        if t.title.startswith("Final"):
            lines += [t.markdown()]
    lines += [report.step_table.markdown()]
    if report.plots:
        lines += ["## Plots", ""]
        for p in report.plots:
            rel = p.relative_to(run_dir) if run_dir is not None and p.is_relative_to(run_dir) else p
            lines += [f"![{p.stem}]({rel.as_posix()})", "", PLOT_CAPTIONS.get(p.name, ""), ""]
    return "\n".join(lines).rstrip() + "\n"
