"""The report of a study, rebuilt from its results.jsonl alone.

* **Table 1** (the paper's): A and P per compressor × dataset × criterion (edit success,
  generalization, locality, perplexity), mean ± sample std over replicates, with a 95%
  bootstrap interval over edits beside each edit criterion's A and P when the folder has
  per-edit scores (per_edit.jsonl; :mod:`lmcompose.intervals`);
* **Comparisons**: paired bootstrap differences of A and P between two compressors with one
  editor, or two editors with one compressor, on the same edits;
* **Figures 1–2** (``plots/fig1_<family>.png``): per compressor family, rows = datasets,
  columns = criteria, one line per compressor and order with ± std bands; every curve
  begins at strength 0, the dense edited model (for edit→compress it is the edited model
  itself; for compress→edit an uncompressed model edited is the same model);
* **Figure 3** (``plots/fig3_<compressor>.png``): per compressor paired with an editor, rows =
  datasets, the top-30 next-token logits of one edit's prompt on the base, edited and
  compressed models and after each order, at the strongest strength, the targets' first
  tokens marked (from the rows' ``topk`` records; a folder without them says so);
* **Figure 5** (``plots/fig5_nll.png``): the rise in edit NLL against the rise in general NLL
  from the dense edited model, per compressor, with the identity line (above it, edits
  decay faster than language modelling) and, beside it, its control: the rise in the NLL of
  facts that were never edited (``unedited_nll``; rows written before lmcompose 0.4 have
  none, and the figure and its caption say so);
* the final metrics of each (compressor, dataset) per order and strength;
* ``rows.csv``: every row flat, one column per field (``pandas.read_csv`` opens it).
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmcompose.api._values import to_int
from lmcompose.composability import (
    AXIS_LABELS,
    CRITERIA,
    Composability,
    SweepData,
    common_interval,
    composability,
    load_sweep,
    measured,
    row_order,
    row_step,
)
from lmcompose.errors import DataError
from lmcompose.intervals import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    EDIT_CRITERIA,
    APInterval,
    ComparisonContext,
    Difference,
    bootstrap_ap,
    compare,
    intervals_for,
    method_scores,
    same_edits,
)
from lmcompose.reports.figures import (
    METRIC_LABELS,
    figure3_notes,
    has_unedited_control,
    plot_family,
    plot_logits,
    plot_nll_decay,
)
from lmcompose.reports.order_effects import PairCell, order_effect_cells, order_effect_tables, plot_order_effects
from lmcompose.reports.tables import (
    NO_PER_EDIT_NOTE,
    Table,
    base_format_line,
    fmt_mean_std,
    fmt_p_per_width,
    fmt_with_interval,
    interval_caption,
    interval_text,
    locality_notes,
    order_text,
    p_width_caption,
)
from lmcompose.results import (
    RESULTS_FILE,
    flag_nonfinite,
    nonfinite_note,
    read_per_edit,
    read_rows,
    read_rows_checked,
    refuse_link,
    replace_atomic,
    write_text_atomic,
)
from lmcompose.studies._noise import NoiseFloor, noise_floor_table, noise_floors, noise_sweeps

REPORT_FILE = "report.md"
TABLE_FILE = "rows.csv"

__all__ = [
    "REPORT_FILE",
    "TABLE_FILE",
    "StudyData",
    "StudyReport",
    "build_study_report",
    "comparison_pairs",
    "comparisons_markdown",
    "final_metrics_table",
    "is_study",
    "load_study_rows",
    "render_study_markdown",
    "single_strength_table",
    "spreadsheet_cell",
    "study_comparisons",
    "table1",
    "write_flat_table",
    "write_study_report",
]


@dataclass
class StudyData:
    """A study's rows, split into one sweep per (entry, dataset)."""

    rows: list[dict[str, object]]
    run_id: str
    name: str
    model: str
    entries: list[str]
    datasets: list[str]
    sweeps: dict[tuple[str, str], SweepData]
    families: dict[str, str]  # entry -> family
    editors: dict[str, str | None]  # entry -> editor label
    dense: dict[
        tuple[str, str | None, int], dict[str, object]
    ]  # (dataset, editor step name, replicate) -> dense edit row
    notes: list[str] = field(default_factory=list)  # lines skipped, conflicting duplicates, NaN metrics
    #: the noise floor's repetitions: (entry, dataset, label) -> their sweep (kept out of ``sweeps``)
    noise: dict[tuple[str, str, str], SweepData] = field(default_factory=dict)
    compressors: dict[str, str | None] = field(default_factory=dict)  # entry -> compressor label
    unlearners: dict[str, str | None] = field(default_factory=dict)  # entry -> unlearner label

    def roles(self, entry: str) -> dict[str, str | None]:
        """The entry's editor, compressor and unlearner labels (None where it has none)."""
        return {
            "editor": self.editors.get(entry),
            "compressor": self.compressors.get(entry),
            "unlearner": self.unlearners.get(entry),
        }

    def editor_step(self, entry: str) -> str | None:
        """The editor step's name of a paired entry (None for a composed sequence)."""
        if self.editors.get(entry) is None:
            return None
        for r in self.rows:
            step = row_step(r) or {}
            if r["entry"] == entry and step.get("kind") == "edit":
                return _label_or_none(step.get("name"))
        return None


