"""AlphaEdit against the reference code (github.com/jianghoucheng/AlphaEdit) on the same inputs.

The reference's ``apply_AlphaEdit_to_model`` runs as published — its residual at the last
edit layer (``get_module_input_output_at_words``), its spread over the layers, its solve
ΔWᵀ = (P (K Kᵀ + C_p) + L2 I)⁻¹ P K Rᵀ and its accumulation of C_p = Σ K_p K_pᵀ across
calls — with three of its inputs fixed to ours, so that only the update is compared:

- ``compute_z`` returns our v* for the request (ours and the MEMIT code's optimisers agree
  in design, not bit for bit; v* is an input to the update);
- ``compute_ks`` returns our keys on the current (partly edited) model;
- P is the reference's ``get_project`` rule (eigenvectors of E[kkᵀ] with eigenvalues below
  the threshold, here from our statistics of the same model).

Its ``.cuda()`` calls run on the CPU. Both sides start from the same SmolLM2-135M weights
and apply the same edits in ``--batches`` sequential batches; the table gives, per edited
weight, |ΔW| of each side and the relative difference |ΔW_ours − ΔW_ref| / |ΔW_ref|, and
how far the two residuals at the last edit layer differ (the reference finds the subject's
last token by its own tokenization).

    git clone https://github.com/jianghoucheng/AlphaEdit /tmp/alphaedit-ref
    LMCOMPOSE_DATA_DIR=../shared/data .venv/bin/python benchmarks/alphaedit_agreement.py --reference /tmp/alphaedit-ref
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, load_edits, parse_step
from lmcompose.editing import bare_rows, edit_keys, module_values_at
from lmcompose.models.loading import load_model


def reference_module(path: Path):
    """Import the reference's AlphaEdit_main from a checkout, its CUDA calls mapped to the CPU."""
    if not (path / "AlphaEdit" / "AlphaEdit_main.py").exists():
        print(
            f"skipped: --reference {path} has no AlphaEdit/AlphaEdit_main.py; "
            "git clone https://github.com/jianghoucheng/AlphaEdit there (or pass --reference)"
        )
        sys.exit(0)
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    eye = torch.eye
    torch.eye = lambda *a, device=None, **k: eye(*a, **k)  # type: ignore[assignment]
    torch.cuda.empty_cache = lambda: None  # type: ignore[assignment]
    cwd = os.getcwd()
    os.chdir(path)  # util.globals reads globals.yml from the working directory
    sys.path.insert(0, str(path))
    try:
        from AlphaEdit import AlphaEdit_main
        from AlphaEdit.AlphaEdit_hparams import AlphaEditHyperParams
    finally:
        os.chdir(cwd)
    return AlphaEdit_main, AlphaEditHyperParams


