"""How much precision the named models' "dense" weights have (docs/models.md, issue 42).

Each named model is a quantized GGUF file dequantized to float32. For each one installed,
this prints its ``base_format`` label, the GGUF tensor types (over all weights and over the
decoder projections, the layers avg_bits counts), the bits per weight the file stores its
projections in, how many distinct values a group of 32 input weights of a projection takes
after dequantization (a Q4_1 block holds at most 16), and the relative change
|W_q − W| / |W| that round-to-nearest (asymmetric, group 32, the grid of lmcompose's rtn,
GPTQ and AWQ) makes at 8, 4 and 3 bits — on the weights as loaded and on a control: the same
weights with each group's 4-bit rounding undone by uniform noise of ± half its step, the
nearest stand-in for a full-precision checkpoint this machine has (no full-precision causal
LM of this size ships in a package it can install; docs/models.md says what was searched).

    .venv/bin/python benchmarks/base_precision.py [--models smollm2-135m,gemma3-270m]

About 10 minutes for both models on 2 CPU cores (``--layers N`` looks at the first N
projections of each).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from lmcompose.models.formats import gguf_tensor_types
from lmcompose.models.loading import NAMED_MODELS, cache_dir, load_model
from lmcompose.quant import QuantGrid

GROUP = 32


def distinct_per_group(w: torch.Tensor) -> list[int]:
    """Distinct values in each group of ``GROUP`` consecutive inputs of each row."""
    rows, cols = w.shape
    groups = w[:, : cols // GROUP * GROUP].reshape(-1, GROUP)
    ordered = groups.sort(dim=1).values
    return (1 + (ordered[:, 1:] != ordered[:, :-1]).sum(dim=1)).tolist()


def control(w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``w`` with uniform noise of ± half each group's 4-bit step (range / 15)."""
    rows, cols = w.shape
    g = w[:, : cols // GROUP * GROUP].reshape(rows, -1, GROUP)
    step = (g.amax(dim=2, keepdim=True) - g.amin(dim=2, keepdim=True)) / 15
    noise = (torch.rand(g.shape, generator=generator) - 0.5) * step
    out = w.clone()
    out[:, : cols // GROUP * GROUP] = (g + noise).reshape(rows, -1)
    return out


def rtn_change(w: torch.Tensor, bits: int) -> float:
    q = w.clone()
    QuantGrid.fit(q, bits, GROUP, False).snap_(q)
    return float((q - w).norm() / w.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(NAMED_MODELS))
    ap.add_argument("--layers", type=int, default=0, help="projections per model (0 = all)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    print("| model | base_format | GGUF types (share of all weights) | projections | bits/weight | distinct per 32 "
          "(median, max) | RTN 8 / 4 / 3 bits: as loaded | control |")  # fmt: skip
    print("|---|---|---|---|---:|---|---|---|")
    for name in args.models.split(","):
        named = NAMED_MODELS[name]
        try:
            path = named.locate(cache_dir())
        except Exception as exc:  # noqa: BLE001 - a package not installed: say so and go on
            print(f"| {name} | not installed: {exc} | | | | | | |")
            continue
        types = gguf_tensor_types(path)
        total, proj = sum(types.elements.values()), sum(types.projections.values())

        def shares(counts, n):
            return ", ".join(f"{k} {v / n:.1%}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))

        lm = load_model(name)
        layers = lm.linear_layers()[: args.layers or None]
        distinct: list[int] = []
        loaded = {b: [] for b in (8, 4, 3)}
        noisy = {b: [] for b in (8, 4, 3)}
        for layer, _ in layers:
            w = lm.weight(layer).detach().float()
            distinct += distinct_per_group(w)
            c = control(w, gen)
            for b in loaded:
                loaded[b].append(rtn_change(w, b))
                noisy[b].append(rtn_change(c, b))
        fmt = lambda d: " / ".join(f"{statistics.fmean(d[b]):.4f}" for b in (8, 4, 3))  # noqa: E731
        print(
            f"| {name} | {lm.base_format} | {shares(types.elements, total)} | {shares(types.projections, proj)} | "
            f"{types.projection_bits():.3f} | {statistics.median(distinct):.0f}, {max(distinct)} | "
            f"{fmt(loaded)} | {fmt(noisy)} |"
        )


if __name__ == "__main__":
    main()
