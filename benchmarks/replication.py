"""The paper's findings, read from study or sweep run folders (docs/replication.md).

A folder is an `lmcompose study` (each of its datasets × compressors is read as one sweep) or
one `lmcompose sweep MODEL memit X --vary X.FIELD=...`, with both orders and several
replicates. For every such sweep this prints, per strength (mean ± sample std over
replicates):

* edit success and generalization (prob and f1 scorers) after MEMIT on the dense model
  (E), after MEMIT then X (E→C) and after X then MEMIT (C→E);
* edit NLL and general NLL (wikitext-2) before and after X in the E→C order: how fast the
  edits decay against the model's general language modelling;
* perplexity after X alone and at the end of each order;

and then one line per finding, with the evidence, and the composability A and P of edit
success and perplexity (lmcompose.composability). A study entry with one order (such as
replication.yaml's Wanda → MEMIT with `stats_from=base`) is compared, strength by strength,
with the entry of the same dataset that runs the same steps in that order under the defaults.
Where the folder has per-edit scores (per_edit.jsonl), it then prints the findings cell by
cell: per criterion (edit success and generalization with the f1 scorer, locality
preservation, MQuAKE's multi-hop accuracy), each dataset × compressor × strength's E, E→C and
C→E and the paired differences E − E→C, E − C→E and C→E − E→C with 95% bootstrap intervals
over the edits (``lmcompose.intervals.state_means``), "n.d." where an interval holds 0, and
C→E − E→C in each noise-floor repetition of the cell; Figure 5's control (the edits' NLL
rise with its interval beside the unedited facts' and wikitext's); a count, per
criterion, difference and compressor, of the cells whose intervals lie above 0, hold it or
lie below it; and two compressors of one family (the same strengths: SparseGPT and Wanda,
GPTQ and AWQ) compared cell by cell on the same edits. A cell whose compress-first order
has not finished still gets E, E→C and E − E→C (and its Figure 5 row); the columns that
need C→E read "–". With ``--against DIR`` it prints instead, for every cell the folders share (the same
dataset, entry, order, strength and replicate, as protocol.yaml shares with replication.yaml),
the final model's scores in each folder side by side.

    .venv/bin/python benchmarks/replication.py docs/replication/run
    .venv/bin/python benchmarks/replication.py docs/replication/protocol-run --against docs/replication/run
    .venv/bin/python benchmarks/replication.py runs/my-sweep-a runs/my-sweep-b ...
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from lmcompose.composability import SweepData, composability, load_sweep, row_position
from lmcompose.engine.run_folder import row_cell_id
from lmcompose.errors import DataError
from lmcompose.intervals import contains_zero, percentile_interval, state_means
from lmcompose.results import read_per_edit
from lmcompose.studies.report import is_study, load_study_rows

TWIN_METRICS = ("edit_success_prob", "edit_success_f1", "generalization_prob", "perplexity")
# per-edit criteria of the cell-by-cell tables: (key in per_edit.jsonl, label)
CELL_CRITERIA = (
    ("edit_success_f1", "edit success (f1)"),
    ("generalization_f1", "generalization (f1)"),
    ("locality_preservation", "locality (preservation)"),
    ("multi_hop_accuracy", "multi-hop accuracy (MQuAKE)"),
)

ROOT = Path(__file__).resolve().parents[1]


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def num(x: float, digits: int = 2) -> str:
    """``x`` to ``digits`` decimals; – where it is NaN (nothing finished to compute it from)."""
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def fmt(xs: list[float], digits: int = 2) -> str:
    """Mean ± std; – where no replicate has finished (nothing to average)."""
    m, s = mean_std(xs)
    return "–" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def cells(data: Any, compressor: str) -> dict[tuple[str, Any, int], dict[int, dict[str, Any]]]:
    """(order tag 'EC' or 'CE', strength, replicate) -> position -> row."""
    out = {}
    for (order, value, rep), rows in data.by_cell.items():
        tag = "EC" if order[0] == "memit" else "CE"
        out[(tag, value, rep)] = {r["position"]: r for r in rows}
    return out


Noise = dict[tuple[str, str, str], SweepData]  # a study's noise-floor repetitions: (entry, dataset, label) -> sweep


def load_run(run: Path) -> tuple[list[tuple[str, SweepData]], Noise]:
    """(label, sweep) per sweep of a run folder (a study's (dataset, entry) pairs, or the sweep
    itself) and a study's noise-floor repetitions ({} for a sweep), from one read of its rows."""
    if is_study(run):
        study = load_study_rows(run)
        return [(f"{d}, {e}", sw) for (e, d), sw in study.sweeps.items()], dict(study.noise)
    return [(run.name, load_sweep(run))], {}


