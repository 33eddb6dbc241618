"""The small hyperparameter search behind MEMIT's SmolLM2-135M preset (docs/memit.md).

v* depends only on the last edit layer z and the optimisation settings, so it is computed
once per z; each (number of layers ending at z, lambda) then only re-runs the spread
(keys, residuals, closed-form updates) on a fresh copy of the weights. Measured on a
validation set of CounterFact edits disjoint from the benchmark's (seed 1 vs seed 0):
edit success / generalization / locality with the prob scorer, locality preservation, perplexity
on a small budget of wikitext-2 test.

    .venv/bin/python benchmarks/memit_search.py [--edits 20] [--z 7] [--counts 1,3,5] [--lambdas 500,1500,5000,15000]
"""

from __future__ import annotations

import argparse
import time

from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, load_edits, parse_step
from lmcompose.data import calibration_windows
from lmcompose.engine.executor import evaluate
from lmcompose.models.loading import load_model
from lmcompose.stats import second_moments
from lmcompose_memit import algorithm as alg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dataset", default="counterfact")
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--z", default="7", help="last edit layers to try, comma-separated")
    ap.add_argument("--counts", default="1,3,5", help="numbers of consecutive edit layers ending at z")
    ap.add_argument("--lambdas", default="500,1500,5000,15000")
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    args = ap.parse_args()

    lm = load_model(args.model)
    pristine = lm.state_copy()
    records = load_edits(args.dataset, limit=args.edits, seed=args.seed)
    ctx = Context(edits=records, seed=args.seed)
    step = build_intervention(parse_step("memit"))
    source, hp = step.hparams(lm)
    c = step.config
    metrics = build_metrics(["edit", "perplexity"], {"perplexity": {"max_tokens": args.ppl_tokens, "seqlen": 1024}})

    def measure() -> dict:
        return evaluate(lm, metrics, ctx, "in benchmarks/memit_search.py")

    base = measure()
    templates = alg.context_templates(lm, c.context_templates, c.template_tokens, args.seed)
    windows = calibration_windows(
        lm.tokenizer, c.stats_samples, min(c.stats_seqlen, lm.max_positions), c.stats_seed, ctx
    )
    print(
        f"\n{args.model}, {len(records)} {args.dataset} edits (seed {args.seed}); optimisation settings from {source}: "
        f"{ {k: v for k, v in hp.as_dict().items() if k.startswith(('v_', 'clamp', 'kl'))} }"
    )
    print(
        f"base: success {base['edit_success_prob']:.2f}, generalization {base['generalization_prob']:.2f}, "
        f"locality {base['locality_prob']:.2f}, perplexity {base['perplexity']:.2f}\n"
    )
    print(
        "| layers | lambda | success (prob) | generalization (prob) | locality (prob) | locality preservation "
        "| success (f1) | perplexity |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for z in (int(v) for v in args.z.split(",")):
        lm.restore(pristine)
        start = time.perf_counter()
        vs = alg.optimize_vstar(lm, records, templates, z, hp, c.early_stop_loss, c.max_batch_tokens)
        t_v = time.perf_counter() - start
        for count in (int(v) for v in args.counts.split(",")):
            layers = list(range(z - count + 1, z + 1))
            names = {i: f"{lm.arch.layers}.{i}.{lm.arch.mlp_out}" for i in layers}
            lm.restore(pristine)
            stats = second_moments(lm, list(names.values()), windows, ctx.stats_dir())
            covs = {i: stats[names[i]]["mom2"] for i in layers}
            for lam in (float(v) for v in args.lambdas.split(",")):
                lm.restore(pristine)
                step.spread(lm, records, vs.target, templates, layers, lam, covs)
                r = measure()
                print(
                    f"| {layers[0]}-{layers[-1]} | {lam:g} | {r['edit_success_prob']:.2f} | "
                    f"{r['generalization_prob']:.2f} | "
                    f"{r['locality_prob']:.2f} | {r['locality_preservation']:.3f} | {r['edit_success_f1']:.2f} | "
                    f"{r['perplexity']:.2f} |",
                    flush=True,
                )
        print(
            f"\n(v* at layer {z}: {vs.forward_steps} steps, {t_v:.0f} s; "
            f"{sum(x < c.early_stop_loss for x in vs.final_loss)}/{len(records)} edits below the early-stop loss)"
        )


if __name__ == "__main__":
    main()
