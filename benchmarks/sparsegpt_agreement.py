"""SparseGPT against llm-compressor's on identical problems: the same W and the same H.

The end-to-end comparison in benchmarks/pruning.py mixes two things: the algorithm and
the rounding of everything around it (Hessian accumulation, the pipeline's recomputed
inputs), which compounds over 30 layers. This script removes the second. It collects H =
Σ xxᵀ (float64, then float32) for every projection of a few decoder layers of the dense
model over the calibration windows, then prunes each matrix with our ``sparsegpt_prune``
and with llm-compressor's ``sparsify_weight`` (run in the separate benchmark venv, see
benchmarks/pruning.py) given exactly that W and H, at two block sizes each. It prints,
per projection and in total:

- mask agreement: the fraction of weights both runs keep or both prune;
- relative layer error ‖(W − Ŵ)X‖² / ‖WX‖² = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) of each result.

Agreement between our two block sizes (an exact variant: at N:M the block size changes
only when the updates are applied) shows how far rounding alone moves the masks; the
agreement between the two implementations at the same block size reads against it.

    .venv/bin/python benchmarks/sparsegpt_agreement.py [--structure 2:4] [--layers 0,15,29] [--n-samples 128]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from lmcompose.api import Context
from lmcompose.models.arch import weight_matrix
from lmcompose.models.loading import load_model
from lmcompose_sparsegpt.algorithm import sparsegpt_prune

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from pruning import ensure_llmc_venv  # noqa: E402

LLMC_SIDE = r"""
import sys, torch
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight
problems = torch.load(sys.argv[1], weights_only=True)
sparsity, n, m = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
out = {}
for bs in [int(b) for b in sys.argv[6].split(",")]:
    for name, (w, h) in problems.items():
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight.data.copy_(w)
        _, pruned = sparsify_weight(lin, {lin: h.clone()}, sparsity, n, m, bs, 0.01, False)
        out[f"{name}@{bs}"] = pruned