def get_project(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """The reference's experiments/evaluate.py get_project, on a given covariance."""
    u, s, _ = torch.linalg.svd(cov, full_matrices=False)
    small = (s < threshold).nonzero(as_tuple=True)[0]
    return u[:, small] @ u[:, small].T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--reference",
        type=Path,
        default=Path(os.environ.get("ALPHAEDIT_REFERENCE", "/tmp/alphaedit-ref")),
        help="a checkout of github.com/jianghoucheng/AlphaEdit (default: $ALPHAEDIT_REFERENCE or /tmp/alphaedit-ref)",
    )
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--batches", type=int, default=2)
    args = ap.parse_args()
    main_mod, HP = reference_module(args.reference.resolve())

    lm = load_model(args.model)
    records = load_edits("counterfact", limit=args.edits, seed=1)
    ctx = Context(edits=records, seed=0)
    step = build_intervention(parse_step(f"alphaedit:batches={args.batches}"))
    base_lm = copy.deepcopy(lm)

    # our run, keeping v* of each batch and the covariances
    from lmcompose.editing import locate

    targets: dict[str, torch.Tensor] = {}
    real_vstar = locate.optimize_vstar

    def keep_vstar(lm_, batch, *a, **k):
        vs = real_vstar(lm_, batch, *a, **k)
        for r, t in zip(batch, vs.target, strict=True):
            targets[r.case_id] = t
        return vs

    covs: dict[int, torch.Tensor] = {}
    real_begin = step.begin

    def keep_begin(lm_, hp, c, ctx_):
        covs.update(c)
        return real_begin(lm_, hp, c, ctx_)

    locate.optimize_vstar = keep_vstar
    step.begin = keep_begin
    t0 = time.perf_counter()
    report = step.apply(lm, ctx)
    ours_s = time.perf_counter() - t0
    locate.optimize_vstar = real_vstar
    hp, layers, templates = report.details["hparams"], report.details["layers"], report.details["templates"]
    arch = lm.arch
    names = [f"{arch.layers}.{i}.{arch.mlp_out}" for i in layers]

    # the reference, on a copy of the base model, with our v*, keys and statistics
    ref_lm = base_lm
    by_prompt = {}
    requests = []
    for r in records:
        req = {
            "case_id": r.case_id,
            "prompt": r.prompt.replace(r.subject, "{}", 1),
            "subject": r.subject,
            "target_new": {"str": r.target_new},
        }
        requests.append(req)
        by_prompt[(req["prompt"], r.subject)] = r
    hparams = HP(
        model_name=args.model,
        layers=layers,
        layer_selection="all",
        fact_token="subject_last",
        v_num_grad_steps=hp["v_num_grad_steps"],
        v_lr=hp["v_lr"],
        v_loss_layer=len(list(lm.linear_layers())),
        v_weight_decay=hp["v_weight_decay"],
        clamp_norm_factor=hp["clamp_norm_factor"],
        kl_factor=hp["kl_factor"],
        mom2_adjustment=True,
        mom2_update_weight=15000,
        rewrite_module_tmp=f"{arch.layers}.{{}}.{arch.mlp_out}",
        layer_module_tmp=f"{arch.layers}.{{}}",
        mlp_module_tmp=f"{arch.layers}.{{}}.mlp",
        attn_module_tmp=f"{arch.layers}.{{}}.self_attn",
        ln_f_module=arch.final_norm,
        lm_head_module="lm_head",
        mom2_dataset="wikipedia",
        mom2_n_samples=100000,
        mom2_dtype="float32",
        nullspace_threshold=hp["nullspace_threshold"],
        L2=hp["l2"],
    )
    main_mod.get_context_templates = lambda model, tok: [["{}"], templates[1:]] if len(templates) > 1 else [["{}"]]
    main_mod.compute_z = lambda model, tok, request, hparams, layer, ct: targets[request["case_id"]].clone()

    def compute_ks(model, tok, reqs, hparams, layer, ct):
        recs = [by_prompt[(q["prompt"], q["subject"])] for q in reqs]
        return edit_keys(ref_lm, recs, templates, f"{arch.layers}.{layer}.{arch.mlp_out}", 4096)

    main_mod.compute_ks = compute_ks
    p = torch.stack([get_project(covs[i].float(), hparams.nullspace_threshold) for i in layers])
    d_in = p.shape[1]
    cache_c = torch.zeros(len(layers), d_in, d_in)
    from lmcompose.editing import iter_batches

    before = {n: ref_lm.weight(n).detach().clone() for n in names}
    z_diff = []
    t0 = time.perf_counter()
    for idx in iter_batches(len(records), 0, args.batches):
        batch = [requests[i] for i in idx]
        theirs = main_mod.get_module_input_output_at_words(
            ref_lm.model,
            ref_lm.tokenizer,
            layers[-1],
            context_templates=[q["prompt"] for q in batch],
            words=[q["subject"] for q in batch],
            module_template=hparams.layer_module_tmp,
            fact_token_strategy="subject_last",
        )[1]
        ours_z = module_values_at(
            ref_lm,
            bare_rows(ref_lm.tokenizer, [records[i] for i in idx]),
            f"{arch.layers}.{layers[-1]}",
            "output",
            4096,
        )
        z_diff.append(float((theirs.float() - ours_z).norm() / ours_z.norm()))
        _, cache_c = main_mod.apply_AlphaEdit_to_model(
            ref_lm.model, ref_lm.tokenizer, batch, hparams, cache_c=cache_c, P=p
        )
    ref_s = time.perf_counter() - t0

    print(
        f"AlphaEdit vs the reference ({args.model}, {args.edits} CounterFact edits in {args.batches} batches, "
        f"threshold {hparams.nullspace_threshold}, L2 {hparams.L2}, null-space dims {report.details['nullspace_dims']})"
    )
    print(
        f"residual at layer {layers[-1]}, reference vs ours before each batch: relative difference "
        + ", ".join(f"{d:.2e}" for d in z_diff)
    )
    print("| weight | abs(dW) ours | abs(dW) reference | relative difference |")
    print("|---|---|---|---|")
    worst = 0.0
    for n in names:
        d_ours = lm.weight(n).detach().double() - before[n].double()
        d_ref = ref_lm.weight(n).detach().double() - before[n].double()
        rel = float((d_ours - d_ref).norm() / d_ref.norm())
        worst = max(worst, rel)
        print(f"| {n} | {float(d_ours.norm()):.4f} | {float(d_ref.norm()):.4f} | {rel:.2e} |")
    print(
        f"worst relative difference {worst:.2e}; time: ours {ours_s:.0f} s (with v* and statistics), "
        f"reference update {ref_s:.0f} s"
    )


if __name__ == "__main__":
    main()
