"""The figures of both reports, drawn from the rows alone (matplotlib, no display needed).

A sweep's:

* ``curves.png`` — each metric of the final model against the varied strength, one line per
  order, mean ± standard deviation over replicates (the paper's Fig. 1–2);
* ``composability.png`` (on compression, or strength when average bits do not change;
  ``composability_strength.png`` beside it when both exist) — each
  normalized criterion per order, with the A area (between the best and the worst order)
  and the P area (between the best order and 1) shaded (Fig. 4);
* ``nll.png`` — edit NLL and general (wikitext) NLL of the final model against strength (Fig. 5);
* ``topk.png`` — the top-k next tokens of one prompt (the first edit's) before and after
  each step, at the strongest strength, replicate 0 (Fig. 3).

A study's (:mod:`lmcompose.reports.study` says what each shows): ``fig1_<family>.png``
(Figures 1–2), ``fig3_<compressor>.png`` (Figure 3) and ``fig5_nll.png`` (Figure 5).
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from lmcompose.api._values import number_or_none, to_float
from lmcompose.composability import AXIS_LABELS, Composability, Row, SweepData, measured, row_position, row_step
from lmcompose.engine.schema import TopK
from lmcompose.reports.tables import order_text
from lmcompose.results import replace_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lmcompose.reports.study import StudyData

CURVE_METRICS = (
    ("edit_success", "edit success (0–1, higher is better)", False),
    ("generalization", "generalization (0–1, higher is better)", False),
    ("locality", "locality (0–1, higher is better)", False),
    ("perplexity", "perplexity (wikitext-2, log scale)", True),
    ("avg_bits", "average bits per weight", False),
)
FIGURE_METRICS = ("edit_success", "generalization", "locality", "perplexity", "forget_accuracy", "retain_accuracy")
METRIC_LABELS = {
    "edit_success": "edit success",
    "generalization": "generalization",
    "locality": "locality",
    "perplexity": "perplexity (wikitext-2)",
    "forget_accuracy": "forget accuracy (lower is better)",
    "retain_accuracy": "retain accuracy",
}
CRITERION_LABELS = {
    "edit_success": "edit success",
    "generalization": "generalization",
    "locality": "locality",
    "perplexity": "perplexity (base ppl / ppl)",
}


def topk_record(row: Row | None) -> TopK | None:
    """The top-k record of ``row`` (a JSON object the executor wrote in that shape); None without one."""
    tk = (row or {}).get("topk")
    return cast(TopK, tk) if isinstance(tk, dict) else None


def use_agg() -> None:
    """Draw without a display (matplotlib's Agg backend), before pyplot is imported."""
    import matplotlib

    matplotlib.use("Agg")


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically (a kill leaves the old plot or the new one) and free it."""
    use_agg()
    import matplotlib.pyplot as plt

    replace_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def order_label(order: tuple[str, ...] | list[str]) -> str:
    return " → ".join(order)


def _strength_label(data: SweepData) -> str:
    return f"{data.vary} (varied strength)" if data.vary else "strength"


def _x_numeric(data: SweepData) -> list[float]:
    out = []
    for v in data.values:
        try:
            out.append(to_float(v))
        except (TypeError, ValueError):
            out.append(float(data.values.index(v)))
    return out


def _final_stat(data: SweepData, order: tuple[str, ...], value: Hashable, key: str) -> tuple[float | None, float]:
    got = measured([data.final[(order, value, r)] for r in data.replicates if (order, value, r) in data.final], key)
    if not got:
        return None, 0.0
    return statistics.fmean(got), (statistics.stdev(got) if len(got) > 1 else 0.0)


def plot_curves(data: SweepData, path: Path) -> Path | None:
    use_agg()
    import matplotlib.pyplot as plt

    present = [m for m in CURVE_METRICS if any(r.get(m[0]) is not None for r in data.final.values())]
    if not present:
        return None
    cols = min(3, len(present))
    rows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    xs = _x_numeric(data)
    for ax, (key, label, log) in zip(axes.flat, present, strict=False):
        for order in data.orders:
            stats = [_final_stat(data, order, v, key) for v in data.values]
            pts = [(x, m, s) for x, (m, s) in zip(xs, stats, strict=True) if m is not None]
            if not pts:
                continue
            px, pm, ps = zip(*pts, strict=True)
            (line,) = ax.plot(px, pm, marker="o", label=order_label(order))
            if len(data.replicates) > 1:
                ax.fill_between(
                    px,
                    [m - s for m, s in zip(pm, ps, strict=True)],
                    [m + s for m, s in zip(pm, ps, strict=True)],
                    color=line.get_color(),
                    alpha=0.15,
                )
        base = measured(data.base.values(), key)
        if base:
            ax.axhline(statistics.fmean(base), color="grey", linestyle=":", linewidth=1, label="base model")
        if log:
            ax.set_yscale("log")
        ax.set_title(label.split(" (")[0])
        ax.set_xlabel(_strength_label(data))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    spread = " (mean ± std over replicates)" if len(data.replicates) > 1 else ""
    fig.suptitle(f"{data.model}: final-model metrics per order{spread}", fontsize=12)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_composability(comp: Composability, data: SweepData, path: Path) -> Path | None:
    names = list(comp.criteria)
    if not names or comp.single:  # one strength: no area to draw
        return None
    use_agg()
    import matplotlib.pyplot as plt

    cols = min(2, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 4.0 * rows), squeeze=False)
    x = comp.x
    for ax, name in zip(axes.flat, names, strict=False):
        curves = comp.curves[name]
        means = {o: [m for m, _s in curves[o]] for o in comp.orders}
        hi = [max(means[o][j] for o in comp.orders) for j in range(len(x))]
        lo = [min(means[o][j] for o in comp.orders) for j in range(len(x))]
        c = comp.criteria[name]
        ax.fill_between(x, lo, hi, color="tab:red", alpha=0.25, label=f"A (order gap) = {c.A_mean:.3f}")
        ax.fill_between(
            x, hi, [1.0] * len(x), color="tab:blue", alpha=0.12, label=f"P (lost by best order) = {c.P_mean:.3f}"
        )
        for o in comp.orders:
            ax.plot(x, means[o], marker="o", label=order_label(o))
        ax.set_ylim(-0.02, 1.02)
        pad = 0.02 * (max(x) - min(x) or 1.0)
        ax.set_xlim(min(x) - pad, max(x) + pad)
        ax.set_title(CRITERION_LABELS.get(name, name))
        if comp.x_axis == "strength":
            ax.set_xlabel(f"γ: normalized {data.vary} (0 = weakest in sweep)")
        else:
            ax.set_xlabel(AXIS_LABELS[comp.x_axis])
        ax.set_ylabel("criterion ℓ, normalized (1 = best)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(
        f"{data.model}: composability (A = order sensitivity, P = performance lost; replicate means)", fontsize=11
    )
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_nll(data: SweepData, path: Path) -> Path | None:
    use_agg()
    import matplotlib.pyplot as plt

    keys = [k for k in ("edit_nll", "general_nll") if any(r.get(k) is not None for r in data.final.values())]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5.4 * len(keys), 4.0), squeeze=False)
    xs = _x_numeric(data)
    titles = {"edit_nll": "edit NLL (new targets)", "general_nll": "general NLL (wikitext-2)"}
    for ax, key in zip(axes.flat, keys, strict=True):
        for order in data.orders:
            stats = [_final_stat(data, order, v, key) for v in data.values]
            pts = [(x, m, s) for x, (m, s) in zip(xs, stats, strict=True) if m is not None]
            if pts:
                px, pm, ps = zip(*pts, strict=True)
                ax.errorbar(
                    px,
                    pm,
                    yerr=ps if len(data.replicates) > 1 else None,
                    marker="o",
                    capsize=3,
                    label=order_label(order),
                )
        base = measured(data.base.values(), key)
        if base:
            ax.axhline(statistics.fmean(base), color="grey", linestyle=":", linewidth=1, label="base model (unedited)")
        ax.set_title(titles[key])
        ax.set_xlabel(_strength_label(data))
        ax.set_ylabel("mean token NLL (nats/token, lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{data.model}: edit NLL vs general NLL of the final model", fontsize=12)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _token_label(tok: str) -> str:
    return repr(tok)[1:-1].replace(" ", "␣") or "∅"


def _token_color(token: str, record: TopK) -> str:
    """Red for the start of the edit's new target, blue for the true one, grey otherwise."""
    t = token.strip().lower()
    if t:
        new, true = record.get("target_new"), record.get("target_true")
        if new and new.strip().lower().startswith(t):
            return "tab:red"
        if true and true.strip().lower().startswith(t):
            return "tab:blue"
    return "tab:gray"


def plot_topk(data: SweepData, path: Path) -> Path | None:
    if not data.values or not data.replicates:
        return None
    value, rep = data.values[-1], data.replicates[0]
    cells: list[tuple[tuple[str, ...], list[tuple[dict[str, object], TopK]]]] = []
    for o in data.orders:
        recorded = [(r, tk) for r in data.by_cell.get((o, value, rep), []) if (tk := topk_record(r))]
        if recorded:
            cells.append((o, recorded))
    if not cells:
        return None
    use_agg()
    import matplotlib.pyplot as plt

    ncols = max(len(rows) for _, rows in cells)
    fig, axes = plt.subplots(len(cells), ncols, figsize=(3.6 * ncols, 2.6 * len(cells)), squeeze=False)
    first = cells[0][1][0][1]
    prompt = first["prompt"]
    pmax = max(p for _, rows in cells for _, tk in rows for p in tk["probs"])
    xmax = min(1.0, pmax * 1.25) if pmax > 0 else 1.0
    for i, (order, rows) in enumerate(cells):
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(rows):
                ax.axis("off")
                continue
            row, tk = rows[j]
            labels = [_token_label(t) for t in tk["tokens"]][::-1]
            probs = tk["probs"][::-1]
            colors = [_token_color(t, tk) for t in tk["tokens"]][::-1]
            ax.barh(range(len(labels)), probs, color=colors)
            for y, p in enumerate(probs):
                ax.text(p, y, f" {p:.3f}", va="center", fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.set_xlim(0, xmax)
            pos = row_position(row)
            title = (
                "base model"
                if pos == 0
                else "after " + " → ".join(order[:pos])
                if pos <= len(order)
                else "after re-run"
            )
            step = row_step(row)
            if step is not None and step.get("recompress"):
                title = f"after re-running {step['name']}"
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("next-token probability")
    targets = ""
    if first.get("target_new"):
        targets = f"; red: new target {first['target_new']!r}" + (
            f", blue: true {first['target_true']!r}" if first.get("target_true") else ""
        )
    fig.suptitle(
        f"Top-{len(first['tokens'])} next tokens after {prompt!r}\n"
        f"({data.vary} = {value}, replicate {rep}; rows: orders{targets})",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)
    return path


# -- a study's figures (Figures 1–2, 3 and 5 of the paper) ---------------------------------


def _stat(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _curve(data: StudyData, entry: str, ds: str, order: tuple[str, ...], key: str) -> list[tuple[float, float, float]]:
    """(x, mean, std) of ``key`` on the final model per strength, starting at strength 0 (the
    dense edited model) for a paired entry."""
    sweep = data.sweeps[(entry, ds)]
    pts = []
    for v in sweep.values:
        got = measured([sweep.final[(order, v, r)] for r in sweep.replicates if (order, v, r) in sweep.final], key)
        if got:
            pts.append((to_float(v), *_stat(got)))
    editor = data.editor_step(entry)
    if editor is not None and pts:
        dense = measured([data.dense[(ds, editor, r)] for r in sweep.replicates if (ds, editor, r) in data.dense], key)
        if dense:
            pts.insert(0, (_dense_x(sweep), *_stat(dense)))
    return pts


def _increasing(sweep: SweepData) -> bool:
    """True if the varied value grows with strength (sparsity), False if it shrinks (bits)."""
    norm = [
        (to_float(r["strength"]), to_float(r["strength_normalized"]))
        for r in sweep.rows
        if r.get("strength_normalized") is not None
    ]
    if len({v for v, _ in norm}) < 2:
        return True
    lo, hi = min(norm), max(norm)
    return hi[1] >= lo[1]


def _dense_x(sweep: SweepData) -> float:
    """Where strength 0 sits on the value axis: 0 for a value that grows with strength
    (sparsity), the dense model's average bits (16) for one that shrinks (bits)."""
    if _increasing(sweep):
        return 0.0
    bits = measured(sweep.base.values(), "avg_bits")
    return statistics.fmean(bits) if bits else 16.0


def _scorer(data: StudyData, key: str) -> str:
    field_name = "locality_scorer" if key == "locality" else "edit_scorer"
    got = {str(r.get(field_name)) for r in data.rows if r.get(field_name)}
    edit_key = key in ("edit_success", "generalization", "locality")
    return f" ({', '.join(sorted(got))} scorer)" if edit_key and got else ""


def plot_family(data: StudyData, family: str, path: Path) -> Path | None:
    entries = [e for e in data.entries if data.families.get(e) == family]
    keys = [k for k in FIGURE_METRICS if any(r.get(k) is not None for r in data.rows)]
    if not entries or not keys:
        return None
    use_agg()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(data.datasets), len(keys), figsize=(4.4 * len(keys), 3.4 * len(data.datasets)), squeeze=False
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    field_label = ""
    for i, ds in enumerate(data.datasets):
        for j, key in enumerate(keys):
            ax = axes[i][j]
            for k, entry in enumerate(entries):
                if (entry, ds) not in data.sweeps:
                    continue
                sweep = data.sweeps[(entry, ds)]
                field_label = sweep.vary.split(".")[-1]
                for m, order in enumerate(sweep.orders):
                    pts = _curve(data, entry, ds, order, key)
                    if not pts:
                        continue
                    xs, ms, ss = zip(*pts, strict=True)
                    ax.plot(
                        xs,
                        ms,
                        marker="o",
                        markersize=3,
                        color=colors[k % len(colors)],
                        linestyle=styles[m % len(styles)],
                        label=f"{entry}: {order_text(order)}",
                    )
                    if len(sweep.replicates) > 1:
                        ax.fill_between(
                            xs,
                            [a - b for a, b in zip(ms, ss, strict=True)],
                            [a + b for a, b in zip(ms, ss, strict=True)],
                            color=colors[k % len(colors)],
                            alpha=0.12,
                        )
                if not _increasing(sweep) and not ax.xaxis_inverted():
                    ax.invert_xaxis()
            if key == "perplexity":
                ax.set_yscale("log")
            ax.set_title(f"{ds}: {METRIC_LABELS[key]}", fontsize=9)
            ax.set_ylabel(METRIC_LABELS[key].split(" (")[0] + _scorer(data, key), fontsize=8)
            ax.set_xlabel(f"{field_label} (strength 0 = dense edited model)", fontsize=8)
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"{data.model}: {family} — final model after both orders (mean ± std over replicates)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    return path


#: Figure 5's series: the edits' NLL, and its control, the NLL of facts never edited
NLL_SERIES = (("edit_nll", "edits"), ("unedited_nll", "unedited facts"))


def has_unedited_control(data: StudyData) -> bool:
    """Whether the rows measure the control of Figure 5 (``unedited_nll``, lmcompose 0.4 on)."""
    return any(r.get("unedited_nll") is not None for r in data.rows)


def _nll_rise(
    data: StudyData, sweep: SweepData, ds: str, editor: str | None, order: tuple[str, ...], key: str
) -> tuple[list[float], list[float]]:
    """Per strength, the mean over replicates of (Δ general NLL, Δ ``key``) from the dense
    edited model of the same replicate (strengths where a replicate lacks a value skip it)."""
    xs, ys = [], []
    for v in sweep.values:
        dx, dy = [], []
        for r in sweep.replicates:
            row, dense = sweep.final.get((order, v, r)), data.dense.get((ds, editor, r))
            if row is None or dense is None:
                continue
            nll, y = number_or_none(row.get("general_nll")), number_or_none(row.get(key))
            nll0, y0 = number_or_none(dense.get("general_nll")), number_or_none(dense.get(key))
            if nll is None or y is None or nll0 is None or y0 is None:
                continue
            dx.append(nll - nll0)
            dy.append(y - y0)
        if dx:
            xs.append(statistics.fmean(dx))
            ys.append(statistics.fmean(dy))
    return xs, ys


def plot_nll_decay(data: StudyData, path: Path) -> Path | None:
    """Figure 5: Δ edit NLL against Δ general NLL from the dense edited model, per compressor,
    with its control beside it: Δ NLL of the true targets of facts no edit touched (dotted,
    hollow markers; rows without ``unedited_nll`` draw none)."""
    entries = [e for e in data.entries if data.editor_step(e) is not None]
    if not entries or not any(r.get("edit_nll") is not None and r.get("general_nll") is not None for r in data.rows):
        return None
    use_agg()
    import matplotlib.pyplot as plt

    cols = min(4, len(entries))
    nrows = (len(entries) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.8 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = ["o", "s", "^", "D"]
    control = has_unedited_control(data)
    for ax, entry in zip(axes.flat, entries, strict=False):
        editor = data.editor_step(entry)
        lo, hi = 0.0, 0.0
        k = 0
        for ds in data.datasets:
            if (entry, ds) not in data.sweeps:
                continue
            sweep = data.sweeps[(entry, ds)]
            for m, order in enumerate(sweep.orders):
                color = colors[k % len(colors)]
                k += 1
                for key, what in NLL_SERIES:
                    xs, ys = _nll_rise(data, sweep, ds, editor, order, key)
                    if not xs:
                        continue
                    edits = key == "edit_nll"
                    ax.plot(
                        xs,
                        ys,
                        marker=markers[m % len(markers)],
                        color=color,
                        markerfacecolor=color if edits else "none",
                        linestyle="-" if edits else ":",
                        label=f"{ds}: {order_text(order)} — {what}",
                    )
                    lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
        hi = hi * 1.05 if hi > 0 else 1.0
        ax.plot([min(lo, 0.0), hi], [min(lo, 0.0), hi], color="grey", linestyle="--", linewidth=1, label="identity")
        ax.set_title(entry, fontsize=10)
        ax.set_xlabel("Δ general NLL (wikitext-2)", fontsize=8)
        ax.set_ylabel(
            "Δ NLL: edits (solid), unedited facts (dotted)" if control else "Δ edit NLL (new targets)", fontsize=8
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5)
    for ax in list(axes.flat)[len(entries) :]:
        ax.axis("off")
    title = f"{data.model}: NLL rise from the dense edited model, one point per strength (Fig. 5)"
    if not control:
        title += "\nno control: the rows have no unedited_nll (written before lmcompose 0.4)"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    return path


#: what Figure 3 needs in a row's top-k record (lmcompose 0.4 on; older rows keep the top-k only)
FIG3_FIELDS = ("top_logits", "targets")


@dataclass
class LogitPanel:
    """One panel of Figure 3: a model state's label and its row's top-k record (None: no row
    for that state, or a row without the top-30 logits)."""

    label: str
    record: TopK | None


def figure3_panels(data: StudyData, entry: str, ds: str) -> tuple[list[LogitPanel], Hashable, int] | None:
    """The states Figure 3 compares for a paired entry on ``ds``, at its strongest strength
    and first replicate: the base model, the edited model, the compressed model, and each
    order's final model; with that strength and replicate (None for an entry without an
    editor, or with no rows on ``ds``)."""
    editor = data.editor_step(entry)
    sweep = data.sweeps.get((entry, ds))
    if editor is None or sweep is None or not sweep.values or not sweep.replicates:
        return None
    value, rep = sweep.values[-1], sweep.replicates[0]

    def record(row: Row | None) -> TopK | None:
        tk = topk_record(row)
        return tk if tk is not None and all(tk.get(f) is not None for f in FIG3_FIELDS) else None

    def at(order: tuple[str, ...], position: int) -> Mapping[str, object] | None:
        return next((r for r in sweep.by_cell.get((order, value, rep), []) if r["position"] == position), None)

    edit_first = [o for o in sweep.orders if o[0] == editor]
    compress_first = [o for o in sweep.orders if o[0] != editor]
    panels = [LogitPanel("base model", record(sweep.base.get(rep)))]
    panels.append(LogitPanel(f"edited ({editor})", record(data.dense.get((ds, editor, rep)))))
    if compress_first:
        panels.append(LogitPanel(f"compressed ({compress_first[0][0]})", record(at(compress_first[0], 1))))
    for order in edit_first + compress_first:
        panels.append(LogitPanel(order_text(order), record(sweep.final.get((order, value, rep)))))
    return panels, value, rep


def figure3_notes(data: StudyData) -> list[str]:
    """Why Figure 3 is not drawn, or drawn with empty panels: rows without a top-k record
    (``topk: 0``), rows written before the records kept the top-30 logits and the targets'
    ranks (an older lmcompose), states without such a row."""
    if not any(isinstance(r.get("topk"), dict) for r in data.rows):
        return [
            "Figure 3 (top-30 next-token logits) is not drawn: the rows hold no top-k record (the study ran "
            "with topk: 0); run the study with topk: 5 or more to record it"
        ]
    if not any((tk := topk_record(r)) is not None and tk.get("top_logits") for r in data.rows):
        return [
            "Figure 3 (top-30 next-token logits) is not drawn: the rows' top-k records keep the top-k tokens "
            "and probabilities only, not the top-30 logits and the targets' logit, probability and rank "
            "(they were written by lmcompose before 0.4); run the study into a new folder to record them"
        ]
    notes = []
    for entry in data.entries:
        for ds in data.datasets:
            got = figure3_panels(data, entry, ds)
            if got is None:
                continue
            panels, value, rep = got
            missing = [p.label for p in panels if p.record is None]
            if missing:
                notes.append(
                    f"Figure 3 for {entry} on {ds} ({value}, replicate {rep}): no row with the top-30 logits for "
                    f"{', '.join(missing)}; {'that panel is' if len(missing) == 1 else 'those panels are'} empty"
                )
    return notes


def plot_logits(data: StudyData, entry: str, path: Path) -> Path | None:
    """Figure 3 for one compressor: per dataset (rows), the top-30 next-token logits of the
    chosen edit's prompt (``topk_edit``, default the first edit of the first replicate) on the
    base, edited and compressed models and after each order, at the compressor's strongest
    strength. Bars of the new target's first token are red, the true target's blue; a dashed
    line of the same colour marks each target's logit (also when it is outside the top 30),
    and each panel gives both ranks. None when no panel has the logits."""
    import textwrap

    grids = [
        (ds, g)
        for ds in data.datasets
        if (g := figure3_panels(data, entry, ds)) is not None and any(p.record is not None for p in g[0])
    ]
    if not grids:
        return None
    use_agg()
    import matplotlib.pyplot as plt

    ncols = max(len(g[0]) for _ds, g in grids)
    fig, axes = plt.subplots(len(grids), ncols, figsize=(3.3 * ncols, 6.4 * len(grids)), squeeze=False)
    colours = {"target_new": "tab:red", "target_true": "tab:blue"}
    for i, (ds, (panels, value, rep)) in enumerate(grids):
        shown = next(p.record for p in panels if p.record is not None)
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(panels):
                ax.axis("off")
                continue
            panel = panels[j]
            ax.set_title(panel.label, fontsize=9)
            if panel.record is None:
                ax.text(0.5, 0.5, "no row with\nthe top-30 logits", ha="center", va="center", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            top, targets = panel.record["top_logits"], panel.record["targets"]
            ids = {name: t.get("token_id") if t else None for name, t in targets.items()}
            colour = [
                next((colours[n] for n, tid in ids.items() if tid == tok and n in colours), "tab:gray")
                for tok in top["token_ids"]
            ]
            ys = range(len(top["logits"]))[::-1]  # the highest logit at the top
            ax.barh(list(ys), top["logits"], color=colour)
            ax.set_yticks(list(ys), [_token_label(t) for t in top["tokens"]], fontsize=6)
            lines = []
            for name, t in targets.items():
                if t is None or name not in colours:
                    continue
                ax.axvline(t["logit"], color=colours[name], linestyle="--", linewidth=1)
                lines.append(
                    f"{name.removeprefix('target_')} {_token_label(t['token'])}: rank {t['rank']}, p={t['prob']:.3f}"
                )
            lo = min([*top["logits"], *(t["logit"] for t in targets.values() if t)])
            hi = max(top["logits"])
            ax.set_xlim(min(0.0, lo - 0.05 * abs(lo)), hi + 0.05 * abs(hi))
            ax.set_xlabel("next-token logit", fontsize=8)
            ax.set_title("\n".join([panel.label, *lines]), fontsize=8)
        prompt = "\n".join(textwrap.wrap(repr(shown["prompt"]), 40))
        axes[i][0].set_ylabel(f"{ds} ({_vary_field(data, entry, ds)} = {value}, replicate {rep})\n{prompt}", fontsize=8)
    fig.suptitle(
        f"{data.model}: {entry} — top-30 next-token logits of one edit's prompt, strongest strength (Fig. 3); "
        "red: new target's first token, blue: true target's",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _vary_field(data: StudyData, entry: str, ds: str) -> str:
    sweep = data.sweeps.get((entry, ds))
    return sweep.vary.split(".")[-1] if sweep is not None and sweep.vary else "strength"


# --------------------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------------------