Intervals = dict[tuple[str, str], dict[str, APInterval]]  # (entry, dataset) -> criterion -> interval


@dataclass
class StudyReport:
    data: StudyData
    composability: dict[tuple[str, str], Composability]
    tables: list[Table]
    notes: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    path: Path | None = None
    table_path: Path | None = None
    intervals: Intervals = field(default_factory=dict)  # on each entry's own x interval
    comparisons: list[Difference] = field(default_factory=list)
    per_edit: bool = False  # the folder has per-edit scores (intervals and comparisons come from them)
    resamples: int = DEFAULT_RESAMPLES
    #: E_OF and E_OS of every method pair of two categories at one strength (the ICLR paper's)
    order_effects: list[PairCell] = field(default_factory=list)


def is_study(run_dir: str | Path) -> bool:
    """True if the folder's rows are a study's (they carry ``study`` and ``dataset``)."""
    path = Path(run_dir) / RESULTS_FILE
    return path.exists() and any("study" in r for r in read_rows(path)[:1])


def _label_or_none(value: object) -> str | None:
    """A row's label (an editor, a compressor, a step's name) as text; None where it has none."""
    return None if value is None else str(value)


def load_study_rows(source: str | Path | Sequence[Mapping[str, object]]) -> StudyData:
    rows: list[dict[str, object]]
    problems: list[str]
    if isinstance(source, str | Path):
        path = Path(source)
        path = path / RESULTS_FILE if path.is_dir() else path
        if not path.exists():
            raise DataError(f"{path} does not exist: give a study's run folder (the one holding results.jsonl)")
        rows, problems = read_rows_checked(path)
        where = str(path)
    else:
        rows, where, problems = [dict(r) for r in source], "the rows given", []
        for i, r in enumerate(rows):
            flagged = flag_nonfinite(r)
            if flagged:
                problems.append(nonfinite_note(f"row {i}", flagged))
    rows = [r for r in rows if r.get("study") is not None]
    if not rows:
        raise DataError(f"{where} holds no study rows: give the --out folder of `lmcompose study`")
    ids = list(dict.fromkeys(str(r["run_id"]) for r in rows))
    if len(ids) > 1:
        raise DataError(
            f"{where} mixes studies {', '.join(ids)}; keep one study per folder (merge combines shards of one)"
        )
    noise = noise_sweeps(rows)  # repetitions under another seed or thread count: not the study's cells
    rows = [r for r in rows if not r.get("noise")]
    entries = list(dict.fromkeys(str(r["entry"]) for r in rows))
    datasets = list(dict.fromkeys(str(r["dataset"]) for r in rows))
    sweeps: dict[tuple[str, str], SweepData] = {}
    for e in entries:
        for d in datasets:
            part = [r for r in rows if r["entry"] == e and r["dataset"] == d]
            if part:
                sweeps[(e, d)] = load_sweep(part)
    dense: dict[tuple[str, str | None, int], dict[str, object]] = {}
    for r in rows:
        step = row_step(r) or {}
        order = row_order(r)
        if r["position"] == 1 and step.get("kind") == "edit" and order and order[0] == step.get("name"):
            dense.setdefault((str(r["dataset"]), _label_or_none(step.get("name")), to_int(r["replicate"])), r)
    families = {str(r["entry"]): str(r.get("family") or "other") for r in rows}
    editors = {str(r["entry"]): _label_or_none(r.get("editor")) for r in rows}
    compressors = {str(r["entry"]): _label_or_none(r.get("compressor")) for r in rows}
    unlearners = {str(r["entry"]): _label_or_none(r.get("unlearner")) for r in rows}
    notes = problems + [f"{e} on {d}: {n}" for (e, d), sw in sweeps.items() for n in sw.notes]
    return StudyData(
        rows,
        ids[0],
        str(rows[0]["study"]),
        str(rows[0].get("model", "")),
        entries,
        datasets,
        sweeps,
        families,
        editors,
        dense,
        notes,
        noise,
        compressors,
        unlearners,
    )