def sweeps(run: Path) -> list[tuple[str, SweepData]]:
    """(label, sweep) per sweep of a run folder (:func:`load_run`)."""
    return load_run(run)[0]


def order_gap_under_noise(data: SweepData, noise: Noise, v: Any, key: str) -> str:
    """C→E − E→C of row field ``key`` at strength ``v`` (mean over replicates) in each noise-floor
    repetition of this sweep's cells, ``seed=1 +0.10; threads=1 +0.21``; "–" where none."""
    entry, dataset = data.rows[0].get("entry"), data.rows[0].get("dataset")
    out = []
    for (e, d, label), sw in sorted(noise.items()):
        if (e, d) != (entry, dataset):
            continue
        gaps = []
        c = cells(sw, "")
        for r in sw.replicates:
            ec, ce = c.get(("EC", v, r), {}).get(2), c.get(("CE", v, r), {}).get(2)  # each order's final model
            if ec is not None and ce is not None and ec.get(key) is not None and ce.get(key) is not None:
                gaps.append(float(ce[key]) - float(ec[key]))
        if gaps:
            out.append(f"{label} {statistics.fmean(gaps):+.2f}")
    return "; ".join(out) or "–"


Finals = dict[tuple[str, str, str, Any], dict[int, dict[str, Any]]]


def finals(data: SweepData) -> Finals:
    """(dataset, entry, order, strength) -> replicate -> final row."""
    out: Finals = {}
    for (order, value, rep), row in data.final.items():
        out.setdefault((row.get("dataset"), row.get("entry"), " → ".join(order), value), {})[rep] = row
    return out


def side_by_side(ours: Finals, theirs: Finals, other: str) -> None:
    """Every key both have, the final scores of each, mean ± std over the replicates both have."""
    shared = [k for k in ours if k in theirs and ours[k].keys() & theirs[k].keys()]
    print("| dataset | entry | order | strength | " + " | ".join(f"{m}: this / {other}" for m in TWIN_METRICS) + " |")
    print("|---|---|---|---|" + "---|" * len(TWIN_METRICS))
    for key in shared:
        reps = sorted(ours[key].keys() & theirs[key].keys())
        cols = []
        for m in TWIN_METRICS:
            digits = 1 if m == "perplexity" else 2
            cols.append(
                f"{fmt([ours[key][r][m] for r in reps], digits)} / {fmt([theirs[key][r][m] for r in reps], digits)}"
            )
        print(f"| {' | '.join(map(str, key))} | {' | '.join(cols)} |")


def one_order(groups: list[tuple[str, SweepData]]) -> None:
    """Each one-order study entry against the default entry with the same steps in that order."""
    by_order: dict[tuple[Any, tuple[str, ...], str], tuple[str, SweepData]] = {}
    for label, data in groups:
        if len(data.orders) > 1:
            for order in data.orders:
                by_order[(data.rows[0].get("dataset"), order, data.vary)] = (label, data)
    for label, data in groups:
        if len(data.orders) != 1:
            continue
        (order,) = data.orders
        twin = by_order.get((data.rows[0].get("dataset"), order, data.vary))
        if twin is None:
            print(f"\n## {label}: one order ({' → '.join(order)}) and no two-order entry to compare it with")
            continue
        print(f"\n## {label} against {twin[0]}, order {' → '.join(order)} (final model)\n")
        theirs = {(k[0], data.rows[0].get("entry"), *k[2:]): v for k, v in finals(twin[1]).items()}
        side_by_side(finals(data), theirs, "default")


