from __future__ import annotations

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, parse_step
from lmcompose.models.tiny import TINY_ARCHITECTURES, tiny_model
from lmcompose.testing import InterventionConformance, layer_outputs
from lmcompose_awq.algorithm import clipped_grid, search_scale
from lmcompose_awq.folding import fold_scales, scale_groups


class TestAWQConformance(InterventionConformance):
    intervention = "awq"
    config = {"bits": 4, "group_size": 32, "n_grid": 5}


class TestAWQSymmetricConformance(InterventionConformance):
    intervention = "awq"
    config = {"bits": 3, "group_size": 16, "symmetric": True, "n_grid": 4}
    architectures = ("llama", "gemma3")


def ctx():
    return Context(calibration_samples=8, calibration_seqlen=64)


def logits(lm):
    ids = lm.tokenizer("The river town grew up around a crossing of two roads", return_tensors="pt").input_ids
    with torch.no_grad():
        return lm.model(ids).logits


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_folding_random_scales_keeps_the_model_exact(arch):
    lm = tiny_model(arch)
    before = logits(lm)
    gen = torch.Generator().manual_seed(0)
    selected = {n for n, _ in lm.linear_layers()}
    kinds = set()
    for i in range(2):
        groups, _ = scale_groups(lm, i, selected)
        for grp in groups:
            kinds.add(grp.kind)
            fold_scales(lm, grp, torch.rand(lm.weight(grp.members[0]).shape[1], generator=gen) * 3 + 0.2)
    assert torch.allclose(logits(lm), before, atol=1e-4, rtol=1e-4)
    expected = {
        "llama": {"norm", "up→down"},
        "gemma3": {"norm", "up→down"},
        "gpt_neox": {"norm"},
        "gpt2": {"norm"},
        "gptj": {"norm", "v→o"},
        "opt": {"norm", "v→o"},
    }[arch]  # tiny llama/gemma3 use grouped-query attention
    assert kinds == expected


def test_v_to_o_is_folded_without_grouped_query_attention():
    import transformers as tf
    from lmcompose.models.handle import LM
    from lmcompose.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = tf.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=len(tok),
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    lm = LM(tf.AutoModelForCausalLM.from_config(cfg).eval(), tok, tiny_model("llama").arch)
    before = logits(lm)
    groups, skipped = scale_groups(lm, 0, {n for n, _ in lm.linear_layers()})
    assert "v→o" in {g.kind for g in groups} and not skipped
    for grp in groups:
        fold_scales(lm, grp, torch.rand(lm.weight(grp.members[0]).shape[1]) + 0.5)
    assert torch.allclose(logits(lm), before, atol=1e-4)


def test_opt_with_norms_after_the_blocks_is_not_folded():
    lm = tiny_model("opt")
    lm.model.config.do_layer_norm_before = False
    groups, skipped = scale_groups(lm, 0, {n for n, _ in lm.linear_layers()})
    assert {g.kind for g in groups} == {"v→o"} and "do_layer_norm_before" in skipped[0]


def test_a_fold_that_would_change_an_unselected_projection_is_skipped():
    lm = tiny_model("llama")
    groups, skipped = scale_groups(lm, 0, {"model.layers.0.mlp.down_proj"})
    assert groups == [] and any("up_proj is not quantized" in s for s in skipped)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "opt"])
@pytest.mark.parametrize("step", ["bits=4,group_size=32", "bits=3,group_size=16,symmetric=true", "bits=2,group_size=0"])
def test_every_weight_lies_on_its_grid_before_and_after_project(arch, step):
    lm = tiny_model(arch)
    awq = build_intervention(parse_step(f"awq:{step},n_grid=5"))
    awq.apply(lm, ctx())
    for name, _ in lm.linear_layers():
        assert lm.compression[name].quant.on_grid(lm.weight(name)), name
    with torch.no_grad():
        for name, _ in lm.linear_layers():
            lm.weight(name).add_(0.003)
    awq.project(lm)
    for name, _ in lm.linear_layers():
        assert lm.compression[name].quant.on_grid(lm.weight(name)), name


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_layer_output_error_below_rtn(bits, arch):
    """Error of decoder layer 0's output (same inputs: the embeddings) against the original model."""
    lm = tiny_model(arch)
    windows = ctx().calibration_batches(lm, 8, 64)
    ref = layer_outputs(lm, windows)
    rtn = tiny_model(arch)
    build_intervention(parse_step(f"rtn:bits={bits},group_size=32")).apply(rtn, ctx())
    build_intervention(parse_step(f"awq:bits={bits},group_size=32")).apply(lm, ctx())
    err = lambda m: float(torch.linalg.norm(layer_outputs(m, windows) - ref))  # noqa: E731
    assert err(lm) < err(rtn)


