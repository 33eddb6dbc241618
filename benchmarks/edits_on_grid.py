"""Why FT-L and LoRA edits vanish after GPTQ under policy ``project``: the grid step against the update.

Under ``project`` a quantized model stays on its grid: after a later edit, GPTQ's ``project``
rounds the edited weights back onto the scales and zeros it fitted. FT-L clamps every weight
to within ``norm_constraint`` of its value before the edit, so on a weight that sits on a grid
point the edit survives the rounding only where half the grid step is below that bound.

For each bit width, this script fits the min/max grid (group 64, as in the study) on the
editors' target projections of SmolLM2-135M (the study's GPTQ, without act-order, fits each
group on the weights as its error feedback has updated them, so its steps are close to these,
not equal), rounds those weights onto it, and
prints the median half step and the share of weights whose half step is below FT-L's bound.
Then it runs each editor on the rounded model (the study's first replicate's 50 CounterFact
edits) and measures its update before and after ``project``'s rounding: the share of weights
changed, the update norm kept, and edit success (f1) before and after.

    LMCOMPOSE_DATA_DIR=../shared/data .venv/bin/python benchmarks/edits_on_grid.py \\
        [--model smollm2-135m] [--bits 8,4,3] [--editors ft,lora] [--edits 50]
"""

from __future__ import annotations

import argparse

import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, load_edits, parse_step
from lmcompose.engine.executor import evaluate
from lmcompose.models.loading import load_model
from lmcompose.quant import QuantGrid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", default="8,4,3")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--editors", default="ft,lora")
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    lm = load_model(args.model)
    pristine = lm.state_copy()
    editors = {spec: build_intervention(parse_step(spec)) for spec in args.editors.split(",")}
    names = sorted({n for step in editors.values() for n in step.targets(lm)})
    ft_bound = next((s.config.norm_constraint for s in editors.values() if s.name == "ft"), 5e-3)
    records = load_edits("counterfact", limit=args.edits, seed=args.seed)
    metrics = build_metrics(["edit"], {})

    print(f"{args.model}: {len(names)} target projections; FT-L norm_constraint {ft_bound:g}")
    print()
    for spec, step in editors.items():
        print(f"{spec} trains {', '.join(step.targets(lm))}")
    print()
    print(
        "| bits | median half step | weights with half step < bound | editor | its weights changed by the edit "
        "| changed after rounding (count) | update norm kept | edit success before rounding | after rounding |"
    )
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for bits in (int(b) for b in args.bits.split(",")):
        lm.restore(pristine)
        grids = {}
        half = []
        with torch.no_grad():
            for n in names:
                w = lm.weight(n)
                grids[n] = QuantGrid.fit(w.float(), bits, args.group_size, False)
                grids[n].snap_(w)
                scale, _ = grids[n].expanded(w.shape[1])
                half.append((scale / 2).flatten())
        h = torch.cat(half)
        on_grid = lm.state_copy()
        below = float((h < ft_bound).float().mean())
        for spec, step in editors.items():
            lm.restore(on_grid)
            own = step.targets(lm)
            before = {n: lm.weight(n).detach().float().clone() for n in own}
            ctx = Context(edits=records, seed=args.seed)
            step.apply(lm, ctx)
            edited = evaluate(lm, metrics, ctx, f"after {spec}")["edit_success_f1"]
            changed = total = kept = 0
            num = den = 0.0
            with torch.no_grad():
                for n in own:
                    w = lm.weight(n)
                    delta = w.float() - before[n]
                    changed += int((delta != 0).sum())
                    total += delta.numel()
                    grids[n].snap_(w)
                    kept_delta = w.float() - before[n]
                    kept += int((kept_delta != 0).sum())
                    num += float(kept_delta.norm()) ** 2
                    den += float(delta.norm()) ** 2
            rounded = evaluate(lm, metrics, ctx, f"after {spec}, rounded")["edit_success_f1"]
            norm_kept = (num / den) ** 0.5 if den else 0.0
            print(
                f"| {bits} | {float(h.median()):.2e} | {below:.1%} | {spec} | {changed / total:.1%} | "
                f"{kept / total:.2%} ({kept}) | {norm_kept:.3f} | {edited:.2f} | {rounded:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
