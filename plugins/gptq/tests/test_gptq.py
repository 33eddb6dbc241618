from __future__ import annotations

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, parse_step
from lmcompose.models.tiny import tiny_model
from lmcompose.quant import QuantGrid
from lmcompose.testing import InterventionConformance, capture_inputs
from lmcompose_gptq.algorithm import gptq_quantize


class TestGPTQConformance(InterventionConformance):
    intervention = "gptq"
    config = {"bits": 4, "group_size": 32}


class TestGPTQActOrderSymmetricConformance(InterventionConformance):
    intervention = "gptq"
    config = {"bits": 3, "group_size": 16, "act_order": True, "symmetric": True}
    architectures = ("llama", "gpt2")


def ctx():
    return Context(calibration_samples=8, calibration_seqlen=64)


def correlated(n=512, d=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen) @ torch.randn(d, d, generator=gen)
    return x, gen


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize(
    "step", ["bits=4,group_size=32", "bits=3,group_size=16,act_order=true,symmetric=true", "bits=2,group_size=0"]
)
def test_every_weight_lies_on_its_grid_before_and_after_project(arch, step):
    lm = tiny_model(arch)
    gptq = build_intervention(parse_step(f"gptq:{step}"))
    gptq.apply(lm, ctx())
    for name, _ in lm.linear_layers():
        grid = lm.compression[name].quant
        assert grid.on_grid(lm.weight(name)), name
        assert torch.equal(grid.scale, gptq.grids[name].scale)
    with torch.no_grad():
        for name, _ in lm.linear_layers():
            lm.weight(name).add_(0.003)
    gptq.project(lm)
    for name, _ in lm.linear_layers():
        assert lm.compression[name].quant.on_grid(lm.weight(name)), name


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize(
    "arch,name",
    [
        ("llama", "model.layers.0.self_attn.q_proj"),
        ("llama", "model.layers.0.mlp.up_proj"),
        ("gpt2", "transformer.h.0.attn.c_attn"),
    ],
)
def test_layer_output_error_below_rtn(bits, arch, name):
    lm = tiny_model(arch)
    x = capture_inputs(lm, name, ctx().calibration_batches(lm, 8, 64))
    w0 = lm.weight(name).clone()
    build_intervention(parse_step(f"gptq:bits={bits},group_size=32")).apply(lm, ctx())
    rtn = tiny_model(arch)
    build_intervention(parse_step(f"rtn:bits={bits},group_size=32")).apply(rtn, ctx())
    err = lambda w: torch.linalg.norm((w0 - w) @ x.t())  # noqa: E731
    assert err(lm.weight(name)) < err(rtn.weight(name))


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [16, 24, 0, 100])
def test_matrix_error_below_rtn_on_correlated_inputs(act_order, group_size):
    x, gen = correlated()
    w = torch.randn(32, 64, generator=gen)
    q = w.clone()
    grid = gptq_quantize(q, x.t() @ x, 3, group_size, False, act_order, 128, 0.01, [], "w")
    assert grid.on_grid(q)
    assert grid.scale.shape == (32, -(-64 // group_size) if 0 < group_size < 64 else 1)
    rtn = w.clone()
    QuantGrid.fit(w, 3, group_size, False).snap_(rtn)
    err = lambda v: torch.linalg.norm((w - v) @ x.t())  # noqa: E731
    assert err(q) < 0.9 * err(rtn)


def test_result_does_not_depend_on_blocksize():
    """Lazy batch updates are exact: also when a group runs past a block's end."""
    x, gen = correlated()
    w = torch.randn(16, 64, generator=gen)
    results = []
    for blocksize in (128, 16, 7):
        q = w.clone()
        gptq_quantize(q, x.t() @ x, 4, 32, False, False, blocksize, 0.01, [], "w")
        results.append(q)
    assert torch.allclose(results[0], results[1], atol=1e-4) and torch.allclose(results[0], results[2], atol=1e-4)


def test_dead_inputs_become_zero():
    x, gen = correlated()
    x[:, 5] = 0
    w = torch.randn(8, 64, generator=gen)
    gptq_quantize(w, x.t() @ x, 4, 16, False, True, 128, 0.01, [], "w")
    assert (w[:, 5] == 0).all()


def test_cholesky_failure_raises_damping_then_falls_back_to_rtn():
    messages: list[str] = []
    w = torch.randn(4, 3)
    gptq_quantize(w, torch.diag(torch.tensor([1.0, 1.0, -0.05])), 4, 0, False, False, 128, 0.01, messages, "layer.x")
    assert messages and "not positive definite" in messages[0] and "layer.x" in messages[0] and "damping" in messages[0]
    messages.clear()
    w = torch.randn(4, 2)
    expected = w.clone()
    grid = gptq_quantize(w, torch.diag(torch.tensor([1.0, -1e6])), 4, 0, False, False, 128, 0.01, messages, "layer.y")
    assert "round-to-nearest" in messages[0] and "layer.y" in messages[0]
    QuantGrid.fit(expected, 4, 0, False).snap_(expected)
    assert torch.equal(w, expected) and grid.on_grid(w)


def test_the_result_says_whether_it_fell_back():
    from lmcompose_gptq.algorithm import gptq_quantize_result

    x = torch.randn(64, 8)
    ok = gptq_quantize_result(torch.randn(4, 8), x.t() @ x, 4, 0, False, False, 128, 0.01, [], "a")
    assert (
        not ok.fell_back
        and ok.extra_tries == 0
        and ok.damping == pytest.approx(0.01 * float(torch.diag(x.t() @ x).mean()))
    )
    bad = gptq_quantize_result(
        torch.randn(4, 2), torch.diag(torch.tensor([1.0, -1e6])), 4, 0, False, False, 128, 0.01, [], "b"
    )
    assert bad.fell_back and bad.grid.bits == 4


def test_fallback_is_reported_by_the_step(monkeypatch):
    import lmcompose_gptq.algorithm as alg

    monkeypatch.setattr(alg, "inverse_cholesky_upper", lambda h, p: (None, 1.0, 4))
    lm = tiny_model("llama")
    c = ctx()
    report = build_intervention(parse_step("gptq:targets=mlp.down_proj")).apply(lm, c)
    assert report.details["rtn_fallback_layers"] == 2
    assert any("round-to-nearest" in n and "down_proj" in n for n in c.notes)
    assert all(lm.compression[n].quant.on_grid(lm.weight(n)) for n, _ in lm.target_layers(["mlp.down_proj"]))


def test_group_size_not_dividing_the_width_gives_a_shorter_last_group():
    lm = tiny_model("llama")  # widths 64 and 128
    build_intervention(parse_step("gptq:group_size=48")).apply(lm, ctx())
    grid = lm.compression["model.layers.0.mlp.down_proj"].quant
    assert grid.scale.shape == (64, 3)  # 48 + 48 + 32 columns
    assert grid.on_grid(lm.weight("model.layers.0.mlp.down_proj"))


def test_report_and_average_bits_count_the_grid():
    from lmcompose.metrics.compression import compression_summary

    lm = tiny_model("llama")
    report = build_intervention(parse_step("gptq:bits=4,group_size=32")).apply(lm, ctx())
    assert report.details["bits"] == 4 and report.details["layers"] == 14
    assert compression_summary(lm)["avg_bits"] == pytest.approx(4 + 32 / 32)


@pytest.mark.parametrize("step", ["bits=3,group_size=16", "bits=4,group_size=32,act_order=true"])
def test_projections_sharing_an_input_are_quantized_as_if_alone(step):
    """q/k/v (one input) are stacked into one GPTQ sweep; each must come out as a sweep of
    its own matrix with the same H would leave it, grid included."""
    lm = tiny_model("llama")
    names = [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    x = capture_inputs(lm, names[0], ctx().calibration_batches(lm, 8, 64)).float()
    h = 2 * x.t() @ x / x.shape[0]
    alone = {n: lm.weight(n).clone() for n in names}
    gptq = build_intervention(parse_step(f"gptq:{step}"))
    gptq.apply(lm, ctx())
    c = gptq.config
    for n in names:
        grid = gptq_quantize(
            alone[n], h, c.bits, c.group_size, c.symmetric, c.act_order, c.blocksize, c.percdamp, [], n
        )
        assert torch.allclose(lm.weight(n), alone[n], atol=1e-5), n
        assert torch.allclose(gptq.grids[n].scale, grid.scale, atol=1e-6) and torch.equal(
            gptq.grids[n].zero, grid.zero
        ), n


@pytest.mark.parametrize("act_order", [False, True])
def test_matches_the_textbook_column_by_column_algorithm(act_order):
    """The lazy-block sweep on transposed weights equals GPTQ written plainly: one column at
    a time, its error pushed into every later column at once, each group's grid fitted when
    the sweep reaches it (or, with act-order, up front on the original weights)."""
    from lmcompose.quant import fit_scale_zero, quantize_dequantize
    from lmcompose_gptq.algorithm import inverse_cholesky_upper

    x, gen = correlated(d=48)
    w = torch.randn(12, 48, generator=gen)
    h, bits, g = 2 * x.t() @ x / x.shape[0], 3, 16
    fast = w.clone()
    gptq_quantize(fast, h, bits, g, False, act_order, 16, 0.01, [], "w")

    W, H = w.clone(), h.clone()
    group_of = torch.arange(48) // g
    grids = {}
    if act_order:
        grids = {k: fit_scale_zero(w[:, k * g : (k + 1) * g], bits, False) for k in range(48 // g)}
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H, group_of = W[:, perm], H[perm][:, perm], group_of[perm]
    u = inverse_cholesky_upper(H, 0.01)[0].float()
    for j in range(48):
        k = int(group_of[j])
        if not act_order and j % g == 0:
            grids[k] = fit_scale_zero(W[:, j : j + g], bits, False)
        q = quantize_dequantize(W[:, j], *grids[k], bits)
        err = (W[:, j] - q) / u[j, j]
        W[:, j] = q
        W[:, j + 1 :] -= err[:, None] * u[j, j + 1 :][None, :]
    if act_order:
        W = W[:, torch.argsort(perm)]
    assert torch.allclose(fast, W, atol=1e-4)


def test_true_sequential_calibrates_each_group_on_the_groups_before_it_quantized():
    one, seq = tiny_model("llama"), tiny_model("llama")
    build_intervention(parse_step("gptq:bits=3,group_size=32")).apply(
        one, Context(calibration_samples=4, calibration_seqlen=32)
    )
    build_intervention(parse_step("gptq:bits=3,group_size=32,true_sequential=true")).apply(
        seq, Context(calibration_samples=4, calibration_seqlen=32)
    )
    prefix = f"{one.arch.layers}.0."
    for suffix in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):  # the first group: same inputs
        assert torch.equal(one.weight(prefix + suffix), seq.weight(prefix + suffix)), suffix
    for suffix in ("self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"):  # later groups: through quantized ones
        assert not torch.equal(one.weight(prefix + suffix), seq.weight(prefix + suffix)), suffix