def table1(
    data: StudyData,
    comps: Mapping[tuple[str, str], Composability],
    title: str | None = None,
    caption: str = "",
    intervals: Intervals | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    floors: Mapping[tuple[str, str, str], NoiseFloor] | None = None,
) -> Table:
    """A / P per (compressor, dataset) and criterion, with the axis and interval of each;
    with ``intervals`` (from per-edit scores), each edit criterion's A and P with its 95%
    bootstrap interval; an A at or below its noise floor (``floors``, from
    :func:`noise_floors`) is marked ≈noise."""
    floors = floors or {}
    present = [c for c in CRITERIA if any(c in comp.criteria for comp in comps.values())]
    rows = []
    one_order = False
    for (entry, ds), comp in comps.items():
        cells = [entry, ds]
        sweep = data.sweeps.get((entry, ds))
        single_order = sweep is not None and len(sweep.orders) < 2  # A = 0 by construction: no information
        one_order |= single_order
        for name in present:
            c = comp.criteria.get(name)
            if c is None:
                cells.append("–")
                continue
            n = len(c.replicates)
            iv = (intervals or {}).get((entry, ds), {}).get(name)
            a_text = "–" if single_order else fmt_with_interval(c.A_mean, c.A_std, n, 3, iv.A if iv else None)
            floor = floors.get((entry, ds, name))
            if not single_order and floor is not None and floor.dA is not None and c.A_mean is not None:
                a_text += " ≈noise" if c.A_mean <= floor.dA else ""
            p_text = fmt_with_interval(c.P_mean, c.P_std, n, 3, iv.P if iv else None)
            cells.append(f"{a_text} / {p_text} / {fmt_p_per_width(comp, name, n, 3, iv)}")
        n_reps = max((len(c.replicates) for c in comp.criteria.values()), default=0)
        rows.append([*cells, f"{comp.x_axis} {interval_text(comp)}", str(n_reps)])
    return Table(
        title or "Table 1: composability A / P per compressor and dataset",
        [
            "compressor",
            "dataset",
            *[METRIC_LABELS.get(c, c).split(" (")[0] for c in present],
            "x interval",
            "replicates",
        ],
        rows,
        (
            (caption + " Each cell: A / P / P ÷ w.")
            if caption
            else (
                "Each cell: A / P / P ÷ w (mean ± sample std over replicates), A and P integrated over each row's own "
                "x interval. A: area between the best and the worst order (0 = the order does not matter); P: area "
                "between the best order and 1 (0 = nothing lost). x: "
                + "; ".join(sorted({AXIS_LABELS[c.x_axis] for c in comps.values()}))
                + " (docs/sweeps.md)."
            )
        )
        + " "
        + p_width_caption()
        + (" An entry run in one order has no A (it needs two orders to compare): –." if one_order else "")
        + (" " + interval_caption(resamples, seed) if intervals is not None else ""),
    )


