"""The small search behind the unlearners' SmolLM2-135M presets, and the before/after table
of docs/unlearning.md.

The benchmark (the facts the unmodified model answers, its forget and retain topics) is
built once on the base model; every setting then starts from the base weights. RMU's c is
tried as multiples of the mean norm of the residual after layer l on the forget facts (the
WMDP code's logs print that norm; its c = 6.5 at Zephyr-7B's layer 7 and 300 at Mixtral's
follow the models' activation scales). Each row: forget and retain accuracy on the four-way
questions (WMDP's letter format, and the cloze scoring), free-form QA, perplexity on a small
budget of wikitext-2 test, the seconds the step took.

    .venv/bin/python benchmarks/unlearn_search.py [--model smollm2-135m] [--methods rmu,ga,gd,npo]
        [--rmu-scales 0.5,1,2,4] [--rmu-epochs 10] [--epochs 1,3,5] [--npo-lrs 1e-5,5e-5] [--steps "ga:lr=1e-4;..."]
"""

from __future__ import annotations

import argparse
import time

import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, parse_step
from lmcompose.editing import pad_id
from lmcompose.engine.executor import evaluate
from lmcompose.models.loading import load_model
from lmcompose_unlearn.config import UnlearnMetricsConfig
from lmcompose_unlearn.facts import benchmark_for
from lmcompose_unlearn.intervention import GradientAscent
from lmcompose_unlearn.losses import pad_batch
from lmcompose_unlearn.metric import UnlearnMetrics
from lmcompose_unlearn.presets import preset_for
from lmcompose_unlearn.training import layer_output


def forget_norm(lm, bench, layer: int) -> float:
    """Mean norm of the residual after ``layer`` over the forget facts' tokens."""
    ex = GradientAscent().fact_examples(lm, bench.forget)
    ids, attn, _ = pad_batch(ex, pad_id(lm.tokenizer), lm.device)
    with torch.no_grad():
        h = layer_output(lm, layer, ids, attn).float()
    return float(h.norm(dim=-1)[attn.bool()].mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="rmu,ga,gd,npo")
    ap.add_argument("--rmu-scales", default="0.5,1,2,4", help="c as multiples of the forget activation norm at l")
    ap.add_argument("--rmu-epochs", default="10", help="RMU epochs (10 x 8 batches = max_batches 80)")
    ap.add_argument("--epochs", default="1,3,5", help="GA and GD epochs")
    ap.add_argument("--npo-lrs", default="1e-5,5e-5")
    ap.add_argument("--steps", default="", help="extra steps to measure, ';'-separated")
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    args = ap.parse_args()

    lm = load_model(args.model)
    pristine = lm.state_copy()
    ctx = Context(seed=0)
    metrics = build_metrics(["unlearn", "perplexity"], {"perplexity": {"max_tokens": args.ppl_tokens, "seqlen": 512}})
    cloze = UnlearnMetrics(UnlearnMetricsConfig(scoring="cloze", qa=False))
    for m in metrics:
        m.reference(lm, ctx)
    start = time.perf_counter()
    bench = benchmark_for(metrics[0].config, lm, ctx)
    print(f"benchmark built in {time.perf_counter() - start:.0f} s: {bench.summary}", flush=True)

    def measure(label: str, seconds: float, details: dict) -> None:
        r = evaluate(lm, metrics, ctx, "in benchmarks/unlearn_search.py")
        c = cloze.compute(lm, ctx)
        extra = {k: details[k] for k in ("steps", "stopped", "update_norm") if k in details}
        print(
            f"| {label} | {r['forget_accuracy']:.3f} | {r['retain_accuracy']:.3f} | {c['forget_accuracy']:.3f} | "
            f"{c['retain_accuracy']:.3f} | {r['forget_qa']:.3f} | {r['retain_qa']:.3f} | {r['perplexity']:.2f} | "
            f"{seconds:.0f} | {extra} |",
            flush=True,
        )

    print(
        "\n| step | forget acc (letter) | retain acc (letter) | forget acc (cloze) | retain acc (cloze) | forget QA | "
        "retain QA | perplexity | step s | details |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    measure("base", 0.0, {})
    steps: list[str] = []
    methods = args.methods.split(",")
    if "rmu" in methods:
        _, values = preset_for("rmu", lm)
        layer = values["layer"]
        norm = forget_norm(lm, bench, layer)
        print(f"\nRMU layer {layer}: forget activation norm {norm:.2f}\n", flush=True)
        for epochs in args.rmu_epochs.split(","):
            for k in (float(v) for v in args.rmu_scales.split(",")):
                steps.append(f"rmu:layer={layer},steering_coeff={k * norm:.4g},epochs={epochs}")
    for method in ("ga", "gd"):
        if method in methods:
            steps += [f"{method}:epochs={e}" for e in args.epochs.split(",")]
    if "npo" in methods:
        steps += [f"npo:lr={lr}" for lr in args.npo_lrs.split(",")]
    steps += [s.strip() for s in args.steps.split(";") if s.strip()]
    for text in steps:
        lm.restore(pristine)
        step = build_intervention(parse_step(text))
        start = time.perf_counter()
        report = step.apply(lm, ctx)
        measure(text, time.perf_counter() - start, report.details)


if __name__ == "__main__":
    main()
