"""Baseline compressors on SmolLM2-135M: magnitude (50% unstructured, 2:4) and rtn (4 and 3
bits, group 64), each applied alone to a fresh copy of the model, with the dense model
measured in the same run.

Prints a table: perplexity on wikitext-2 test (first --ppl-tokens tokens in windows of
--seqlen), average bits, time to apply, time to evaluate. Needs LMCOMPOSE_DATA_DIR (the
Makefile sets it when ../shared/data exists); without it the numbers are on the bundled
sample text and only a smoke test.

    .venv/bin/python benchmarks/baselines.py [--ppl-tokens 16384] [--seqlen 1024]
"""

from __future__ import annotations

import argparse
import time

import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, parse_step
from lmcompose.engine.executor import evaluate
from lmcompose.models.loading import load_model

SETTINGS = [
    "magnitude:sparsity=0.5",
    "magnitude:structure=2:4",
    "rtn:bits=4,group_size=64",
    "rtn:bits=3,group_size=64",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ppl-tokens", type=int, default=16384)
    ap.add_argument("--seqlen", type=int, default=1024)
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(args.model)
    pristine = lm.state_copy()
    metrics = build_metrics(
        ["perplexity", "avg_bits"], {"perplexity": {"max_tokens": args.ppl_tokens, "seqlen": args.seqlen}}
    )
    ctx = Context()

    def measure():
        out = evaluate(lm, metrics, ctx, "in benchmarks/baselines.py")
        return out, out["eval_s"]

    rows = []
    base, t_eval = measure()
    rows.append(("dense", base["perplexity"], base["avg_bits"], 0.0, t_eval))
    for step_text in SETTINGS:
        lm.restore(pristine)
        step = build_intervention(parse_step(step_text))
        start = time.perf_counter()
        step.apply(lm, ctx)
        t_apply = time.perf_counter() - start
        res, t_eval = measure()
        rows.append((step_text, res["perplexity"], res["avg_bits"], t_apply, t_eval))

    print(
        f"model {args.model}; perplexity on {base['ppl_corpus']}: {base['ppl_tokens']} tokens, windows of "
        f"{base['ppl_seqlen']}; torch threads {torch.get_num_threads()}"
    )
    print(f"{'setting':<28} {'perplexity':>10} {'x dense':>8} {'avg bits':>9} {'apply s':>8} {'eval s':>7}")
    for name, ppl, bits, ta, te in rows:
        print(f"{name:<28} {ppl:>10.2f} {ppl / rows[0][1]:>8.2f} {bits:>9.3f} {ta:>8.1f} {te:>7.1f}")
    for note in ctx.notes:
        print("note:", note)


if __name__ == "__main__":
    main()