def single_strength_table(data: StudyData, comps: Mapping[tuple[str, str], Composability]) -> Table:
    """OI and MCE of the entries with one strength (A and P need two)."""
    rows = []
    for (entry, ds), comp in comps.items():
        for name in CRITERIA:
            c = comp.criteria.get(name)
            if c is None:
                continue
            n = len(c.replicates)
            oi, oi_s = c.per_strength(0, "OI")
            mce, mce_s = c.per_strength(0, "MCE")
            rows.append(
                [entry, ds, name, str(comp.values[0]), fmt_mean_std(oi, oi_s, n, 3), fmt_mean_std(mce, mce_s, n, 3)]
            )
    return Table(
        "One strength: order interference (OI) and MCE",
        ["compressor", "dataset", "criterion", "strength", "OI", "MCE"],
        rows,
        "A and P need two strengths or more; at one strength, OI = best − worst order and MCE = 1 − best order.",
    )


def final_metrics_table(data: StudyData, entry: str, ds: str) -> Table:
    sweep = data.sweeps[(entry, ds)]
    keys = [
        k
        for k in ("edit_success", "generalization", "locality", "multi_hop_accuracy", "perplexity", "avg_bits")
        if any(r.get(k) is not None for r in sweep.rows)  # multi-hop: datasets with MQuAKE-style cases only
    ]
    rows = []
    for o in sweep.orders:
        for v in sweep.values:
            got = [sweep.final[(o, v, r)] for r in sweep.replicates if (o, v, r) in sweep.final]
            if got:
                rows.append([order_text(o), str(v), *[_mean_text(got, k) for k in keys]])
    return Table(
        f"{entry} on {ds}: final model per order and strength",
        ["order", sweep.vary, *keys],
        rows,
        "Means over replicates.",
    )


def _mean_text(rows: Sequence[Mapping[str, object]], key: str) -> str:
    got = measured(rows, key)
    if not got:
        return "–"
    m = statistics.fmean(got)
    return f"{m:.2f}" if key == "perplexity" else f"{m:.4f}"


