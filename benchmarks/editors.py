"""Every editor on the same CounterFact edits: quality, perplexity and time, one table.

For each model and each editor spec (its preset unless the spec overrides it), from the
same base weights: edit success and generalization (prob and f1 scorers), locality (prob)
and locality preservation, perplexity on wikitext-2 test before and after, and the edit's wall
time (statistics cached by an earlier editor count as cached for MEMIT and AlphaEdit: the
first locate-then-edit run on a model computes them). ``--sequential K`` adds, for the
locate-then-edit editors, one run of K batches of ``--edits`` edits applied one after
another (metrics on all K x edits).

    LMCOMPOSE_DATA_DIR=../shared/data .venv/bin/python benchmarks/editors.py \\
        [--models smollm2-135m,gemma3-270m] [--editors memit,alphaedit,ft,lora] [--edits 50] \\
        [--sequential 10 [--sequential-only]]
"""

from __future__ import annotations

import argparse
import time

from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, load_edits, parse_step
from lmcompose.engine.executor import evaluate
from lmcompose.models.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument(
        "--editors", default="memit,alphaedit,ft,lora", help="step specs, comma-separated (';' inside a spec is ',')"
    )
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--sequential", type=int, default=0, help="also K sequential batches of --edits for memit and alphaedit"
    )
    ap.add_argument(
        "--sequential-only",
        action="store_true",
        help="skip the one-batch runs (measured already), run only --sequential",
    )
    ap.add_argument("--ppl-tokens", type=int, default=16384)
    args = ap.parse_args()
    if args.sequential_only and args.sequential < 2:
        ap.error("--sequential-only runs only the sequential batches: give --sequential K with K >= 2 too")
    editors = [e.replace(";", ",") for e in args.editors.split(",")]

    print(
        "| model | editor | edits | batches | success (prob) | generalization (prob) | locality (prob) | locality "
        "preservation "
        "| success (f1) | generalization (f1) | perplexity before | perplexity after | time (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        lm = load_model(model)
        pristine = lm.state_copy()
        metrics = build_metrics(["edit", "perplexity"], {"perplexity": {"max_tokens": args.ppl_tokens, "seqlen": 1024}})
        runs = [] if args.sequential_only else [(e, args.edits, 1) for e in editors]
        if args.sequential > 1:
            runs += [
                (e, args.edits * args.sequential, args.sequential)
                for e in editors
                if e.split(":")[0] in ("memit", "alphaedit")
            ]
        base_ppl: dict[int, float] = {}
        for spec, n, batches in runs:
            lm.restore(pristine)
            records = load_edits("counterfact", limit=n, seed=args.seed)
            ctx = Context(edits=records, seed=args.seed)
            edit_metric = next(m for m in metrics if m.name == "edit")
            if n not in base_ppl:  # the base model's row, once per edit count
                b = evaluate(lm, metrics, ctx, "on the base model")
                base_ppl[n] = b["perplexity"]
                print(
                    f"| {model} | base | {n} | - | {b['edit_success_prob']:.2f} | {b['generalization_prob']:.2f} | "
                    f"{b['locality_prob']:.2f} | - | {b['edit_success_f1']:.2f} | {b['generalization_f1']:.2f} | "
                    f"{base_ppl[n]:.2f} | - | - |",
                    flush=True,
                )
            edit_metric.reference(lm, ctx)  # the base model's argmaxes: the locality-drift reference of this run
            full = spec + ("," if ":" in spec else ":") + f"batches={batches}" if batches > 1 else spec
            step = build_intervention(parse_step(full))
            t0 = time.perf_counter()
            step.apply(lm, ctx)
            elapsed = time.perf_counter() - t0
            r = evaluate(lm, metrics, ctx, f"after {spec}")
            print(
                f"| {model} | {spec} | {n} | {batches} | {r['edit_success_prob']:.2f} | "
                f"{r['generalization_prob']:.2f} | "
                f"{r['locality_prob']:.2f} | {r['locality_preservation']:.3f} | {r['edit_success_f1']:.2f} | "
                f"{r['generalization_f1']:.2f} | {base_ppl[n]:.2f} | {r['perplexity']:.2f} | {elapsed:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