def summarize(label: str, data: SweepData) -> dict[str, Any]:
    compressor = next(s for s in data.orders[0] if s != "memit")
    c = cells(data, compressor)
    dataset = data.rows[0].get("dataset") or "?"
    n_edits = len(data.rows[0].get("edit_ids") or [])
    print(
        f"\n## {label}: memit + {compressor}, {data.vary} = {', '.join(map(str, data.values))}; "
        f"{len(data.replicates)} replicates of {n_edits} edits; model {data.model}"
    )
    print()
    print(
        "| strength | edit success prob: E / E→C / C→E | f1: E / E→C / C→E | generalization prob: E / E→C / C→E |"
        " Δ edit NLL (E→C) | Δ general NLL (E→C) | perplexity: base / C / E→C / C→E |"
    )
    print("|---|---|---|---|---|---|---|")
    findings: dict[str, list[float]] = {"decay": [], "harder": [], "faster": [], "order_gap": []}
    per_strength = []
    incomplete: list[str] = []
    for v in data.values:
        here: dict[str, list[float]] = {k: [] for k in findings}
        get = {
            k: []
            for k in (
                "e_p",
                "ec_p",
                "ce_p",
                "e_f",
                "ec_f",
                "ce_f",
                "e_g",
                "ec_g",
                "ce_g",
                "d_edit",
                "d_gen",
                "ppl0",
                "ppl_c",
                "ppl_ec",
                "ppl_ce",
            )
        }
        for r in data.replicates:
            ec, ce = c.get(("EC", v, r)), c.get(("CE", v, r))
            if not ec or not ce or not {1, 2} <= ec.keys() or not {1, 2} <= ce.keys():
                incomplete.append(f"{v}|r{r}")
                continue
            e, e_c, cmp, c_e = ec[1], ec[2], ce[1], ce[2]
            get["e_p"].append(e["edit_success_prob"])
            get["ec_p"].append(e_c["edit_success_prob"])
            get["ce_p"].append(c_e["edit_success_prob"])
            get["e_f"].append(e["edit_success_f1"])
            get["ec_f"].append(e_c["edit_success_f1"])
            get["ce_f"].append(c_e["edit_success_f1"])
            get["e_g"].append(e["generalization_prob"])
            get["ec_g"].append(e_c["generalization_prob"])
            get["ce_g"].append(c_e["generalization_prob"])
            get["d_edit"].append(e_c["edit_nll"] - e["edit_nll"])
            get["d_gen"].append(e_c["general_nll"] - e["general_nll"])
            get["ppl0"].append(ec[0]["perplexity"])
            get["ppl_c"].append(cmp["perplexity"])
            get["ppl_ec"].append(e_c["perplexity"])
            get["ppl_ce"].append(c_e["perplexity"])
            here["decay"].append(e["edit_success_f1"] - e_c["edit_success_f1"])
            here["harder"].append(e["edit_success_f1"] - c_e["edit_success_f1"])
            here["faster"].append((e_c["edit_nll"] - e["edit_nll"]) - (e_c["general_nll"] - e["general_nll"]))
            here["order_gap"].append(c_e["edit_success_f1"] - e_c["edit_success_f1"])
        for k, xs in here.items():
            findings[k] += xs
        per_strength.append((v, {k: mean_std(xs) for k, xs in here.items()}))
        print(
            f"| {v} | {fmt(get['e_p'])} / {fmt(get['ec_p'])} / {fmt(get['ce_p'])} "
            f"| {fmt(get['e_f'])} / {fmt(get['ec_f'])} / {fmt(get['ce_f'])} "
            f"| {fmt(get['e_g'])} / {fmt(get['ec_g'])} / {fmt(get['ce_g'])} "
            f"| {fmt(get['d_edit'])} | {fmt(get['d_gen'])} "
            f"| {num(mean_std(get['ppl0'])[0], 1)} / {fmt(get['ppl_c'], 1)} / {fmt(get['ppl_ec'], 1)} / "
            f"{fmt(get['ppl_ce'], 1)} |"
        )
    comp = composability(data)
    print()
    if incomplete:
        print(f"- left out, unfinished (rerun the sweep's command to finish): {', '.join(incomplete)}")
    for name in ("edit_success", "generalization", "locality", "perplexity"):
        cr = comp.criteria.get(name)
        if cr is None or cr.A_mean is None:
            continue
        print(
            f"- {name} (scorer of the run): A = {cr.A_mean:.3f} ± {cr.A_std:.3f}, P = {cr.P_mean:.3f} ± {cr.P_std:.3f}"
        )
    print(
        f"- compression decays edits (E − E→C, edit success f1, all strengths and replicates): {fmt(findings['decay'])}"
    )
    print(f"- editing the compressed model is less successful (E − C→E, f1): {fmt(findings['harder'])}")
    print(
        f"- edits decay faster than general language modelling (Δ edit NLL − Δ general NLL, E→C, nats): "
        f"{fmt(findings['faster'])}"
    )
    gap = mean_std(findings["order_gap"])[0]
    first = "compress first" if gap > 0 else "edit first"
    # a mean over replicates and strengths, no interval: the report's paired intervals say whether it holds
    reading = "no finished cell yet" if math.isnan(gap) else f"{first} higher on average; intervals: lmcompose report"
    print(f"- order: C→E − E→C edit success f1: {fmt(findings['order_gap'])} ({reading})")
    return {
        "run": label,
        "compressor": compressor,
        "dataset": dataset,
        "per_strength": per_strength,
        "A_edit": _a(comp, "edit_success"),
        "A_ppl": _a(comp, "perplexity"),
    }


