"""Does MEMIT's edit depend on torch's thread count, and at which stage?

The replication's noise floor repeats cells with every step at one thread instead of two.
The compressors alone are bit-identical at 1 and 2 threads (benchmarks/amplification.py),
yet MEMIT's edited dense model was not, and GPTQ amplified the difference into percents of
perplexity. This runs MEMIT (the study's step, ``memit:context_templates=0``, 50
CounterFact edits) on SmolLM2-135M (a Q4_1 GGUF dequantized to fp32) at 2 threads, again
at 2, and at 1, with the covariance statistics computed once per thread count, and
compares each stage with the first run: the covariance, the keys and residuals that enter
the closed-form update, the update ΔW itself, and the edited weights and perplexity. A
last row solves the first run's own inputs at 1 thread, isolating the solve.

    LMCOMPOSE_DATA_DIR=../shared/data .venv/bin/python benchmarks/memit_threads.py \\
        [--edits 50] [--step memit:context_templates=0] [--threads 2,2,1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from amplification import digest  # a sibling script: benchmarks/ is on the path when run
from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, load_edits, parse_step
from lmcompose.engine.executor import evaluate
from lmcompose.models.loading import load_model
from lmcompose_memit import algorithm as alg


def compare(a: list[torch.Tensor], b: list[torch.Tensor]) -> str:
    if all(torch.equal(x, y) for x, y in zip(a, b, strict=True)):
        return "identical"
    rel = max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-30)) for x, y in zip(a, b, strict=True))
    return f"differs (max rel {rel:.1e})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--step", default="memit:context_templates=0")
    ap.add_argument("--threads", default="2,2,1", help="thread counts of the runs; the first is the reference")
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    args = ap.parse_args()

    lm = load_model(args.model)
    pristine = lm.state_copy()
    records = load_edits("counterfact", limit=args.edits, seed=args.seed)
    metric = build_metrics(["perplexity"], {"perplexity": {"max_tokens": args.ppl_tokens, "seqlen": 1024}})
    threads = [int(t) for t in args.threads.split(",")]
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, torch.Tensor]] = []
    original = alg.memit_delta

    def recording(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor, lam: float) -> torch.Tensor:
        out = original(keys, resid, cov, lam)
        seen.append((keys.detach().clone(), resid.detach().clone(), cov.detach().clone(), lam, out.detach().clone()))
        return out

    alg.memit_delta = recording  # the intervention imports it from the module at call time
    print(f"torch {torch.__version__}; {args.model}; {args.edits} CounterFact edits; {args.step}")
    print()
    print("| run | threads | covariance | keys, residuals | ΔW | edited weights | perplexity | time s |")
    print("|---|---:|---|---|---|---|---:|---:|")
    ref: dict[str, list[torch.Tensor]] | None = None
    ref_calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, torch.Tensor]] = []
    caches: dict[int, Path] = {}
    for i, n in enumerate(threads):
        lm.restore(pristine)
        seen.clear()
        torch.set_num_threads(n)
        cache = caches.setdefault(n, Path(tempfile.mkdtemp(prefix=f"memit-threads{n}-")))
        step = build_intervention(parse_step(args.step))
        ctx = Context(edits=records, seed=args.seed, cache_dir=cache)
        start = time.perf_counter()
        step.apply(lm, ctx)
        took = time.perf_counter() - start
        torch.set_num_threads(2)  # evaluate alike, so only the edited weights differ
        ppl = evaluate(lm, metric, Context(), "memit_threads")["perplexity"]
        _, hp = step.hparams(lm)
        names = [f"{lm.arch.layers}.{j}.{lm.arch.mlp_out}" for j in hp.layers]
        got = {
            "cov": [s[2] for s in seen],
            "kr": [t for s in seen for t in (s[0], s[1])],
            "delta": [s[4] for s in seen],
            "w": [lm.weight(name).detach().clone() for name in names],
        }
        if ref is None:
            ref, ref_calls = got, list(seen)
            cells = [digest({f"{j:04d}": t for j, t in enumerate(got[k])}) for k in ("cov", "kr", "delta", "w")]
        else:
            cells = [compare(got[k], ref[k]) for k in ("cov", "kr", "delta", "w")]
        print(f"| {i} | {n} | {' | '.join(cells)} | {ppl:.6f} | {took:.0f} |", flush=True)
    alg.memit_delta = original
    for n in sorted(set(threads)):
        torch.set_num_threads(n)
        again = [original(keys, resid, cov, lam) for keys, resid, cov, lam, _ in ref_calls]
        print(f"| solve only, run 0's inputs | {n} | | | {compare(again, [c[4] for c in ref_calls])} | | | |")


if __name__ == "__main__":
    main()
