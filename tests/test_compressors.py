"""magnitude and rtn: exact sparsity, N:M pattern, on-grid weights, project(), avg bits."""

from __future__ import annotations

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, parse_step
from lmcompose.errors import ConfigError
from lmcompose.metrics.compression import compression_summary, layer_bits
from lmcompose.models.tiny import tiny_model
from lmcompose.quant import QuantGrid, quantize_dequantize
from lmcompose.sparsity import satisfies_n_of_m


def apply(lm, step):
    s = build_intervention(parse_step(step))
    return s, s.apply(lm, Context())


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_magnitude_reaches_the_exact_sparsity_per_matrix(sparsity):
    lm = tiny_model("llama")
    before = {n: lm.weight(n).clone() for n, _ in lm.linear_layers()}
    _, report = apply(lm, f"magnitude:sparsity={sparsity}")
    for name, _ in lm.linear_layers():
        w, w0 = lm.weight(name), before[name]
        assert int((w == 0).sum()) == round(sparsity * w.numel())
        kept = w != 0
        if sparsity > 0:  # every kept weight is at least as large as every pruned one
            assert w0[kept].abs().min() >= w0[~kept].abs().max()
        assert torch.equal(w[kept], w0[kept])
    assert report.details["sparsity"] == pytest.approx(sparsity, abs=1e-3)


@pytest.mark.parametrize("structure,n,m", [("2:4", 2, 4), ("1:4", 1, 4), ("4:8", 4, 8)])
def test_magnitude_n_m_holds_in_every_group(structure, n, m):
    lm = tiny_model("gpt2")
    _, report = apply(lm, f"magnitude:structure={structure}")
    for name, _ in lm.linear_layers():
        w = lm.weight(name)
        assert satisfies_n_of_m(w, n, m)
        assert int((w != 0).sum()) == w.numel() * n // m
    assert report.details["sparsity"] == pytest.approx(1 - n / m)


def test_n_m_needs_whole_groups():
    lm = tiny_model("llama")
    with pytest.raises(ConfigError, match="multiple of M=7"):
        apply(lm, "magnitude:structure=2:7")


def test_magnitude_project_rezeroes_after_a_later_change():
    lm = tiny_model("llama")
    step, _ = apply(lm, "magnitude:sparsity=0.5")
    name = lm.linear_layers()[0][0]
    lm.weight(name).add_(0.1)
    assert (lm.weight(name) == 0).sum() == 0
    step.project(lm)
    assert int((lm.weight(name) == 0).sum()) == lm.weight(name).numel() // 2


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn_puts_every_weight_on_its_grid(bits, symmetric):
    lm = tiny_model("opt")
    step, _ = apply(lm, f"rtn:bits={bits},group_size=32,symmetric={symmetric}")
    for name, _ in lm.linear_layers():
        w = lm.weight(name)
        grid = lm.compression[name].quant
        scale, zero = grid.expanded(w.shape[1])
        q = torch.round(w / scale + zero)
        assert torch.allclose(scale * (q - zero), w, atol=1e-6)
        assert q.min() >= 0 and q.max() <= 2**bits - 1
        assert len(torch.unique(q)) <= 2**bits
        if symmetric:
            assert torch.all(zero == 2 ** (bits - 1))


def test_rtn_matches_a_hand_computed_grid():
    w = torch.tensor([[-1.0, 0.2, 0.6, 2.0]])
    grid = QuantGrid.fit(w, bits=2, group_size=-1, symmetric=False)
    # min -1, max 2: scale = 3/3 = 1, zero = round(1) = 1 -> levels {-1, 0, 1, 2}
    assert grid.scale.item() == pytest.approx(1.0) and grid.zero.item() == 1
    assert torch.equal(grid.snap_(w.clone()), torch.tensor([[-1.0, 0.0, 1.0, 2.0]]))


