"""bf16 compute for the calibration-based compressors (SparseGPT, Wanda, GPTQ, AWQ).

A model loaded in bfloat16 runs its calibration passes in bf16 while the statistics (XXᵀ,
input norms) are accumulated in float32/float64. The result must keep the method's
guarantees (exact sparsity, weights on the grid, stored back in bf16) and its quality: the
error it minimizes (‖(W0 − W)X‖ of the layer-0 projections; for AWQ, which moves scales
into the norms, decoder layer 0's output) stays below the data-free baseline's.
"""

from __future__ import annotations

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, parse_step
from lmcompose.models.tiny import TINY_ARCHITECTURES, tiny_model
from lmcompose.testing import capture_inputs, layer_outputs, with_outlier_features


def ctx() -> Context:
    return Context(calibration_samples=8, calibration_seqlen=64, dtype="bfloat16")


def bf16_model(arch: str = "llama"):
    lm = with_outlier_features(tiny_model(arch))  # as real LLMs have: what Wanda and AWQ use
    lm.model.to(torch.bfloat16)
    return lm


@pytest.mark.parametrize(
    "method,baseline,step",
    [
        ("sparsegpt", "magnitude", "sparsity=0.5"),
        ("sparsegpt", "magnitude", "structure=2:4"),
        ("wanda", "magnitude", "sparsity=0.5"),
        ("gptq", "rtn", "bits=3,group_size=32"),
        ("awq", "rtn", "bits=3,group_size=32"),
    ],
)
def test_bf16_compute_keeps_the_method_and_its_quality(method, baseline, step):
    lm = bf16_model()
    windows = ctx().calibration_batches(lm, 8, 64)
    dense = layer_outputs(lm, windows).float()
    names = [n for n, _ in lm.linear_layers() if n.startswith(f"{lm.arch.layers}.0.")]
    x = {n: capture_inputs(lm, n, windows).float() for n in names}
    w0 = {n: lm.weight(n).float().clone() for n in names}
    report = build_intervention(parse_step(f"{method}:{step}")).apply(lm, ctx())
    ref = bf16_model()
    build_intervention(parse_step(f"{baseline}:{step}")).apply(ref, ctx())

    for name, _ in lm.linear_layers():
        assert lm.weight(name).dtype == torch.bfloat16
    if "sparsity" in step or "structure" in step:
        assert report.details["sparsity"] == pytest.approx(0.5, abs=1e-3)
        for name, _ in lm.linear_layers():
            assert int((lm.weight(name) == 0).sum()) == lm.weight(name).numel() // 2
    else:
        for name, _ in lm.linear_layers():
            grid = lm.layer_state(name).quant
            if grid is not None:
                w = lm.weight(name).clone()
                grid.snap_(w)
                assert torch.equal(w, lm.weight(name))  # already on its grid
    if method == "awq":  # AWQ moves scales into the norms: compare decoder layer 0's outputs
        err = lambda m: float(torch.linalg.norm(layer_outputs(m, windows).float() - dense))  # noqa: E731
    else:  # the error each method minimizes: ‖(W0 − W) X‖ of each layer-0 projection on its inputs
        err = lambda m: sum(float(torch.linalg.norm((w0[n] - m.weight(n).float()) @ x[n].t())) for n in x)  # noqa: E731
    assert err(lm) < err(ref)


def test_bf16_statistics_are_accumulated_in_float64():
    from lmcompose.calibration import Gram

    x = torch.full((4096, 2), 1.0 + 2.0**-7, dtype=torch.bfloat16)  # 1 + 2^-7 is exact in bf16
    stats = Gram(2, "cpu")
    for _ in range(4):
        stats.add(x)
    assert stats.xxt.dtype == torch.float64
    # a bf16 accumulator would have stalled long before 16,384 (its spacing there is 128);
    # in float64 every term and the sum are exact
    assert float(stats.xxt[0, 0]) == 16384 * (1 + 2.0**-7) ** 2


# MEMIT's settings for a random model (plugins/memit/tests): v* needs more room than on a trained one
RANDOM_MODEL = "clamp_norm_factor=100,v_lr=0.2,v_num_grad_steps=40,v_weight_decay=0.001,stats_samples=8,stats_seqlen=64"
EDITORS = {
    "memit": f"memit:{RANDOM_MODEL},layers=0+1,context_templates=0",
    "alphaedit": f"alphaedit:{RANDOM_MODEL},l2=0.001,layers=0+1,context_templates=0",  # l2 of the keys' scale
    "ft": "ft:steps=10",
    "lora": "lora:steps=10",
}
EDITOR_CASES = [
    *[(e, arch, "bfloat16") for e in ("memit", "alphaedit") for arch in TINY_ARCHITECTURES],
    *[(e, arch, "float16") for e in ("memit", "alphaedit") for arch in ("llama", "gpt2")],
    *[(e, "llama", dt) for e in ("ft", "lora") for dt in ("bfloat16", "float16")],
]


def target_nll(lm, records) -> float:
    """Mean NLL of each record's target_new after its prompt (teacher-forced, float32 logits)."""
    tok = lm.tokenizer
    total = 0.0
    for r in records:
        p = tok(r.prompt, add_special_tokens=True).input_ids
        t = tok(" " + r.target_new, add_special_tokens=False).input_ids
        ids = torch.tensor([p + t])
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(ids).logits[0, len(p) - 1 : -1].float(), dim=-1)
        total -= float(logp[torch.arange(len(t)), torch.tensor(t)].mean())
    return total / len(records)


@pytest.mark.parametrize(("editor", "arch", "dtype"), EDITOR_CASES)
def test_editors_edit_a_half_precision_model(editor, arch, dtype, tmp_path):
    """The locate-then-edit editors (and the fine-tuners) on a bf16 or fp16 model: the forward
    passes run in the model's dtype, v* and the solve in float32/float64, the fine-tuners'
    Adam on float32 master copies, and the update is written back in the model's dtype.
    MEMIT and AlphaEdit make every target the argmax, as in float32 (plugins/memit/tests);
    the fine-tuners lower the targets' NLL."""
    from lmcompose.testing import argmax_hits, subject_final_edits

    lm = tiny_model(arch)
    lm.model.to(getattr(torch, dtype))
    records = subject_final_edits()
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    nll0 = target_nll(lm, records)
    assert not all(argmax_hits(lm, records))
    step = build_intervention(parse_step(EDITORS[editor]))
    step.apply(lm, Context(edits=records, dtype=dtype, cache_dir=tmp_path))
    assert any(not torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    assert all(p.dtype == getattr(torch, dtype) and bool(torch.isfinite(p).all()) for p in lm.model.parameters())
    if editor in ("memit", "alphaedit"):
        assert all(argmax_hits(lm, records))
    else:
        assert target_nll(lm, records) < nll0
