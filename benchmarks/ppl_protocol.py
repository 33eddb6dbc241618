"""The perplexity budget against the paper's protocol (docs/replication.md).

Studies here score perplexity on the first ``--budget-tokens`` of wikitext-2 test in windows of
``--budget-seqlen`` (the replication's 4,096 in windows of 1,024); ``protocol: paper`` scores
every window of the test split at the model's positions (8,192 for SmolLM2), which costs
far more per model state on a CPU. This prints both for the base model and for each
compressed model of ``--steps`` (each applied to a fresh copy of the base, calibrated on
``--calibration-samples`` windows of 512 as the replication study is): the perplexity, its
ratio to the base under the same protocol, and the evaluation time, so one can see whether
the budget ranks and scales the models as the whole split does.

    LMCOMPOSE_DATA_DIR=../shared/data .venv/bin/python benchmarks/ppl_protocol.py \\
        [--model smollm2-135m] [--steps STEP;STEP] [--full-tokens 0] [--full-seqlen 8192]
"""

from __future__ import annotations

import argparse

import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, parse_step
from lmcompose.engine.executor import evaluate
from lmcompose.errors import LMComposeError
from lmcompose.models.loading import load_model

STEPS = "gptq:group_size=64,bits=3,symmetric=true,act_order=true,true_sequential=true;wanda:sparsity=0.45"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", default=STEPS, help="compressed models to score, ';'-separated step specs")
    ap.add_argument("--budget-tokens", type=int, default=4096)
    ap.add_argument("--budget-seqlen", type=int, default=1024)
    ap.add_argument("--full-tokens", type=int, default=0, help="0 = every window of the split (the paper)")
    ap.add_argument("--full-seqlen", type=int, default=1 << 20, help="default: the model's positions")
    ap.add_argument("--calibration-samples", type=int, default=32)
    args = ap.parse_args()
    if args.budget_tokens < 1 or args.budget_seqlen < 1 or args.full_tokens < 0 or args.full_seqlen < 1:
        ap.error("--budget-tokens and the seqlens must be at least 1, --full-tokens at least 0 (0 = all)")
    steps = [s.strip() for s in args.steps.split(";") if s.strip()]
    try:  # a bad spec fails before the model loads
        built = [build_intervention(parse_step(s)) for s in steps]
    except LMComposeError as exc:
        ap.error(f"--steps: {exc}")

    torch.manual_seed(0)
    lm = load_model(args.model)
    pristine = lm.state_copy()
    protocols = {
        "budget": build_metrics(
            ["perplexity"], {"perplexity": {"max_tokens": args.budget_tokens, "seqlen": args.budget_seqlen}}
        ),
        "full": build_metrics(
            ["perplexity"], {"perplexity": {"max_tokens": args.full_tokens, "seqlen": args.full_seqlen}}
        ),
    }
    ctx = Context(calibration_samples=args.calibration_samples)
    rows: list[tuple[str, dict[str, dict]]] = []
    for label, step in [("base", None), *zip(steps, built, strict=True)]:
        lm.restore(pristine)
        if step is not None:
            step.apply(lm, ctx)
        got = {name: evaluate(lm, metrics, ctx, f"on {label}") for name, metrics in protocols.items()}
        rows.append((label, got))
        print(
            f"({label}: budget {got['budget']['perplexity']:.2f} in {got['budget']['eval_s']:.0f} s, "
            f"full {got['full']['perplexity']:.2f} in {got['full']['eval_s']:.0f} s)",
            flush=True,
        )

    base = rows[0][1]
    b, f = base["budget"], base["full"]
    print(
        f"\n{args.model}; budget: {b['ppl_tokens']} tokens in windows of {b['ppl_seqlen']}; full: {f['ppl_tokens']} "
        f"tokens in windows of {f['ppl_seqlen']} ({f['ppl_corpus']}); torch threads {torch.get_num_threads()}\n"
    )
    print("| model | perplexity (budget) | × base | perplexity (full) | × base | eval s (budget) | eval s (full) |")
    print("|---|---|---|---|---|---|---|")
    for label, got in rows:
        gb, gf = got["budget"], got["full"]
        print(
            f"| {label} | {gb['perplexity']:.2f} | {gb['perplexity'] / b['perplexity']:.2f} | {gf['perplexity']:.2f} | "
            f"{gf['perplexity'] / f['perplexity']:.2f} | {gb['eval_s']:.0f} | {gf['eval_s']:.0f} |"
        )
    for note in ctx.notes:
        print("note:", note)


if __name__ == "__main__":
    main()
