"""MEMIT on SmolLM2-135M: N CounterFact edits, quality, time, and the floor for the edit.

One run, fp32, measured here:

* statistics: E[kkᵀ] for every edit layer over the preset's windows (200 x 512 tokens of
  wikitext-2 train prefix + validation), computed fresh into a temporary cache, timed;
* the edit: MEMIT with the preset, statistics cached, timed (templates, v*, update);
* the floor for the edit: the v* optimisation steps actually run x one forward+backward of
  the whole v* batch (every edit, every context template, the KL prompts; same length
  groups) from the first edit layer up, with the gradient taken only for the input (the
  layers below need none and are computed once, outside the timing);
* quality: edit success, generalization, locality with the prob and preservation scorers, neighbour
  knowledge, and perplexity on wikitext-2 test before and after.

    .venv/bin/python benchmarks/memit_edit.py [--edits 50] [--dataset counterfact] [--ppl-tokens 16384]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, load_edits, parse_step
from lmcompose.data import calibration_windows
from lmcompose.engine.executor import evaluate
from lmcompose.models.arch import decoder_layers
from lmcompose.models.loading import load_model
from lmcompose.stats import second_moments
from lmcompose_memit import algorithm as alg


def floor_step_seconds(lm, records, templates, first: int, max_tokens: int, repeats: int = 2) -> float:
    """One forward+backward of the whole v* batch from decoder layer ``first`` up."""
    rows = alg.rewrite_rows(lm.tokenizer, records, templates)
    groups = alg.length_groups([len(r.ids) for r in rows], max_tokens)
    pad = alg.pad_id(lm.tokenizer)
    tail = alg.Tail(lm, first - 1)
    prepared = []
    for group in groups:
        ids = alg.pad_right([rows[i].ids for i in group], pad)
        h = alg.residual_entering(lm, first, ids)
        r_idx, pos, tgt = [], [], []
        for k, i in enumerate(group):
            for p, t in zip(rows[i].target_positions, rows[i].target_ids, strict=True):
                r_idx.append(k)
                pos.append(p)
                tgt.append(t)
            if rows[i].kl:
                r_idx.append(k)
                pos.append(rows[i].lookup)
                tgt.append(0)
        prepared.append((h, torch.tensor(r_idx), torch.tensor(pos), torch.tensor(tgt)))
    for p in lm.model.parameters():
        p.requires_grad_(False)
    times = []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            for h, r_idx, pos, tgt in prepared:
                x = h.clone().requires_grad_(True)
                logp = torch.log_softmax(tail.logits(x, r_idx, pos), -1)
                (-logp[torch.arange(len(tgt)), tgt].sum()).backward()
            times.append(time.perf_counter() - start)
    finally:
        for p in lm.model.parameters():
            p.requires_grad_(True)
    return statistics.median(times)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dataset", default="counterfact")
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--step", default="memit", help="the memit step with any overrides, e.g. memit:layers=2+3+4")
    ap.add_argument("--ppl-tokens", type=int, default=16384)
    ap.add_argument("--ppl-seqlen", type=int, default=1024)
    ap.add_argument("--skip-floor", action="store_true")
    ap.add_argument("--skip-quality", action="store_true", help="time statistics, edit and floor only (no metrics)")
    args = ap.parse_args()

    lm = load_model(args.model)
    records = load_edits(args.dataset, limit=args.edits, seed=args.seed)
    cache = Path(tempfile.mkdtemp(prefix="memit-bench-"))
    ctx = Context(edits=records, seed=args.seed, cache_dir=cache)
    step = build_intervention(parse_step(args.step))
    source, hp = step.hparams(lm)
    metrics = build_metrics(
        ["edit", "perplexity"],
        {
            "edit": {"scorer": "prob", "locality_scorer": "preservation"},
            "perplexity": {"max_tokens": args.ppl_tokens, "seqlen": args.ppl_seqlen},
        },
    )

    def measure() -> dict:
        out: dict = {}
        if args.skip_quality:
            return out
        return evaluate(lm, metrics, ctx, "in benchmarks/memit_edit.py")

    before = measure()

    c = step.config
    windows = calibration_windows(
        lm.tokenizer, c.stats_samples, min(c.stats_seqlen, lm.max_positions), c.stats_seed, ctx
    )
    names = [f"{lm.arch.layers}.{i}.{lm.arch.mlp_out}" for i in hp.layers]
    start = time.perf_counter()
    second_moments(lm, names, windows, ctx.stats_dir())
    t_stats = time.perf_counter() - start

    start = time.perf_counter()
    report = step.apply(lm, ctx)
    t_edit = time.perf_counter() - start
    d = report.details
    assert d["stats_cached"], "statistics should have come from the cache"
    after = measure()

    floor = None
    if not args.skip_floor:
        fresh = load_model(args.model)  # the floor is measured on the unedited model (same cost)
        templates = d["templates"]
        per_step = floor_step_seconds(fresh, records, templates, hp.layers[0], c.max_batch_tokens)
        floor = d["vstar_forward_steps"] * per_step

    n_layers = len(decoder_layers(lm.model, lm.arch))
    print(
        f"\nMEMIT, {args.model} ({n_layers} layers), {len(records)} {args.dataset} edits (seed {args.seed}), fp32, "
        f"{torch.get_num_threads()} threads; hyperparameters: {source}: {hp.as_dict()}"
    )
    print(f"statistics: {d['stats_tokens']} tokens, {len(names)} layers: {t_stats:.1f} s (fresh)")
    print(
        f"edit: {t_edit:.1f} s = templates {d['templates_s']:.1f} + v* {d['vstar_s']:.1f} + update {d['update_s']:.1f} "
        f"(+ cache lookups); v* steps run {d['vstar_forward_steps']} (mean per edit {d['vstar_steps_mean']:.1f}), "
        f"{d['vstar_converged']}/{len(records)} edits below the early-stop loss, "
        f"first-step tokens {d['vstar_tokens_first_step']}"
    )
    if floor is not None:
        print(
            f"floor: {d['vstar_forward_steps']} steps x {floor / d['vstar_forward_steps']:.2f} s "
            f"(forward+backward of the whole v* batch from layer {hp.layers[0]} up) = {floor:.1f} s; "
            f"edit / floor = {t_edit / floor:.2f}"
        )
    if args.skip_quality:
        return
    print()
    print("| metric | before | after |")
    print("|---|---|---|")
    for key in (
        "edit_success_prob",
        "generalization_prob",
        "locality_prob",
        "edit_success_f1",
        "generalization_f1",
        "neighbour_knowledge",
        "locality_preservation",
        "perplexity",
    ):
        b, a = before.get(key), after.get(key)
        print(f"| {key} | {_fmt(b)} | {_fmt(a)} |")
    print(
        f"\nperplexity rise: {100 * (after['perplexity'] / before['perplexity'] - 1):+.2f}% "
        f"({args.ppl_tokens} tokens in windows of {args.ppl_seqlen})"
    )


if __name__ == "__main__":
    main()
