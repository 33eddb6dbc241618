"""The findings of docs/unlearning.md from a committed three-category study folder
(studies/composable.yaml): tables printed from its results.jsonl alone.

(a) Does quantization bring unlearned facts back (Zhang et al., ICLR 2025: 4-bit yes, 8-bit
    no)? Per unlearner and quantizer, forget accuracy on the base model, after unlearning,
    and after unlearning then quantizing at each bit width, with the change the
    quantization makes.
(b) GA without a retain term: perplexity after GA at each strength (the ICLR code's rows
    show inf).
(c) The order sensitivity of RMU with GPTQ at 4 bits (the ICLR notebook: mean WMDP 0.45
    compress-first against 0.27 unlearn-first).
(d) Editing and unlearning in both orders: edit success and forget accuracy at each of the
    unlearner's strengths.

Accuracies are shares of n questions (n from the unlearner's step report): each with its
95% Wilson interval; a difference of two accuracies with Newcombe's hybrid score interval
(from the two Wilson intervals, treating the two as independent: conservative for the same
questions scored twice), "n.d." where it holds 0.

    .venv/bin/python benchmarks/composable_findings.py docs/unlearning/composable-run
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Z = 1.959963984540054

ROOT = Path(__file__).resolve().parents[1]


def wilson(p: float, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a share ``p`` of ``n``."""
    if n <= 0:
        return (math.nan, math.nan)
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float]:
    """95% interval of p2 − p1 (Newcombe 1998, method 10) from the two Wilson intervals."""
    l1, u1 = wilson(p1, n1)
    l2, u2 = wilson(p2, n2)
    d = p2 - p1
    return (d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2))


def acc_text(p: float | None, n: int) -> str:
    if p is None:
        return "–"
    lo, hi = wilson(p, n)
    return f"{p:.3f} [{lo:.2f}, {hi:.2f}]"


def diff_text(p1: float | None, p2: float | None, n: int) -> str:
    if p1 is None or p2 is None:
        return "–"
    lo, hi = newcombe(p1, n, p2, n)
    flag = " n.d." if lo <= 0 <= hi else ""
    return f"{p2 - p1:+.3f} [{lo:+.2f}, {hi:+.2f}]{flag}"


def load(folder: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if not r.get("noise")]


def at(rows: list[dict[str, Any]], entry: str, order: list[str], strength: Any, position: int) -> dict[str, Any] | None:
    for r in rows:
        if r["entry"] == entry and r["order"] == order and r["strength"] == strength and r["position"] == position:
            return r
    return None


def forget_n(rows: list[dict[str, Any]], default: int) -> int:
    for r in rows:
        n = (r.get("step_details") or {}).get("n_forget")
        if isinstance(n, int) and n > 0:
            return n
    return default


def value(row: Mapping[str, Any] | None, key: str) -> float | None:
    return None if row is None else row.get(key)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "folder",
        type=Path,
        nargs="?",
        default=ROOT / "docs" / "unlearning" / "composable-run",
        help="a three-category study folder (default: the committed docs/unlearning/composable-run)",
    )
    ap.add_argument("--n", type=int, default=32, help="forget questions, when no step report says")
    args = ap.parse_args()
    rows = load(args.folder)
    n = forget_n(rows, args.n)
    entries = list(dict.fromkeys(r["entry"] for r in rows))
    unlearners = list(dict.fromkeys(r["unlearner"] for r in rows if r.get("unlearner")))
    base = next((r for r in rows if r["position"] == 0), None)
    print(f"{args.folder}: {len(rows)} rows; forget questions n = {n}")
    print(
        f"base model: forget accuracy {acc_text(value(base, 'forget_accuracy'), n)}, "
        f"perplexity {value(base, 'perplexity') or float('nan'):.2f}\n"
    )

    print("(a) forget accuracy after unlearning, then after quantizing (unlearn -> quantize)\n")
    print("| unlearner | quantizer | bits | after unlearning | after quantizing | change | perplexity after |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for u in unlearners:
        for q in ("rtn", "gptq", "awq"):
            entry = f"{u}+{q}"
            if entry not in entries:
                continue
            values = sorted({r["strength"] for r in rows if r["entry"] == entry}, reverse=True)
            for bits in values:
                after_u = at(rows, entry, [u, q], bits, 1)
                after_q = at(rows, entry, [u, q], bits, 2)
                a, b = value(after_u, "forget_accuracy"), value(after_q, "forget_accuracy")
                ppl = value(after_q, "perplexity")
                print(
                    f"| {u} | {q} | {bits} | {acc_text(a, n)} | {acc_text(b, n)} | {diff_text(a, b, n)} | "
                    f"{'–' if ppl is None else f'{ppl:.2f}'} |"
                )

    print("\n(b) perplexity after each unlearner alone (its own strengths where the study varies it)\n")
    print("| unlearner | strength | perplexity | forget accuracy | retain accuracy |")
    print("|---|---:|---:|---:|---:|")
    seen = set()
    for r in rows:
        step = r.get("step") or {}
        if r["position"] != 1 or step.get("kind") != "unlearn":
            continue
        key = (step.get("name"), json.dumps(step.get("config", {}), sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        label = r["strength"] if r.get("vary", "").startswith(f"{step.get('name')}.") else "preset"
        ppl = r.get("perplexity")
        print(
            f"| {step.get('name')} | {label} | {'inf' if ppl is None else f'{ppl:.2f}'} | "
            f"{acc_text(r.get('forget_accuracy'), n)} | {acc_text(r.get('retain_accuracy'), n)} |"
        )

    print("\n(c) unlearner and GPTQ at 4 bits, both orders: forget accuracy of the final model\n")
    print("| unlearner | unlearn -> gptq | gptq -> unlearn | E_OS (difference) |")
    print("|---|---:|---:|---:|")
    for u in unlearners:
        entry = f"{u}+gptq"
        first = value(at(rows, entry, [u, "gptq"], 4, 2), "forget_accuracy")
        second = value(at(rows, entry, ["gptq", u], 4, 2), "forget_accuracy")
        print(f"| {u} | {acc_text(first, n)} | {acc_text(second, n)} | {diff_text(first, second, n)} |")

    print("\n(d) editing and unlearning, both orders: final edit success and forget accuracy\n")
    print("| pair | strength | order | edit success | forget accuracy | perplexity |")
    print("|---|---:|---|---:|---:|---:|")
    for entry in entries:
        part = [r for r in rows if r["entry"] == entry and r.get("editor") and r.get("unlearner")]
        for r in sorted(part, key=lambda r: (r["strength"], r["order"])):
            if r["position"] != r["last_position"]:
                continue
            es, ppl = r.get("edit_success"), r.get("perplexity")
            print(
                f"| {entry} | {r['strength']} | {' -> '.join(r['order'])} | "
                f"{'–' if es is None else f'{es:.3f}'} | {acc_text(r.get('forget_accuracy'), n)} | "
                f"{'inf' if ppl is None else f'{ppl:.2f}'} |"
            )


if __name__ == "__main__":
    main()
