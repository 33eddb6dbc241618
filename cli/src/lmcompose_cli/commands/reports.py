"""Reports: ``report`` rebuilds a sweep's or study's tables, report.md and plots from its
run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lmcompose_cli.app import app
from lmcompose_cli.options import PlotsOption
from lmcompose_cli.render import print_line, print_report

if TYPE_CHECKING:
    from lmcompose.composability import Composability
    from lmcompose.intervals import APInterval
    from lmcompose.reports.study import StudyReport
    from lmcompose.reports.sweep import Report


@app.command(
    epilog="Examples: lmcompose report runs/sweep-1a2b3c; lmcompose report runs/study-paper-0a1b2c; "
    "lmcompose report runs/x --json; lmcompose report runs/x --no-plots"
)
def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            metavar="RUN", help="A sweep's or study's run folder (the one holding results.jsonl).", show_default=False
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print A, P, OI and MCE (and A/P intervals) as JSON instead of tables.")
    ] = False,
    plots: PlotsOption = True,
    axes: Annotated[
        str | None,
        typer.Option(
            "--axes",
            help="x axes of A and P, comma-separated: compression (1 − avg_bits/base_bits), strength, avg_bits, "
            "paper (raw average bits, as the paper's notebook); default compression,strength (a study: its "
            "first).",
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="A study's order-effect tables (E_OF, E_OS) at these strengths of the varied fields, e.g. "
            "bits=4,sparsity=0.45; default: each entry's middle value.",
        ),
    ] = None,
) -> None:
    """Rebuild a sweep's or study's tables, report.md and plots (and a study's rows.csv) from its results.jsonl and per_edit.jsonl."""  # noqa: E501 (the command's one-line help)
    from lmcompose.errors import DataError, UsageError
    from lmcompose.reports import folder_kind, write_report
    from lmcompose.reports.study import StudyReport
    from lmcompose.reports.tables import check_axes

    if not run_dir.is_dir():
        raise DataError(
            f"run folder {run_dir} does not exist: give the --out folder of an `lmcompose sweep` or `lmcompose study`"
        )
    study_folder = folder_kind(run_dir) == "study"
    chosen = check_axes([a.strip() for a in axes.split(",") if a.strip()] if axes is not None else None)
    strengths = _strengths(at) if at is not None else None
    if strengths and not study_folder:
        raise UsageError("--at picks a study's order-effect strengths; a sweep's report has no such table: drop --at")
    rep = write_report(run_dir, plots=plots, axes=chosen, at=strengths)
    if as_json:
        typer.echo(json.dumps(_as_json(rep), indent=2, default=str))
        return
    print_report(rep, tables=1 if study_folder else None)
    extra = f"; all rows: {rep.table_path}" if isinstance(rep, StudyReport) else ""
    figures = f" (+ {len(rep.plots)} plots in {run_dir / 'plots'})" if rep.plots else ""
    print_line(f"report: {rep.path}{extra}{figures}")


def _strengths(text: str) -> dict[str, float | str]:
    """``bits=4,sparsity=0.45`` as {field: value}; one UsageError naming a bad item."""
    from lmcompose.errors import UsageError

    out: dict[str, float | str] = {}
    for item in (t.strip() for t in text.split(",")):
        name, eq, value = item.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise UsageError(f"--at: {item!r} is not FIELD=VALUE; give e.g. --at bits=4,sparsity=0.45")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            out[name.strip()] = value.strip()
    return out


def _as_json(rep: Report | StudyReport) -> dict[str, dict[str, object]]:
    """A, P, OI and MCE of every pair (a study's keyed ``editor|dataset``), with the 95%
    bootstrap intervals of the edit criteria (from per_edit.jsonl) where there are some."""
    from lmcompose.reports.study import StudyReport

    comps: dict[str, Composability]
    ivs: dict[str, dict[str, APInterval]]
    if isinstance(rep, StudyReport):
        comps = {f"{e}|{d}": c for (e, d), c in rep.composability.items()}
        ivs = {f"{e}|{d}": v for (e, d), v in rep.intervals.items()}
    else:
        comps, ivs = rep.composability, rep.intervals
    out: dict[str, dict[str, object]] = {}
    for k, c in comps.items():
        out[k] = c.as_dict()
        if ivs.get(k):
            intervals: dict[str, object] = {}
            out[k]["intervals"] = intervals
            for name, iv in ivs[k].items():
                per_width = iv.P_per_width(c.interval)  # P's interval on the paper's [0, 1] scale
                intervals[name] = {
                    "A": list(iv.A),
                    "P": list(iv.P),
                    "P_normalized": list(per_width) if per_width else None,
                    "resamples": len(iv.samples.A),
                }
    return out
