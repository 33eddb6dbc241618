"""MEMIT's covariance sample count against edit quality, perplexity and cost (docs/memit.md).

MEMIT's preservation term λ·C uses C = E[kkᵀ] over ``stats_samples`` windows of
``stats_seqlen`` tokens of the calibration corpus. v* depends only on the last edit layer and
the optimisation settings, not on C, so it is computed once per replicate; every sample
count then re-runs only the statistics (into a fresh cache, so the first replicate's time is
the uncached cost) and the spread over the edit layers on a fresh copy of the weights, with
the model's preset (layers, λ). Per sample count, mean ± sample std over the replicates
(disjoint seeded batches of CounterFact edits, as a sweep draws them): edit success and
generalization (prob and f1 scorers), locality (prob), locality preservation, perplexity on
wikitext-2 test, and the statistics pass's wall time.

    LMCOMPOSE_DATA_DIR=../shared/data .venv/bin/python benchmarks/memit_stats.py \\
        [--model smollm2-135m] [--samples 12,25,50,100,200,400,700,1400] [--edits 50] [--replicates 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, load_edits, parse_step
from lmcompose.data import calibration_windows, corpus_text, tokenize_corpus
from lmcompose.editing import context_templates, optimize_vstar
from lmcompose.engine.executor import evaluate, replicate_edits
from lmcompose.models.loading import load_model
from lmcompose.stats import second_moments
from replication import fmt  # a sibling script: benchmarks/ is on the path when run

KEYS = (
    "edit_success_prob",
    "generalization_prob",
    "locality_prob",
    "locality_preservation",
    "edit_success_f1",
    "generalization_f1",
    "perplexity",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--step", default="memit", help="the MEMIT step spec (its other fields as given)")
    ap.add_argument("--samples", default="12,25,50,100,200,400,700,1400", help="stats_samples values")
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--replicates", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    args = ap.parse_args()
    counts = [int(v) for v in args.samples.split(",")]
    step = build_intervention(parse_step(args.step))
    if step.name != "memit":
        ap.error(f"--step {args.step!r}: give a memit step spec (e.g. memit:context_templates=0)")

    lm = load_model(args.model)
    pristine = lm.state_copy()
    c = step.config
    source, hp = step.hparams(lm)
    layers = list(hp.layers)
    names = {i: f"{lm.arch.layers}.{i}.{lm.arch.mlp_out}" for i in layers}
    seqlen = min(c.stats_seqlen, lm.max_positions)
    metrics = build_metrics(["edit", "perplexity"], {"perplexity": {"max_tokens": args.ppl_tokens, "seqlen": 1024}})
    edit_metric = next(m for m in metrics if m.name == "edit")

    def measure(ctx: Context) -> dict[str, float]:
        return evaluate(lm, metrics, ctx, "in benchmarks/memit_stats.py")

    batches = replicate_edits(
        load_edits("counterfact", limit=args.edits * args.replicates, seed=args.seed), args.replicates
    )
    text, where = corpus_text("calibration", Context())
    corpus_tokens = tokenize_corpus(lm.tokenizer, text, where).numel()
    print(
        f"\n{args.model}, {args.step} ({source}: layers {layers[0]}-{layers[-1]}, λ {hp.mom2_update_weight:g}), "
        f"{args.replicates} x {args.edits} CounterFact edits (seed {args.seed}); calibration corpus {where}: "
        f"{corpus_tokens} tokens; windows of {seqlen} tokens\n"
    )

    results: dict[int, dict[str, list[float]]] = {n: {k: [] for k in KEYS} for n in counts}
    stats_time: dict[int, float] = {}
    vstar_time: list[float] = []
    base: dict[str, list[float]] = {k: [] for k in KEYS if k != "locality_preservation"}
    with tempfile.TemporaryDirectory() as cache:
        for rep, records in enumerate(batches):
            ctx = Context(edits=records, seed=args.seed)
            lm.restore(pristine)
            measured = measure(ctx)
            for k in base:
                base[k].append(measured[k])
            edit_metric.reference(lm, ctx)
            templates = context_templates(lm, c.context_templates, c.template_tokens, args.seed)
            t0 = time.perf_counter()
            vs = optimize_vstar(
                lm, records, templates, layers[-1], hp, c.early_stop_loss, c.max_batch_tokens, c.compute_dtype
            )
            vstar_time.append(time.perf_counter() - t0)
            for n in counts:
                lm.restore(pristine)
                windows = calibration_windows(lm.tokenizer, n, seqlen, c.stats_seed, ctx)
                t0 = time.perf_counter()
                stats = second_moments(lm, list(names.values()), windows, Path(cache))
                if rep == 0:
                    stats_time[n] = time.perf_counter() - t0
                covs = {i: stats[names[i]]["mom2"] for i in layers}
                step.spread(lm, records, vs.target, templates, layers, hp.mom2_update_weight, covs)
                r = measure(ctx)
                for k in KEYS:
                    results[n][k].append(r[k])
                print(
                    f"(replicate {rep}, {n} windows: success {r['edit_success_prob']:.2f}, "
                    f"perplexity {r['perplexity']:.2f})",
                    flush=True,
                )

    print(
        f"\nbase model: success (prob) {fmt(base['edit_success_prob'], 2)}, locality (prob) "
        f"{fmt(base['locality_prob'], 2)}, perplexity {fmt(base['perplexity'], 2)}; "
        f"v* {statistics.fmean(vstar_time):.0f} s per replicate\n"
    )
    print(
        "| windows | tokens | share of corpus | success (prob) | generalization (prob) | locality (prob) | "
        "locality preservation | success (f1) | generalization (f1) | perplexity | statistics (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in counts:
        r = results[n]
        print(
            f"| {n} | {n * seqlen} | {n * seqlen / corpus_tokens:.2f} | {fmt(r['edit_success_prob'], 2)} | "
            f"{fmt(r['generalization_prob'], 2)} | {fmt(r['locality_prob'], 2)} | "
            f"{fmt(r['locality_preservation'], 3)} | "
            f"{fmt(r['edit_success_f1'], 2)} | {fmt(r['generalization_f1'], 2)} | {fmt(r['perplexity'], 2)} | "
            f"{stats_time[n]:.0f} |"
        )


if __name__ == "__main__":
    main()