def test_scale_search_and_clip_search_never_lose_to_plain_rounding():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 64, generator=gen) * (torch.rand(64, generator=gen) * 8) ** 2  # a few salient channels
    h = x.t() @ x / x.shape[0]
    w = torch.randn(48, 64, generator=gen)
    s, alpha, best, base = search_scale([w], h, x.abs().mean(0), 3, 16, False, 20)
    assert best < 0.8 * base and alpha is not None
    from lmcompose.quant import QuantGrid

    def err(grid):
        q = w.clone()
        grid.snap_(q)
        dw = q - w
        return float(((dw @ h) * dw).sum())

    assert err(clipped_grid(w, h, 3, 16, False, 20, 0.5)) <= err(QuantGrid.fit(w, 3, 16, False))


def test_dead_channels_keep_finite_scales():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=gen)
    x[:, 3] = 0
    s, *_ = search_scale([torch.randn(16, 32, generator=gen)], x.t() @ x / 256, x.abs().mean(0), 4, 8, False, 10)
    assert torch.isfinite(s).all() and (s > 0).all()


def test_report_and_notes():
    lm = tiny_model("llama")
    c = ctx()
    report = build_intervention(parse_step("awq:bits=4,group_size=32,n_grid=5")).apply(lm, c)
    assert report.details["scaled_groups"] + report.details["unscaled_groups"] == 6  # 2 layers x (2 norms + up→down)
    assert any("grouped-query attention" in n for n in c.notes)


def test_group_size_not_dividing_the_width_gives_a_shorter_last_group():
    lm = tiny_model("llama")
    build_intervention(parse_step("awq:group_size=48,n_grid=4")).apply(lm, ctx())
    grid = lm.compression["model.layers.0.mlp.down_proj"].quant
    assert grid.scale.shape == (64, 3)
    assert grid.on_grid(lm.weight("model.layers.0.mlp.down_proj"))


def test_folding_changes_the_fingerprint_of_the_down_projection_inputs():
    """MEMIT's key statistics (inputs of mlp_out) are cached under a fingerprint of the weights
    producing them; the up→down fold changes those inputs, so it must change the key."""
    try:
        from lmcompose.stats import input_fingerprint
    except ImportError:  # statistics service not present: the whole-model fingerprint

        def input_fingerprint(lm, _name):
            return lm.fingerprint()

    down = "model.layers.0.mlp.down_proj"
    lm = tiny_model("llama")
    before = input_fingerprint(lm, down)
    groups, _ = scale_groups(lm, 0, {n for n, _ in lm.linear_layers()})
    (grp,) = [g for g in groups if g.kind == "up→down"]
    fold_scales(lm, grp, torch.full((lm.weight(down).shape[1],), 2.0))
    assert input_fingerprint(lm, down) != before
    lm2 = tiny_model("llama")
    build_intervention(parse_step("awq:n_grid=4")).apply(lm2, ctx())
    assert input_fingerprint(lm2, down) != before


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_clip_qk_false_skips_the_query_and_key_clip(arch):
    """clip_qk=false skips the clip search for q/k as the reference does (a fused q/k/v
    counts): their weights are rounded on the plain min/max grid of the (scaled) weights."""
    from lmcompose.quant import QuantGrid
    from lmcompose_awq.intervention import query_key_projections

    qk = query_key_projections(tiny_model(arch), 0)
    assert qk and all(".0." in n for n in qk)
    assert not any(n.endswith(("v_proj", "o_proj")) for n in qk)
    for clip_qk in (False, True):
        lm = tiny_model(arch)
        step = build_intervention(
            parse_step(f"awq:bits=3,group_size=16,scale_search=false,clip_qk={str(clip_qk).lower()}")
        )
        step.apply(lm, ctx())
        for name in qk:
            plain = QuantGrid.fit(tiny_model(arch).weight(name).float(), 3, 16, False)
            # no scales (scale_search=false): without clipping the grid is the original weights' own
            assert torch.equal(step.grids[name].scale, plain.scale) != clip_qk, (name, clip_qk)


def test_next_layer_on_full_precision_outputs_is_offered():
    a, b = tiny_model("llama"), tiny_model("llama")
    build_intervention(parse_step("awq:bits=3,group_size=32")).apply(a, ctx())
    build_intervention(parse_step("awq:bits=3,group_size=32,calibrate_next_on=full")).apply(b, ctx())
    first = f"{a.arch.layers}.0.mlp.down_proj"
    last = [n for n, _ in a.linear_layers() if n.endswith("down_proj")][-1]
    assert torch.equal(a.weight(first), b.weight(first))  # layer 0 sees the same inputs either way
    assert not torch.equal(a.weight(last), b.weight(last))  # later layers do not