torch.save(out, sys.argv[2])
"""


@torch.no_grad()
def collect_problems(lm, windows: torch.Tensor, layers: list[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(W, H) in float32 for every projection of the given decoder layers; H = Σ xxᵀ over
    all calibration tokens, accumulated in float64, of the dense model."""
    prefixes = tuple(f"{lm.arch.layers}.{i}." for i in layers)
    wanted = {name: mod for name, mod in lm.linear_layers() if name.startswith(prefixes)}
    widths = {name: weight_matrix(mod).shape[1] for name, mod in wanted.items()}
    hs = {name: torch.zeros(d, d, dtype=torch.float64) for name, d in widths.items()}

    def hook(name):
        def fn(_mod, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            hs[name].addmm_(x.t(), x)

        return fn

    handles = [mod.register_forward_pre_hook(hook(name)) for name, mod in wanted.items()]
    try:
        decoder = lm.model.base_model
        for j in range(windows.shape[0]):
            decoder(windows[j : j + 1], use_cache=False)
            print(f"\rcollected window {j + 1}/{windows.shape[0]}", end="", file=sys.stderr)
        print(file=sys.stderr)
    finally:
        for h in handles:
            h.remove()
    return {name: (weight_matrix(mod).float().clone(), hs[name].float()) for name, mod in wanted.items()}


def relative_error(w: torch.Tensor, pruned: torch.Tensor, h: torch.Tensor) -> tuple[float, float]:
    """(tr(ΔW H ΔWᵀ), tr(W H Wᵀ)) in float64."""
    w, pruned, h = w.detach().double(), pruned.detach().double(), h.double()
    delta = w - pruned
    return float(((delta @ h) * delta).sum()), float(((w @ h) * w).sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--structure", default="2:4", help="N:M, or an unstructured sparsity such as 0.5")
    ap.add_argument("--layers", default="0,15,29")
    ap.add_argument("--block-sizes", default="128,64")
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    args = ap.parse_args()

    try:
        if ":" in args.structure:
            n, m = (int(v) for v in args.structure.split(":"))
            nm, sparsity, llmc_n, llmc_m = (n, m), 0.5, m - n, m  # llm-compressor's prune_n counts the pruned
        else:
            nm, sparsity, llmc_n, llmc_m = None, float(args.structure), 0, 0
    except ValueError:
        ap.error(
            f"--structure {args.structure!r}: give N:M (e.g. 2:4) or an unstructured sparsity in [0, 1) (e.g. 0.5)"
        )
    blocks = [int(b) for b in args.block_sizes.split(",")]
    layers = [int(v) for v in args.layers.split(",")]

    lm = load_model(args.model, dtype="float32")
    ctx = Context(calibration_samples=args.n_samples, calibration_seqlen=args.seqlen)
    problems = collect_problems(lm, ctx.calibration_batches(lm), layers)

    ours = {}
    for bs in blocks:
        for name, (w, h) in problems.items():
            pruned = w.clone()
            sparsegpt_prune(pruned, h, sparsity, nm, bs, 0.01, [], name)
            ours[f"{name}@{bs}"] = pruned

    py = ensure_llmc_venv()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(problems, Path(tmp) / "problems.pt")
        (Path(tmp) / "side.py").write_text(LLMC_SIDE)
        subprocess.run(
            [
                str(py),
                str(Path(tmp) / "side.py"),
                str(Path(tmp) / "problems.pt"),
                str(Path(tmp) / "theirs.pt"),
                str(sparsity),
                str(llmc_n),
                str(llmc_m),
                args.block_sizes,
            ],
            check=True,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        theirs = torch.load(Path(tmp) / "theirs.pt", weights_only=True)

    b0, b1 = blocks[0], blocks[-1]
    pairs = [
        (f"ours@{b0} vs llmc@{b0}", ours, b0, theirs, b0),
        (f"ours@{b1} vs llmc@{b1}", ours, b1, theirs, b1),
        (f"ours@{b0} vs ours@{b1}", ours, b0, ours, b1),
        (f"llmc@{b0} vs llmc@{b1}", theirs, b0, theirs, b1),
    ]
    runs = [(f"ours@{b}", ours, b) for b in blocks] + [(f"llmc@{b}", theirs, b) for b in blocks]
    print(
        f"model {args.model}; structure {args.structure}; layers {args.layers}; H from {args.n_samples} x "
        f"{args.seqlen} "
        f"calibration tokens of the dense model; llm-compressor's sparsify_weight and ours on the same W and H"
    )
    print("mask disagreement (fraction of weights one run keeps and the other prunes):")
    print(f"{'projection':<34}" + "".join(f"{label:>24}" for label, *_ in pairs))
    totals = {label: [0, 0] for label, *_ in pairs}
    for name in problems:
        cells = []
        for label, a, ba, b, bb in pairs:
            diff = int(((a[f"{name}@{ba}"] == 0) != (b[f"{name}@{bb}"] == 0)).sum())
            size = a[f"{name}@{ba}"].numel()
            totals[label][0] += diff
            totals[label][1] += size
            cells.append(f"{diff / size:>24.4%}")
        print(f"{name.removeprefix('model.'):<34}" + "".join(cells))
    print(f"{'all':<34}" + "".join(f"{d / s:>24.4%}" for d, s in totals.values()))
    print(f"{'all, weights':<34}" + "".join(f"{f'{d} of {s}':>24}" for d, s in totals.values()))
    print("relative layer error tr(ΔW H ΔWᵀ) / tr(W H Wᵀ):")
    print(f"{'projection':<34}" + "".join(f"{label:>12}" for label, *_ in runs))
    sums = dict.fromkeys((label for label, *_ in runs), 0.0)
    for name, (w, h) in problems.items():
        cells = []
        for label, res, b in runs:
            err, ref = relative_error(w, res[f"{name}@{b}"], h)
            sums[label] += err / ref
            cells.append(f"{err / ref:>12.5f}")
        print(f"{name.removeprefix('model.'):<34}" + "".join(cells))
    print(f"{'mean':<34}" + "".join(f"{total / len(problems):>12.5f}" for total in sums.values()))


if __name__ == "__main__":
    main()