def signed(value: float, interval: tuple[float, float]) -> str:
    """``+0.771 [+0.702, +0.840]``, with ``n.d.`` (0 not excluded) where the interval holds 0,
    "–" where a state had no scored edit; three decimals, so an end near 0 shows its side."""
    if any(math.isnan(x) for x in (value, *interval)):
        return "–"
    text = f"{value:+.3f} [{interval[0]:+.3f}, {interval[1]:+.3f}]"
    return text + " n.d." if contains_zero(interval) else text


def verdict(interval: tuple[float, float]) -> str:
    """ "above" or "below" 0 where the interval excludes it, "n.d." where it holds 0 (or is NaN)."""
    if any(math.isnan(x) for x in interval) or contains_zero(interval):
        return "n.d."
    return "above" if interval[0] > 0 else "below"


def per_edit_of(per_edit: dict[tuple[str, int], dict[str, Any]], row: dict[str, Any], key: str) -> np.ndarray | None:
    """The per-edit scores ``key`` of the state of ``row`` (None where the line or the key is missing)."""
    line = per_edit.get((row_cell_id(row), row_position(row)))
    got = (line or {}).get("scores", {}).get(key)
    if not isinstance(got, list) or not got:
        return None
    return np.array([np.nan if x is None else float(x) for x in got], dtype=float)


def cell_states(
    data: SweepData,
    c: dict[tuple[str, Any, int], dict[int, dict[str, Any]]],
    per_edit: dict[tuple[str, int], dict[str, Any]],
    v: Any,
    key: str,
) -> dict[str, dict[int, np.ndarray]] | None:
    """E, E→C and C→E's per-edit ``key`` scores at strength ``v``, replicate -> scores (``c``:
    the sweep's :func:`cells`). E and E→C for the replicates whose edit-first order has
    finished, C→E for those of them whose compress-first order has finished too, each
    replicate's states scored on the same edits; None where no replicate has E and E→C."""
    out: dict[str, dict[int, np.ndarray]] = {"E": {}, "E→C": {}, "C→E": {}}
    for r in data.replicates:
        ec, ce = c.get(("EC", v, r)), c.get(("CE", v, r))
        if not ec or not {1, 2} <= ec.keys():
            continue
        rows = {"E": ec[1], "E→C": ec[2]}
        if ce and {1, 2} <= ce.keys():
            rows["C→E"] = ce[2]
        got = {name: per_edit_of(per_edit, row, key) for name, row in rows.items()}
        if got["E"] is None or got["E→C"] is None or len(got["E"]) != len(got["E→C"]):
            continue
        if rows["E"].get("edit_ids") != rows["E→C"].get("edit_ids"):
            continue
        if np.isnan(got["E"]).all() and np.isnan(got["E→C"]).all():
            continue
        out["E"][r], out["E→C"][r] = got["E"], got["E→C"]
        g = got.get("C→E")
        if g is not None and len(g) == len(got["E"]) and rows["C→E"].get("edit_ids") == rows["E"].get("edit_ids"):
            out["C→E"][r] = g
    return out if out["E"] else None


