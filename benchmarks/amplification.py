"""How far a compressor's output moves when its inputs move by float rounding.

Each compressor of the replication study (at the study's budgets: calibration 32 x 512
tokens, perplexity on 4,096 wikitext-2 test tokens in windows of 1,024) runs on
SmolLM2-135M (a Q4_1 GGUF dequantized to fp32) several times from the same base weights:

* ``ref``: 2 threads, calibration seed 0, the reference;
* ``again``: the same command once more (must be bit-identical);
* ``threads1``: 1 thread, everything else equal;
* ``perturb``: the inputs of decoder layer 0 multiplied by (1 + 1e-7 z), z ~ N(0, 1) fixed,
  during calibration only (float32 rounding is about 6e-8 relative);
* ``seed1``, ``seed2``: other calibration windows (the compressor's own sampling variance).

For each run it prints the perplexity, its relative difference from ``ref``, the share of
compressed weights that differ from ``ref`` and the largest difference. The first three
rows measure numerical amplification (they should agree to the last digit or nearly);
the seed rows are the noise floor a calibration seed brings, the scale against which the
others are read.

    LMCOMPOSE_DATA_DIR=../shared/data .venv/bin/python benchmarks/amplification.py \\
        [--methods gptq,awq,sparsegpt,wanda] [--variants ref,again,threads1,perturb,seed1,seed2]
"""

from __future__ import annotations

import argparse
import hashlib
import time

import torch
from lmcompose.api import Context
from lmcompose.engine.executor import evaluate
from lmcompose.models.arch import decoder_layers
from lmcompose.models.loading import load_model
from lmcompose.steps import build_intervention, build_metrics, parse_step

METHODS = {
    "gptq": "gptq:bits=4,group_size=64",
    "awq": "awq:bits=4,group_size=64",
    "sparsegpt": "sparsegpt:sparsity=0.45",
    "wanda": "wanda:sparsity=0.45",
}
VARIANTS = {
    "ref": {"threads": 2, "seed": 0, "perturb": 0.0},
    "again": {"threads": 2, "seed": 0, "perturb": 0.0},
    "threads1": {"threads": 1, "seed": 0, "perturb": 0.0},
    "perturb": {"threads": 2, "seed": 0, "perturb": 1e-7},
    "seed1": {"threads": 2, "seed": 1, "perturb": 0.0},
    "seed2": {"threads": 2, "seed": 2, "perturb": 0.0},
}


def perturb_layer0(lm, scale: float):
    """A pre-hook on decoder layer 0 multiplying its hidden-state input by (1 + scale z), z fixed."""
    noise: dict[tuple[int, ...], torch.Tensor] = {}

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        key = tuple(hidden.shape)
        if key not in noise:
            g = torch.Generator().manual_seed(1234 + hidden.shape[-2])
            noise[key] = torch.randn(hidden.shape, generator=g, dtype=torch.float32).to(hidden.dtype)
        moved = hidden * (1 + scale * noise[key])
        if args:
            return (moved, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": moved}

    return decoder_layers(lm.model, lm.arch)[0].register_forward_pre_hook(hook, with_kwargs=True)


def digest(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(weights[name].numpy().tobytes())
    return h.hexdigest()[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    args = ap.parse_args()

    lm = load_model(args.model)
    pristine = lm.state_copy()
    metric = build_metrics(["perplexity"], {"perplexity": {"max_tokens": args.ppl_tokens, "seqlen": 1024}})
    variants = args.variants.split(",")
    if variants[0] != "ref":
        variants = ["ref", *[v for v in variants if v != "ref"]]
    print(f"torch {torch.__version__}; {args.model}; calibration {args.samples} x {args.seqlen}")
    print()
    print(
        "| method | run | threads | seed | perturb | perplexity | rel. diff vs ref | weights differing | max abs diff "
        "| digest | time s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for method in args.methods.split(","):
        ref_w: dict[str, torch.Tensor] | None = None
        ref_ppl = None
        for v in variants:
            cfg = VARIANTS[v]
            lm.restore(pristine)
            torch.set_num_threads(cfg["threads"])
            step = build_intervention(parse_step(METHODS[method]))
            ctx = Context(seed=cfg["seed"], calibration_samples=args.samples, calibration_seqlen=args.seqlen)
            handle = perturb_layer0(lm, cfg["perturb"]) if cfg["perturb"] else None
            start = time.perf_counter()
            try:
                step.apply(lm, ctx)
            finally:
                if handle is not None:
                    handle.remove()
            took = time.perf_counter() - start
            torch.set_num_threads(2)  # evaluate alike, so only the compressed weights differ
            ppl = evaluate(lm, metric, Context(), "amplification")["perplexity"]
            names = sorted(lm.compression)  # the layers this step compressed
            weights = {n: lm.weight(n).detach().clone() for n in names}
            if ref_w is None:
                ref_w, ref_ppl = weights, ppl
            diff = [(weights[n] != ref_w[n]) for n in names]
            share = sum(int(d.sum()) for d in diff) / sum(d.numel() for d in diff)
            maxd = max(float((weights[n] - ref_w[n]).abs().max()) for n in names)
            print(
                f"| {method} | {v} | {cfg['threads']} | {cfg['seed']} | {cfg['perturb']:g} | {ppl:.6f} "
                f"| {ppl / ref_ppl - 1:+.2e} | {share:.2e} | {maxd:.3g} | {digest(weights)} | {took:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
