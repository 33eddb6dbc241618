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
With ``--against DIR`` it prints instead, for every cell the folders share (the same
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
from pathlib import Path
from typing import Any

from lmcompose.composability import SweepData, composability, load_sweep
from lmcompose.errors import DataError
from lmcompose.studies.report import is_study, load_study_rows

TWIN_METRICS = ("edit_success_prob", "edit_success_f1", "generalization_prob", "perplexity")


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs: list[float], digits: int = 2) -> str:
    m, s = mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def cells(data: Any, compressor: str) -> dict[tuple[str, Any, int], dict[int, dict[str, Any]]]:
    """(order tag 'EC' or 'CE', strength, replicate) -> position -> row."""
    out = {}
    for (order, value, rep), rows in data.by_cell.items():
        tag = "EC" if order[0] == "memit" else "CE"
        out[(tag, value, rep)] = {r["position"]: r for r in rows}
    return out


def sweeps(run: Path) -> list[tuple[str, SweepData]]:
    """(label, sweep) per sweep of a run folder: a study's (dataset, entry) pairs, or the sweep itself."""
    if is_study(run):
        return [(f"{d}, {e}", sw) for (e, d), sw in load_study_rows(run).sweeps.items()]
    return [(run.name, load_sweep(run))]


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
            f"| {mean_std(get['ppl0'])[0]:.1f} / {fmt(get['ppl_c'], 1)} / {fmt(get['ppl_ec'], 1)} / "
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
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--against", type=Path, help="compare every cell with the same cell of this run folder")
    args = ap.parse_args()
    if args.against is not None:
        try:
            against(args.runs, args.against)
        except DataError as exc:
            raise SystemExit(f"replication.py: {exc}") from None
        return
    try:
        groups = [g for r in args.runs for g in sweeps(r)]
        out = [summarize(label, data) for label, data in groups if len(data.orders) > 1]
        one_order(groups)
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
            cells_ = [f"{f[k][0]:.2f} ± {f[k][1]:.2f}" for k in ("decay", "harder", "faster", "order_gap")]
            print(f"| {s['run']} | {v} | {' | '.join(cells_)} | {s['A_edit']:.3f} | {s['A_ppl']:.3f} |")


if __name__ == "__main__":
    main()
