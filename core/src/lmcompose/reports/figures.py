"""Plots of a sweep, drawn from its rows alone (matplotlib, no display needed).

* ``curves.png`` — each metric of the final model against the varied strength, one line per
  order, mean ± standard deviation over replicates (the paper's Fig. 1–2);
* ``composability.png`` (on compression, or strength when average bits do not change;
  ``composability_strength.png`` beside it when both exist) — each
  normalized criterion per order, with the A area (between the best and the worst order)
  and the P area (between the best order and 1) shaded (Fig. 4);
* ``nll.png`` — edit NLL and general (wikitext) NLL of the final model against strength (Fig. 5);
* ``topk.png`` — the top-k next tokens of one prompt (the first edit's) before and after
  each step, at the strongest strength, replicate 0 (Fig. 3).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from lmcompose.composability import AXIS_LABELS, Composability, SweepData
from lmcompose.results import replace_atomic

CURVE_METRICS = (
    ("edit_success", "edit success (0–1, higher is better)", False),
    ("generalization", "generalization (0–1, higher is better)", False),
    ("locality", "locality (0–1, higher is better)", False),
    ("perplexity", "perplexity (wikitext-2, log scale)", True),
    ("avg_bits", "average bits per weight", False),
)
CRITERION_LABELS = {
    "edit_success": "edit success",
    "generalization": "generalization",
    "locality": "locality",
    "perplexity": "perplexity (base ppl / ppl)",
}


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically (a kill leaves the old plot or the new one) and free it."""
    replace_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    _plt().close(fig)
    return path


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def order_label(order: tuple[str, ...] | list[str]) -> str:
    return " → ".join(order)


def _strength_label(data: SweepData) -> str:
    return f"{data.vary} (varied strength)" if data.vary else "strength"


def _x_numeric(data: SweepData) -> list[float]:
    out = []
    for v in data.values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(float(data.values.index(v)))
    return out


def _final_stat(data: SweepData, order: tuple[str, ...], value: Any, key: str) -> tuple[float | None, float]:
    got = [data.final[(order, value, r)].get(key) for r in data.replicates if (order, value, r) in data.final]
    got = [g for g in got if g is not None]
    if not got:
        return None, 0.0
    return statistics.fmean(got), (statistics.stdev(got) if len(got) > 1 else 0.0)


def plot_curves(data: SweepData, path: Path) -> Path | None:
    plt = _plt()
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
        base = [r.get(key) for r in data.base.values() if r.get(key) is not None]
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
    plt = _plt()
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
    plt = _plt()
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
        base = [r.get(key) for r in data.base.values() if r.get(key) is not None]
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


def _token_color(token: str, record: dict[str, Any]) -> str:
    """Red for the start of the edit's new target, blue for the true one, grey otherwise."""
    t = token.strip().lower()
    if t:
        if record.get("target_new") and record["target_new"].strip().lower().startswith(t):
            return "tab:red"
        if record.get("target_true") and record["target_true"].strip().lower().startswith(t):
            return "tab:blue"
    return "tab:gray"


def plot_topk(data: SweepData, path: Path) -> Path | None:
    if not data.values or not data.replicates:
        return None
    value, rep = data.values[-1], data.replicates[0]
    cells = [(o, data.by_cell.get((o, value, rep), [])) for o in data.orders]
    cells = [(o, [r for r in rows if r.get("topk")]) for o, rows in cells]
    cells = [(o, rows) for o, rows in cells if rows]
    if not cells:
        return None
    plt = _plt()
    ncols = max(len(rows) for _, rows in cells)
    fig, axes = plt.subplots(len(cells), ncols, figsize=(3.6 * ncols, 2.6 * len(cells)), squeeze=False)
    prompt = cells[0][1][0]["topk"]["prompt"]
    pmax = max(p for _, rows in cells for r in rows for p in r["topk"]["probs"])
    xmax = min(1.0, pmax * 1.25) if pmax > 0 else 1.0
    for i, (order, rows) in enumerate(cells):
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(rows):
                ax.axis("off")
                continue
            tk = rows[j]["topk"]
            labels = [_token_label(t) for t in tk["tokens"]][::-1]
            probs = tk["probs"][::-1]
            colors = [_token_color(t, tk) for t in tk["tokens"]][::-1]
            ax.barh(range(len(labels)), probs, color=colors)
            for y, p in enumerate(probs):
                ax.text(p, y, f" {p:.3f}", va="center", fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.set_xlim(0, xmax)
            pos = rows[j]["position"]
            title = (
                "base model"
                if pos == 0
                else "after " + " → ".join(order[:pos])
                if pos <= len(order)
                else "after re-run"
            )
            if rows[j].get("step") and rows[j]["step"].get("recompress"):
                title = f"after re-running {rows[j]['step']['name']}"
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("next-token probability")
    first = cells[0][1][0]["topk"]
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