def build_study_report(
    run_dir: str | Path | StudyData,
    axis: str | None = None,
    per_edit: Mapping[tuple[str, int], Mapping[str, object]] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    at: Mapping[str, object] | None = None,
) -> StudyReport:
    """Table 1 and the rest on ``axis`` (default: compression where average bits change,
    else strength, per compressor); the order-effect tables (E_OF, E_OS) at the strength
    ``at`` gives per varied field (default: each entry's middle value). ``per_edit`` (read
    from the folder's per_edit.jsonl when ``run_dir`` is a folder) gives the bootstrap
    intervals (``resamples``, ``seed``) and the comparisons; without it, the report says it
    has none."""
    from lmcompose.reports.tables import check_axes

    check_axes([axis] if axis else None)
    data = run_dir if isinstance(run_dir, StudyData) else load_study_rows(run_dir)
    if per_edit is None and not isinstance(run_dir, StudyData):
        per_edit = read_per_edit(Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent, data.run_id)
    per_edit = per_edit or {}
    comps: dict[tuple[str, str], Composability] = {}
    notes: list[str] = list(data.notes) + locality_notes(data.rows)
    for key, sweep in data.sweeps.items():
        if not sweep.complete:
            notes.append(f"{key[0]} on {key[1]} is not complete: A/P use the replicates whose cells are all finished")
        try:
            c = composability(sweep, x=axis)
        except DataError as exc:
            notes.append(f"{key[0]} on {key[1]}: {exc}")
            continue
        if c.criteria:
            comps[key] = c
            notes.extend(f"{key[0]} on {key[1]}: {n}" for n in c.notes)
    multi = {k: c for k, c in comps.items() if not c.single}
    own: Intervals | None = None
    if per_edit:
        own = {}
        for key, c in multi.items():
            own[key], why = intervals_for(data.sweeps[key], c, per_edit, None, resamples, seed)
            notes.extend(f"{key[0]} on {key[1]}: {n}" for n in why)
    floors = noise_floors(data.sweeps, comps, data.noise)
    tables = [table1(data, multi, intervals=own, resamples=resamples, seed=seed, floors=floors)]
    for ds in data.datasets:
        on_ds = {k: c for k, c in multi.items() if k[1] == ds}
        shared, interval = common_interval(on_ds)
        if interval is not None:
            common: Intervals | None = None
            if per_edit:
                common = {
                    k: intervals_for(data.sweeps[k], on_ds[k], per_edit, shared[k].x, resamples, seed)[0]
                    for k in shared
                }
            tables.append(
                table1(
                    data,
                    shared,
                    f"Table 1 on the common interval: {ds}",
                    (
                        f"Every compressor on {ds} interpolated onto x in [{interval[0]:.4g}, {interval[1]:.4g}], "
                        f"where all of them "
                        "have data, so the rows compare like with like (docs/sweeps.md)."
                    ),
                    common,
                    resamples,
                    seed,
                )
            )
    noise_table = noise_floor_table(floors)
    if noise_table is not None:
        tables.append(noise_table)
    single = {k: c for k, c in comps.items() if c.single}
    if single:
        tables.append(single_strength_table(data, single))
    effects = order_effect_cells(data, comps, at, per_edit, resamples, seed)
    tables += order_effect_tables(effects)
    tables += [final_metrics_table(data, e, d) for (e, d) in data.sweeps]
    comparisons: list[Difference] = []
    if per_edit:
        comparisons, why = study_comparisons(data, multi, per_edit, resamples, seed)
        notes.extend(why)
    else:
        notes.append(NO_PER_EDIT_NOTE.format(extra=" and there are no paired comparisons", what="study"))
    return StudyReport(
        data,
        comps,
        tables,
        notes,
        intervals=own or {},
        comparisons=comparisons,
        per_edit=bool(per_edit),
        resamples=resamples,
        order_effects=effects,
    )


def comparison_pairs(data: StudyData) -> list[tuple[str, str, str, str]]:
    """(kind, shared method, first entry, second entry) of every pair compared: two
    compressors run with one editor, and two editors run with one compressor (entries in
    the study's order; composed entries, with no editor, are left out)."""
    compressors = data.compressors
    out = []
    seen: set[tuple[str, str]] = set()  # two entries with one editor and one compressor: compared once
    for kind, by in (("compressors", data.editors), ("editors", compressors)):
        groups: dict[str, list[str]] = {}
        for e in data.entries:
            # an editor paired with an unlearner (no compressor) is not compared here
            if by.get(e) is not None and data.editors.get(e) is not None and compressors.get(e) is not None:
                groups.setdefault(str(by[e]), []).append(e)
        for shared, members in groups.items():
            for i, a in enumerate(members):
                for b in members[i + 1 :]:
                    if (a, b) not in seen:
                        seen.add((a, b))
                        out.append((kind, shared, a, b))
    return out


