"""The tables both reports build (a sweep's, a study's) and how they write numbers: A and P
with their intervals, OI and MCE, the final metrics, the metrics after every step.

The CLI prints the same :class:`Table` objects that go into report.md, so the numbers in the
terminal and in the file are the same strings.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lmcompose.composability import (
    AXIS_LABELS,
    CRITERIA,
    X_AXES,
    Composability,
    SweepData,
    measured,
    row_position,
    row_step,
)
from lmcompose.errors import DataError
from lmcompose.intervals import DEFAULT_RESAMPLES, DEFAULT_SEED, LEVEL, APInterval, contains_zero

METRIC_COLUMNS = ("edit_success", "generalization", "locality", "perplexity", "avg_bits", "sparsity")
NO_PER_EDIT_NOTE = (
    "this folder has no per-edit scores (per_edit.jsonl), so A and P have no bootstrap intervals"
    "{extra}; rerun the {what} into a new folder to get them"
)

__all__ = [
    "METRIC_COLUMNS",
    "NO_PER_EDIT_NOTE",
    "Table",
    "ap_table",
    "base_format_line",
    "check_axes",
    "final_table",
    "fmt_mean_std",
    "fmt_p_per_width",
    "fmt_with_interval",
    "interval_caption",
    "interval_text",
    "locality_notes",
    "oi_table",
    "order_text",
    "p_width_caption",
    "step_table",
]


def locality_notes(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """What ``locality`` means in ``rows``, where it is not the default (preservation of the
    unedited model's answers): the paper's score (protocol paper), or rows of an lmcompose
    before 0.4, whose default scored the neighbours' ground-truth answers."""
    scorers = {
        str(r.get("locality_scorer")) for r in rows if r.get("locality") is not None and r.get("locality_scorer")
    }
    out = []
    if "neighbour_knowledge" in scorers:
        out.append(
            "locality here is the paper's (protocol paper; composable-interventions scores it with "
            "f1_locality_generate): F1 of the greedy answer against each neighbour prompt's ground-truth answer "
            "(neighbour_knowledge), which measures what the model knows of the neighbours, not what an edit left "
            "unchanged; locality_preservation in the rows is that (docs/metrics.md)"
        )
    earlier = scorers & {"f1", "accuracy", "drift"}
    if earlier:
        out.append(
            f"rows scored locality with {', '.join(sorted(earlier))} (lmcompose before 0.4): f1 and accuracy score the "
            "neighbours' ground-truth answers (now neighbour_knowledge), and drift counted the prompt's positions "
            "too; they are not the preservation score newer rows call locality (docs/metrics.md)"
        )
    return out


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.caption:
            lines += [self.caption, ""]
        lines.append("| " + " | ".join(_cell(c) for c in self.columns) + " |")
        lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|")
        lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """A cell's text with its pipes escaped, so that |ΔA| or a cell id stays one cell."""
    return str(text).replace("\\|", "|").replace("|", "\\|")


def fmt_mean_std(mean: float | None, std: float | None, n: int, digits: int = 4) -> str:
    if mean is None:
        return "–"
    if n > 1 and std is not None:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def fmt_with_interval(
    mean: float | None, std: float | None, n: int, digits: int, interval: tuple[float, float] | None
) -> str:
    """``fmt_mean_std`` with the 95% interval beside it (``0.047 ± 0.012 [0.031, 0.066]``),
    and ``n.d.`` when the interval contains 0 (not distinguishable from 0)."""
    text = fmt_mean_std(mean, std, n, digits)
    if interval is None or mean is None:
        return text
    text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text + " n.d." if contains_zero(interval) else text


def interval_caption(resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> str:
    """What the brackets beside A and P are (a table caption's last sentences)."""
    return (
        f"[lo, hi]: {round(LEVEL * 100)}% bootstrap interval over the edits ({resamples} resamples of the edits "
        f"within each replicate, the same for every state and order; seed {seed}; docs/studies.md); perplexity is "
        "one number per model state, not per edit, so it has none. n.d.: the interval contains 0, not "
        "distinguishable from 0."
    )


def p_width_caption(label: str = "P ÷ w") -> str:
    """What the normalized P beside the raw one is (a table caption's sentence)."""
    return (
        f"{label}: P divided by the width w of the x interval, in [0, 1], the paper's scale (its Appendix B "
        "integrates over a strength γ in [0, 1]): the share of the criterion the better order loses, on average "
        "over the interval. A and P themselves are raw areas in units of x, at most w."
    )


def fmt_p_per_width(comp: Composability, name: str, n: int, digits: int, interval: APInterval | None) -> str:
    """P ÷ the interval's width of criterion ``name`` (mean ± std over replicates), with its
    bootstrap interval divided the same way when ``interval`` is given."""
    mean, std = comp.P_normalized(name)
    return fmt_with_interval(mean, std, n, digits, interval.P_per_width(comp.interval) if interval else None)


def base_format_line(rows: Sequence[Mapping[str, object]], model: str) -> str:
    """The report header's line on the base checkpoint's storage format (rows' ``base_format``,
    :mod:`lmcompose.models.formats`), and what a quantized one means for the "dense" numbers."""
    from lmcompose.models.formats import is_quantized_format
    from lmcompose.models.loading import NAMED_MODELS

    found = list(dict.fromkeys(str(r["base_format"]) for r in rows if r.get("base_format")))
    if not found:
        named = NAMED_MODELS.get(model)
        known = (
            f"; the named model `{model}` is loaded from a `{named.format}` checkpoint (docs/models.md)"
            if named is not None and named.format
            else ""
        )
        return f"- base checkpoint: not recorded in these rows (written before rows carried `base_format`){known}"
    line = "- base checkpoint: " + ", ".join(f"`{f}`" for f in found)
    if len(found) > 1:
        line += " (the rows mix base checkpoints)"
    older = sum(1 for r in rows if not r.get("base_format"))
    if older:  # a folder resumed with a version that records it
        line += f" (not recorded in {older} older row{'s' if older > 1 else ''})"
    if any(is_quantized_format(f) for f in found):
        line += (
            " — a quantized checkpoint, dequantized to compute: the dense model (strength 0, avg_bits 16) is these "
            "weights, not a full-precision model, and every compressor's bits are relative to them (docs/models.md)"
        )
    return line


def _fmt_metric(key: str, v: float | None) -> str:
    if v is None:
        return "–"
    if key == "perplexity":
        return f"{v:.2f}" if v < 1e5 else f"{v:.3g}"
    if key == "flops":
        return f"{v:.3g}"
    return f"{v:.4f}" if key != "avg_bits" else f"{v:.3f}"


def order_text(order: tuple[str, ...] | list[str]) -> str:
    return " → ".join(order)


def interval_text(comp: Composability) -> str:
    lo, hi = comp.interval
    return f"[{lo:.4g}, {hi:.4g}]"


def ap_table(comp: Composability, data: SweepData, intervals: dict[str, APInterval] | None = None) -> Table:
    rows = []
    for name in CRITERIA:
        c = comp.criteria.get(name)
        if c is None:
            continue
        n = len(c.replicates)
        iv = (intervals or {}).get(name)
        rows.append(
            [
                name,
                fmt_with_interval(c.A_mean, c.A_std, n, 4, iv.A if iv else None),
                fmt_with_interval(c.P_mean, c.P_std, n, 4, iv.P if iv else None),
                fmt_p_per_width(comp, name, n, 4, iv),
                interval_text(comp),
                str(n),
            ]
        )
    k = len(data.replicates)
    spread = f"mean ± sample std over {k} replicates" if k > 1 else "one replicate"
    return Table(
        f"Composability A and P (x = {comp.x_axis})",
        ["criterion", "A", "P", "P ÷ w", "x interval", "replicates"],
        rows,
        f"x = {AXIS_LABELS[comp.x_axis]}; integrated over the x interval; {len(comp.orders)} orders; {spread}. "
        "A: area between the best and the worst order (0 = order does not matter); "
        "P: area between the best order and 1 (0 = nothing lost). "
        + p_width_caption()
        + (" " + interval_caption() if intervals is not None else ""),
    )


def oi_table(comp: Composability, data: SweepData) -> Table:
    rows = []
    for name in CRITERIA:
        c = comp.criteria.get(name)
        if c is None:
            continue
        n = len(c.replicates)
        for j, v in enumerate(comp.values):
            oi, oi_s = c.per_strength(j, "OI")
            mce, mce_s = c.per_strength(j, "MCE")
            rows.append([name, str(v), f"{comp.x[j]:.3f}", fmt_mean_std(oi, oi_s, n), fmt_mean_std(mce, mce_s, n)])
    return Table(
        "Order interference (OI) and MCE per strength",
        ["criterion", data.vary or "strength", "x", "OI", "MCE"],
        rows,
        "OI = best − worst order at that strength; MCE = 1 − best order (both on the normalized criterion).",
    )


def _mean(rows: list[dict[str, object]], key: str) -> tuple[float | None, float | None, int]:
    got = measured(rows, key)
    if not got:
        return None, None, 0
    return statistics.fmean(got), (statistics.stdev(got) if len(got) > 1 else 0.0), len(got)


def final_table(data: SweepData) -> Table:
    present = [k for k in METRIC_COLUMNS if any(r.get(k) is not None for r in data.rows)]
    rows = []
    base = list(data.base.values())
    if base:
        rows.append(["base model", "–", *[_fmt_metric(k, _mean(base, k)[0]) for k in present]])
    for o in data.orders:
        for v in data.values:
            cell_rows = [data.final[(o, v, r)] for r in data.replicates if (o, v, r) in data.final]
            if not cell_rows:
                continue
            rows.append([order_text(o), str(v), *[_fmt_metric(k, _mean(cell_rows, k)[0]) for k in present]])
    k = len(data.replicates)
    return Table(
        "Final model per order and strength",
        ["order", data.vary or "strength", *present],
        rows,
        "Raw metrics after the last step" + (f" (means over {k} replicates)." if k > 1 else "."),
    )


def step_table(data: SweepData) -> Table:
    present = [k for k in METRIC_COLUMNS if any(r.get(k) is not None for r in data.rows)]
    rows = []
    for o in data.orders:
        for v in data.values:
            per_pos: dict[int, list[dict[str, object]]] = {}
            for r in data.replicates:
                for row in data.by_cell.get((o, v, r), []):
                    per_pos.setdefault(row_position(row), []).append(row)
            for pos in sorted(per_pos):
                column = row_step(per_pos[pos][0])
                step = (
                    "base" if column is None else f"{column['name']}" + (" (again)" if column.get("recompress") else "")
                )
                rows.append(
                    [
                        order_text(o),
                        str(v),
                        str(pos),
                        step,
                        *[_fmt_metric(k, _mean(per_pos[pos], k)[0]) for k in present],
                    ]
                )
    return Table(
        "Metrics after every step",
        ["order", data.vary or "strength", "pos", "step", *present],
        rows,
        "Replicate means; position 0 is the base model.",
    )


def check_axes(axes: Sequence[str] | None) -> list[str] | None:
    """``axes`` if each is a known x axis (X_AXES), else a DataError naming the choices."""
    if axes is None:
        return None
    bad = [a for a in axes if a not in X_AXES]
    if bad or not axes:
        raise DataError(f"--axes {','.join(axes)!r}: choose from {', '.join(X_AXES)}")
    return list(axes)
