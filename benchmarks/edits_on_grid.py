"""Why FT-L and LoRA edits vanish after GPTQ under policy ``project``: the grid step against the update.

Under ``project`` a quantized model stays on its grid: after a later edit, GPTQ's ``project``
rounds the edited weights back onto the scales and zeros it fitted. FT-L clamps every weight
to within ``norm_constraint`` of its value before the edit, so on a weight that sits on a grid
point the edit survives the rounding only where half the grid step is below that bound.

For each bit width, this script rounds the editors' target projections of SmolLM2-135M onto
the min/max grid with ``rtn`` (group 64, as in the study). ``rtn``'s ``project`` is the same
snap onto a stored grid as GPTQ's. The study's GPTQ, without act-order, fits each group on
the weights as its error feedback has updated them, so its steps are close to these, not
equal. The script prints the median half step and the share of weights whose half step is
below FT-L's bound. Then it runs each editor on the rounded model (the study's first
replicate's 50 CounterFact edits) and measures its update before and after ``rtn.project``:
the share of weights changed, the update norm kept, and edit success (f1) before and after.

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
    targets = {spec: step.targets(lm) for spec, step in editors.items()}
    names = sorted({n for own in targets.values() for n in own})
    ft = next((s for s in editors.values() if s.name == "ft"), None) or build_intervention(parse_step("ft"))
    ft_bound = ft.config.norm_constraint
    records = load_edits("counterfact", limit=args.edits, seed=args.seed)
    metrics = build_metrics(["edit"], {})

    print(f"{args.model}: {len(names)} target projections; FT-L norm_constraint {ft_bound:g}")
    print()
    for spec, own in targets.items():
        print(f"{spec} trains {', '.join(own)}")
    print()
    print(
        "| bits | median half step | weights with half step < bound | editor | its weights changed by the edit "
        "| changed after rounding (count) | update norm kept | edit success before rounding | after rounding |"
    )
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for bits in (int(b) for b in args.bits.split(",")):
        lm.restore(pristine)
        # the targets rounded onto their grid by rtn; its project() snaps onto that grid as GPTQ's does
        rtn = build_intervention(parse_step(f"rtn:bits={bits},group_size={args.group_size},targets={'+'.join(names)}"))
        rtn.apply(lm, Context())
        h = torch.cat([(g.expanded(lm.weight(n).shape[1])[0] / 2).flatten() for n, g in rtn.grids.items()])
        on_grid = lm.state_copy()
        below = float((h < ft_bound).float().mean())
        for spec, step in editors.items():
            lm.restore(on_grid)
            own = targets[spec]
            before = {n: lm.weight(n).detach().float().clone() for n in own}
            ctx = Context(edits=records, seed=args.seed)
            step.apply(lm, ctx)
            edited = evaluate(lm, metrics, ctx, f"after {spec}")["edit_success_f1"]
            delta = {n: lm.weight(n).detach().float() - before[n] for n in own}
            with torch.no_grad():
                rtn.project(lm)
            kept_delta = {n: lm.weight(n).detach().float() - before[n] for n in own}
            total = sum(d.numel() for d in delta.values())
            changed = sum(int((d != 0).sum()) for d in delta.values())
            kept = sum(int((d != 0).sum()) for d in kept_delta.values())
            num = sum(float(d.norm()) ** 2 for d in kept_delta.values())
            den = sum(float(d.norm()) ** 2 for d in delta.values())
            rounded = evaluate(lm, metrics, ctx, f"after {spec}, rounded")["edit_success_f1"]
            norm_kept = (num / den) ** 0.5 if den else 0.0
            print(
                f"| {bits} | {float(h.median()):.2e} | {below:.1%} | {spec} | {changed / total:.1%} | "
                f"{kept / total:.2%} ({kept}) | {norm_kept:.3f} | {edited:.2f} | {rounded:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