def cell_tables(
    groups: list[tuple[str, SweepData]],
    per_edit: dict[tuple[str, int], dict[str, Any]],
    noise: Noise | None = None,
) -> None:
    """Per criterion, each (dataset, compressor, strength): the three states' means and the
    three paired differences with 95% bootstrap intervals over the edits (resampled within
    each replicate, the same edits for the three states; means over replicates), and, for
    Figure 5, the rise of the edits' NLL under the compressor with its interval beside the
    rises of unedited facts' NLL and of wikitext's (one number per state: no interval). Where
    the study repeated a cell for its noise floor (another calibration seed, another thread
    count), the last column gives C→E − E→C in each repetition: an order difference that
    changes sign or size there is not established by its interval over the edits alone."""
    two = [(label, data) for label, data in groups if len(data.orders) > 1]
    print("\n## Cell by cell, with intervals\n")
    print(
        "Means over replicates; [a, b]: 95% paired bootstrap interval over the edits (1,000 resamples of each "
        "replicate's edits, the same edits for the three states, seed 0); n.d.: the interval holds 0, the "
        "difference is not distinguishable from 0 (the data do not exclude 0). The intervals sample the choice "
        "of edits only; the compressors' calibration noise shows in the last column, C→E − E→C in the noise "
        "floor's repetitions of the cell (another calibration seed, one thread; – where the cell was not "
        "repeated or a repetition has not finished both orders), and in the report's noise-floor table. No "
        "correction is made for the many cells and criteria: a single exclusion of 0 is weak evidence."
    )
    tally: dict[tuple[str, str, str], Counter[str]] = {}  # (criterion, difference, compressor) -> verdicts
    for key, name in CELL_CRITERIA:
        lines = []
        for label, data in two:
            c = cells(data, "")
            for v in data.values:
                states = cell_states(data, c, per_edit, v, key)
                if states is None:
                    continue
                # E − E→C over every replicate whose edit-first order finished; the differences
                # with C→E over those whose compress-first order finished too (paired: the same
                # replicates and resampled edits for the states compared)
                m = state_means({s: states[s] for s in ("E", "E→C")})
                both = sorted(states["C→E"])
                mb = state_means({s: {r: states[s][r] for r in both} for s in states}) if both else {}
                diffs = {
                    "E − E→C": (m, "E", "E→C"),
                    "E − C→E": (mb, "E", "C→E"),
                    "C→E − E→C": (mb, "C→E", "E→C"),
                }
                cols = [num(m["E"][0]), num(m["E→C"][0]), num(mb["C→E"][0]) if mb else "–"]
                compressor = label.split(", ", 1)[-1]
                for what, (src, a, b) in diffs.items():
                    if not src:
                        cols.append("–")
                        continue
                    interval = percentile_interval(src[a][1] - src[b][1])
                    cols.append(signed(src[a][0] - src[b][0], interval))
                    tally.setdefault((name, what, compressor), Counter())[verdict(interval)] += 1
                cols.append(order_gap_under_noise(data, noise or {}, v, key))
                n_reps = str(len(states["E"])) + ("" if len(both) == len(states["E"]) else f" (C→E: {len(both)})")
                lines.append(f"| {label} | {v} | {n_reps} | {' | '.join(cols)} |")
        if not lines:
            continue
        print(f"\n### {name}\n")
        print(
            "| dataset, compressor | strength | replicates | E | E→C | C→E | E − E→C | E − C→E | C→E − E→C "
            "| C→E − E→C, noise repetitions |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(lines))
    nll_lines = []
    for label, data in two:
        c = cells(data, "")
        for v in data.values:
            states = cell_states(data, c, per_edit, v, "edit_nll")
            if states is None:
                continue
            m = state_means({k: states[k] for k in ("E", "E→C")})  # edit-first order only
            reps = sorted(states["E"])
            rise = {
                what: statistics.fmean(c[("EC", v, r)][2][what] - c[("EC", v, r)][1][what] for r in reps)
                for what in ("unedited_nll", "general_nll")
                if all(c[("EC", v, r)][i].get(what) is not None for r in reps for i in (1, 2))
            }
            d = m["E→C"][0] - m["E"][0]
            samples = m["E→C"][1] - m["E"][1]
            unedited, general = rise.get("unedited_nll"), rise.get("general_nll")
            over = "–" if unedited is None else signed(d - unedited, percentile_interval(samples - unedited))
            compressor = label.split(", ", 1)[-1]
            for what, base in (("edit NLL rise − general", general), ("edit NLL rise − unedited", unedited)):
                if base is not None:
                    tally.setdefault(("NLL (Fig. 5)", what, compressor), Counter())[
                        verdict(percentile_interval(samples - base))
                    ] += 1
            nll_lines.append(
                f"| {label} | {v} | {signed(d, percentile_interval(samples))} | "
                f"{'–' if unedited is None else f'{unedited:+.2f}'} | "
                f"{'–' if general is None else f'{general:+.2f}'} | {over} |"
            )
    if nll_lines:
        print("\n### Figure 5 with its control: NLL rises under the compressor (E → E→C, nats per token)\n")
        print(
            "Edits: the new targets' NLL (per-edit, with its interval); unedited: the true targets of facts "
            "no edit touched (one mean per state); general: wikitext-2. The last column's interval samples "
            "the edits only (the unedited rise is taken as given)."
        )
        print()
        print(
            "| dataset, compressor | strength | edit NLL rise | unedited-fact NLL rise | general NLL rise "
            "| edit − unedited |"
        )
        print("|---|---|---|---|---|---|")
        print("\n".join(nll_lines))
    if tally:
        print("\n### The findings counted over cells\n")
        print(
            "Per criterion, difference and compressor (every dataset and strength): how many cells' 95% "
            "intervals lie above 0, hold 0 (n.d.) or lie below 0; no correction for the number of cells."
        )
        print()
        print("| criterion | difference | compressor | above 0 | n.d. | below 0 | cells |")
        print("|---|---|---|---:|---:|---:|---:|")
        for (name, what, compressor), counts in tally.items():
            total = sum(counts.values())
            print(
                f"| {name} | {what} | {compressor} | {counts['above']} | {counts['n.d.']} | {counts['below']} "
                f"| {total} |"
            )


def compressor_pairs(
    groups: list[tuple[str, SweepData]],
    per_edit: dict[tuple[str, int], dict[str, Any]],
) -> None:
    """Two compressors of one family (the same strengths: SparseGPT and Wanda, GPTQ and AWQ)
    on one dataset, cell by cell: each order's final model under the first − under the
    second, on the same edits (MEMIT's edits of a replicate are the same in both sweeps),
    with 95% paired bootstrap intervals, for edit success and locality. Where a study has
    per-edit scores this is the per-strength form of the report's A/P comparisons."""
    two = [(label, data) for label, data in groups if len(data.orders) > 1]
    lines = []
    for i, (label_a, a) in enumerate(two):
        for label_b, b in two[i + 1 :]:
            dataset_a, comp_a = label_a.split(", ", 1)
            dataset_b, comp_b = label_b.split(", ", 1)
            if (
                dataset_a != dataset_b
                or list(a.values) != list(b.values)
                or a.vary.split(".")[-1] != b.vary.split(".")[-1]
            ):
                continue
            ca, cb = cells(a, ""), cells(b, "")
            for v in a.values:
                cols = []
                for key, _ in CELL_CRITERIA[:3:2]:  # edit success (f1), locality (preservation)
                    sa, sb = cell_states(a, ca, per_edit, v, key), cell_states(b, cb, per_edit, v, key)
                    if sa is None or sb is None:
                        cols += ["–", "–"]
                        continue
                    for order in ("E→C", "C→E"):
                        reps = sorted(set(sa[order]) & set(sb[order]))
                        if not reps or any(len(sa[order][r]) != len(sb[order][r]) for r in reps):
                            cols.append("–")
                            continue
                        m = state_means({"a": {r: sa[order][r] for r in reps}, "b": {r: sb[order][r] for r in reps}})
                        cols.append(signed(m["a"][0] - m["b"][0], percentile_interval(m["a"][1] - m["b"][1])))
                if any(col != "–" for col in cols):
                    lines.append(f"| {dataset_a} | {comp_a} − {comp_b} | {v} | {' | '.join(cols)} |")
    if not lines:
        return
    print("\n### Compressors compared, cell by cell\n")
    print(
        "The first compressor's final model − the second's, in each order, on the same edits (mean over the "
        "replicates both finished; 95% paired bootstrap interval over the edits; n.d.: holds 0)."
    )
    print()
    print(
        "| dataset | compressors | strength | edit success (f1), E→C | edit success (f1), C→E "
        "| locality, E→C | locality, C→E |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(lines))


def _a(comp: Any, name: str) -> float:
    cr = comp.criteria.get(name)
    return cr.A_mean if cr is not None and cr.A_mean is not None else float("nan")


def against(runs: list[Path], other: Path) -> None:
    """Final-model scores of every cell shared with OTHER, mean ± std over replicates, side by side."""
    theirs = {k: v for _, sw in sweeps(other) for k, v in finals(sw).items()}
    for run in runs:
        ours = {k: v for _, sw in sweeps(run) for k, v in finals(sw).items()}
        if not any(k in theirs and ours[k].keys() & theirs[k].keys() for k in ours):
            raise DataError(f"{run} and {other} share no finished cell: compare folders of twin studies")
        print(f"\n## {run} / {other} (final model; mean ± std over the replicates both have)\n")
        side_by_side(ours, theirs, "other")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "runs",
        nargs="*",
        type=Path,
        default=[ROOT / "docs" / "replication" / "run"],
        help="run folders (default: the committed docs/replication/run)",
    )
    ap.add_argument("--against", type=Path, help="compare every cell with the same cell of this run folder")
    args = ap.parse_args()
    if args.against is not None:
        try:
            against(args.runs, args.against)
        except DataError as exc:
            raise SystemExit(f"replication.py: {exc}") from None
        return
    try:
        per_run = {run: load_run(run) for run in args.runs}
        groups = [g for run in args.runs for g in per_run[run][0]]
        out = [summarize(label, data) for label, data in groups if len(data.orders) > 1]
        one_order(groups)
        for run, (mine, noise) in per_run.items():
            per_edit = read_per_edit(run)
            if per_edit:
                cell_tables(mine, per_edit, noise)
                compressor_pairs(mine, per_edit)
            else:
                print(f"\n{run}: no per_edit.jsonl (written before per-edit scores existed): no cell intervals")
    except DataError as exc:
        raise SystemExit(f"replication.py: {exc}") from None
    print("\n## All runs\n")
    print("Edit success with the f1 scorer; mean ± std over replicates.\n")
    print(
        "| run | strength | compression decays edits (E − E→C) | editing compressed is harder (E − C→E) |"
        " edit NLL rise − general NLL rise (nats, E→C) | C→E − E→C | A edit success | A perplexity |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for s in out:
        for v, f in s["per_strength"]:
            cells_ = [
                "–" if math.isnan(f[k][0]) else f"{f[k][0]:.2f} ± {f[k][1]:.2f}"
                for k in ("decay", "harder", "faster", "order_gap")
            ]
            print(f"| {s['run']} | {v} | {' | '.join(cells_)} | {num(s['A_edit'], 3)} | {num(s['A_ppl'], 3)} |")


if __name__ == "__main__":
    main()