def test_rtn_group_size_not_dividing_the_width_uses_a_short_last_group():
    w = torch.randn(4, 70)
    grid = QuantGrid.fit(w, bits=4, group_size=32, symmetric=False)
    assert grid.scale.shape == (4, 3)
    # the last group (6 columns) has its own range
    s_last = (w[:, 64:].max(1).values.clamp(min=0) - w[:, 64:].min(1).values.clamp(max=0)) / 15
    assert torch.allclose(grid.scale[:, 2], s_last)
    snapped = grid.snap_(w.clone())
    assert grid.on_grid(snapped)


def test_rtn_error_shrinks_with_more_bits():
    errs = []
    for bits in (2, 3, 4, 8):
        w = torch.randn(16, 128, generator=torch.Generator().manual_seed(0))
        grid = QuantGrid.fit(w, bits, 32, False)
        errs.append(float((grid.snap_(w.clone()) - w).pow(2).mean()))
    assert errs == sorted(errs, reverse=True)


def test_rtn_project_snaps_back_and_is_idempotent():
    lm = tiny_model("gpt_neox")
    step, _ = apply(lm, "rtn:bits=3,group_size=16")
    name = lm.linear_layers()[0][0]
    lm.weight(name).add_(torch.randn_like(lm.weight(name)) * 0.01)
    assert not lm.compression[name].quant.on_grid(lm.weight(name))
    step.project(lm)
    once = lm.weight(name).clone()
    assert lm.compression[name].quant.on_grid(once)
    step.project(lm)
    assert torch.equal(once, lm.weight(name))


def test_prune_then_quantize_keeps_zeros_on_the_grid():
    lm = tiny_model("llama")
    apply(lm, "magnitude:sparsity=0.5")
    apply(lm, "rtn:bits=4,group_size=32")
    for name, _ in lm.linear_layers():
        w = lm.weight(name)
        assert int((w == 0).sum()) >= w.numel() // 2
        assert lm.compression[name].quant.on_grid(w)


def test_average_bits_by_hand():
    # 4x64 weights, half pruned (mask), 4-bit on a grid of group 32: 2 groups per row
    w = torch.randn(4, 64)
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[:, :32] = False
    w[~keep] = 0
    grid = QuantGrid.fit(w, 4, 32, False)
    grid.snap_(w)

    class S:
        keep_mask = keep
        quant = grid

    bits, zeros, n = layer_bits(w, S)
    pruned = 128
    expected = pruned * 1 + (256 - pruned) * 4 + 8 * 32
    assert bits == expected and n == 256 and zeros >= 128


def test_average_bits_dense_and_after_steps():
    lm = tiny_model("llama")
    assert compression_summary(lm)["avg_bits"] == pytest.approx(16.0)
    apply(lm, "magnitude:sparsity=0.5")
    assert compression_summary(lm)["avg_bits"] == pytest.approx(0.5 * 1 + 0.5 * 16, abs=1e-3)
    apply(lm, "rtn:bits=4,group_size=32")
    # widths are 64 or 128: a scale+zero pair per 32 columns = 1 bit per weight
    assert compression_summary(lm)["avg_bits"] == pytest.approx(0.5 * 1 + 0.5 * 4 + 1, abs=1e-3)


def test_quantized_weights_moved_off_grid_count_as_16_bit():
    lm = tiny_model("llama")
    apply(lm, "rtn:bits=4,group_size=32")
    for name, _ in lm.linear_layers():
        lm.weight(name).add_(1e-3)
    assert compression_summary(lm)["avg_bits"] == pytest.approx(16.0)


def test_quantize_dequantize_clamps_to_the_range():
    x = torch.tensor([[10.0, -10.0]])
    out = quantize_dequantize(x, torch.tensor([[1.0]]), torch.tensor([[2.0]]), 2)
    assert out.tolist() == [[1.0, -2.0]]


def test_rtn_in_bfloat16_stays_on_its_rounded_grid():
    lm = tiny_model("llama")
    lm.model.to(torch.bfloat16)
    apply(lm, "rtn:bits=4,group_size=32")
    assert compression_summary(lm)["avg_bits"] == pytest.approx(5.0, abs=1e-3)