def study_comparisons(
    data: StudyData,
    comps: Mapping[tuple[str, str], Composability],
    per_edit: Mapping[tuple[str, int], Mapping[str, object]],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[list[Difference], list[str]]:
    """Paired differences of A and P of each edit criterion for every pair of
    :func:`comparison_pairs` on each dataset, on the pair's common interval, from the same
    resampled edits (the pair must have been scored on the same edits)."""
    out: list[Difference] = []
    notes: list[str] = []
    for ds in data.datasets:
        for kind, shared_method, first, second in comparison_pairs(data):
            a, b = (first, ds), (second, ds)
            if a not in comps or b not in comps:
                continue
            shared, interval = common_interval({a: comps[a], b: comps[b]})
            if interval is None:
                notes.append(f"{first} vs {second} on {ds}: no common x interval, not compared")
                continue
            for criterion in EDIT_CRITERIA:
                if criterion not in shared[a].criteria or criterion not in shared[b].criteria:
                    continue
                sa, _ = method_scores(data.sweeps[a], comps[a], per_edit, criterion)
                sb, _ = method_scores(data.sweeps[b], comps[b], per_edit, criterion)
                if sa is None or sb is None:
                    continue  # the intervals' notes say why
                if not same_edits(sa, sb):
                    notes.append(f"{first} vs {second} on {ds}: not scored on the same edits, not compared")
                    break
                ca, cb = shared[a].criteria[criterion], shared[b].criteria[criterion]
                a_first, a_second, p_first, p_second = ca.A_mean, cb.A_mean, ca.P_mean, cb.P_mean
                if a_first is None or a_second is None or p_first is None or p_second is None:
                    continue
                point = {"A": (a_first, a_second), "P": (p_first, p_second)}
                grid = shared[a].x
                context = ComparisonContext(dataset=ds, kind=kind, shared=shared_method, interval=interval)
                # an entry run in one order has no A (Table 1 shows –): compare P only
                one_order = len(data.sweeps[a].orders) < 2 or len(data.sweeps[b].orders) < 2
                out += [
                    d
                    for d in compare(
                        first,
                        second,
                        bootstrap_ap(sa, grid, resamples, seed),
                        bootstrap_ap(sb, grid, resamples, seed),
                        point,
                        context=context,
                    )
                    if not (one_order and d.what == "A")
                ]
    return out, notes


def comparisons_markdown(comparisons: Sequence[Difference], resamples: int = DEFAULT_RESAMPLES) -> list[str]:
    """The report's Comparisons section: one line per pair, dataset and criterion."""
    if not comparisons:
        return []
    lines = [
        "## Comparisons",
        "",
        "Paired differences (first − second) of A and P between two compressors run with the same editor, and two "
        "editors run with the same compressor, on the edits both were scored on, on the pair's common x interval. "
        f"95% percentile intervals and two-sided p-values from {resamples} bootstrap resamples of the edits within "
        "each replicate (the same resampled edits for both methods); a difference whose interval contains 0 is not "
        "distinguishable (docs/studies.md).",
        "",
    ]
    heading = None
    by_line: dict[tuple[str, str, str, str, str, str], list[Difference]] = {}
    for d in comparisons:
        by_line.setdefault(
            (d.context["kind"], d.context["shared"], d.context["dataset"], d.first, d.second, d.criterion), []
        ).append(d)
    for (kind, shared, ds, first, second, criterion), diffs in by_line.items():
        title = f"### {kind.capitalize()} compared with {shared} on {ds}"
        if title != heading:
            lines += ([""] if heading else []) + [title, ""]
            heading = title
        lo, hi = diffs[0].context["interval"]
        lines.append(
            f"- {first} vs {second} on {ds} (x in [{lo:.4g}, {hi:.4g}]), {criterion}: "
            + "; ".join(d.clause() for d in diffs)
        )
    return [*lines, ""]


# --------------------------------------------------------------------------------------
# the flat table
# --------------------------------------------------------------------------------------


def _flat(row: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in row.items():
        if k == "step":
            step = row_step(row) or {}
            out["step_name"] = step.get("name")
            out["step_kind"] = step.get("kind")
            out["step_strength"] = step.get("strength")
            out["step_recompress"] = bool(step.get("recompress", False))
            out["step_config"] = json.dumps(step.get("config"), sort_keys=True) if step else None
        elif k == "order":
            out["order"] = " > ".join(row_order(row))
        elif isinstance(v, dict | list):
            out[k] = json.dumps(v, sort_keys=True)
        else:
            out[k] = v
    return out


#: what a spreadsheet takes for the start of a formula (OWASP's list for CSV injection)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_cell(value: object) -> object:
    """``value`` as a CSV cell a spreadsheet shows as text: a string that starts like a
    formula (``=``, ``+``, ``-``, ``@``, a tab or a CR) gets a leading ``'`` — a study's,
    entry's or plugin's name is written by whoever wrote the study file — except a plain
    number such as ``-0.5``. Numbers and None are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and _NUMBER.fullmatch(value) is None:
        return "'" + value
    return value


def write_flat_table(rows: Sequence[Mapping[str, object]], path: Path) -> Path:
    """Every row as one CSV line (nested fields as JSON text), columns in first-seen order;
    every header and text cell through :func:`spreadsheet_cell`."""
    flat = [_flat(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow([spreadsheet_cell(c) for c in columns])
            writer.writerows([spreadsheet_cell(r.get(c)) for c in columns] for r in flat)

    return replace_atomic(path, write)


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------


def write_study_report(
    run_dir: str | Path, plots: bool = True, axis: str | None = None, at: Mapping[str, object] | None = None
) -> StudyReport:
    """Build the study's report from ``run_dir/results.jsonl`` and write report.md,
    rows.csv and plots/ there (``at``: the order-effect strengths, :func:`build_study_report`)."""
    run_dir = Path(run_dir)
    report = build_study_report(run_dir, axis, at=at)
    data = report.data
    report.table_path = write_flat_table(data.rows, run_dir / TABLE_FILE)
    if plots:
        pdir = run_dir / "plots"
        refuse_link(pdir)
        pdir.mkdir(exist_ok=True)
        for family in dict.fromkeys(data.families.values()):
            p = plot_family(data, family, pdir / f"fig1_{_slug(family)}.png")
            if p is not None:
                report.plots.append(p)
        p = plot_nll_decay(data, pdir / "fig5_nll.png")
        if p is not None:
            report.plots.append(p)
        report.notes.extend(figure3_notes(data))
        for entry in data.entries:
            p = plot_logits(data, entry, pdir / f"fig3_{_slug(entry)}.png")
            if p is not None:
                report.plots.append(p)
        report.plots += plot_order_effects(
            report.order_effects, data.model, lambda title, ds: pdir / f"order_{_slug(title)}_{_slug(ds)}.png"
        )
    write_text_atomic(run_dir / REPORT_FILE, render_study_markdown(report, run_dir))
    report.path = run_dir / REPORT_FILE
    return report


def _figure_caption(p: Path) -> str:
    if p.name.startswith("order_"):
        return (
            f"Order effects ({p.stem.removeprefix('order_')}): per method pair at one strength, E_OF (top: 1 − the "
            "better order's normalized criterion) and E_OS (bottom: the orders' difference), mean over replicates; "
            "0 is best; the table of the same name gives each cell's strength and spread."
        )
    if p.name.startswith("fig5"):
        return (
            "Fig. 5: the rise in edit NLL against the rise in general NLL from the dense edited model; above "
            "the identity line, edits decay faster than language modelling."
        )
    if p.name.startswith("fig3"):
        return (
            f"Fig. 3 ({p.stem.removeprefix('fig3_')}): the top-30 next-token logits of one edit's prompt per "
            "dataset (`topk_edit`, default the first edit) on the base, edited and compressed models and after "
            "each order, at the strongest strength; red: the new target's first token, blue: the true target's, "
            "dashed lines at their logits, their ranks in each panel."
        )
    return (
        f"Fig. 1–2 ({p.stem.removeprefix('fig1_')}): rows = datasets, columns = criteria; one line "
        "per compressor and order, ± std over replicates; strength 0 is the dense edited model."
    )


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_") or "other"


def _mapping(value: object, what: str) -> Mapping[str, object]:
    """``value`` (``what`` of a run folder's config.yaml) as the mapping it must be."""
    if not isinstance(value, Mapping):
        raise DataError(f"config.yaml: {what} is {value!r}, not a mapping; the run folder was edited by hand?")
    return value


def _counts_lines(run_dir: Path | None) -> list[str]:
    if run_dir is None or not (run_dir / "config.yaml").exists():
        return []
    from lmcompose.results import read_yaml

    config: Mapping[str, object] = read_yaml(run_dir / "config.yaml")
    counts = _mapping(config.get("counts") or {}, "counts")
    if not counts.get("study"):
        return []
    s = _mapping(counts["study"], "counts.study")
    sep = _mapping(counts.get("separate_sweeps") or {}, "counts.separate_sweeps")
    ind = _mapping(counts.get("independent_cells") or {}, "counts.independent_cells")

    def fmt(c: Mapping[str, object]) -> str:
        edits, compressions, evaluations = c.get("edits", 0), c.get("compressions", 0), c.get("evaluations", 0)
        return f"{edits} edits + {compressions} compressions, {evaluations} evaluations"

    return [
        "",
        "Work (planned from the study file): this study computes " + fmt(s) + "; as one sweep per compressor and "
        "dataset it would be " + fmt(sep) + "; every cell on its own " + fmt(ind) + ".",
    ]


def _fig5_caption(data: StudyData) -> str:
    text = (
        "Fig. 5: the rise in edit NLL against the rise in general NLL from the dense edited model; above "
        "the identity line, edits decay faster than language modelling."
    )
    if has_unedited_control(data):
        return text + (
            " Dotted, hollow markers: the control, the NLL of the true targets of facts no edit touched "
            "(`unedited_nll`: records of the same dataset outside every edit batch, as many as the edits) under "
            "the same compression; where edits rise above their control, compression undoes edits faster than "
            "it erodes what the model knew."
        )
    return text + (
        " This figure has no control: the rows have no `unedited_nll` (the NLL of facts never edited, measured "
        "since lmcompose 0.4), so it cannot show whether edits decay faster than unedited facts; rerun the study "
        "to draw it."
    )


def render_study_markdown(report: StudyReport, run_dir: Path | None = None) -> str:
    d = report.data
    reps = sorted({to_int(r["replicate"]) for r in d.rows})
    lines = [
        f"# Study report: {d.name}",
        "",
        f"- study id: `{d.run_id}`; model: {d.model}",
        base_format_line(d.rows, d.model),
        f"- datasets: {', '.join(d.datasets)}",
        f"- compressors: {', '.join(f'{e} ({d.families[e]})' for e in d.entries)}",
        f"- replicates: {len(reps)}; rows: {len(d.rows)} (rebuilt from results.jsonl; all of them in `{TABLE_FILE}`)",
        *_counts_lines(run_dir),
        "",
    ]
    for n in report.notes:
        lines += [f"> note: {n}", ""]
    lines += [t.markdown() for t in report.tables if not t.title.endswith("final model per order and strength")]
    lines += comparisons_markdown(report.comparisons, report.resamples)
    if report.plots:
        lines += ["## Figures", ""]
        for p in report.plots:
            rel = p.relative_to(run_dir) if run_dir is not None and p.is_relative_to(run_dir) else p
            caption = _fig5_caption(d) if p.name.startswith("fig5") else _figure_caption(p)
            lines += [f"![{p.stem}]({rel.as_posix()})", "", caption, ""]
    lines += ["## Final models", ""]
    lines += [t.markdown() for t in report.tables if t.title.endswith("final model per order and strength")]
    return "\n".join(lines).rstrip() + "\n"
