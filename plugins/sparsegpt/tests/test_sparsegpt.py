from __future__ import annotations

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, parse_step
from lmcompose.errors import NumericalError
from lmcompose.models.tiny import tiny_model
from lmcompose.sparsity import satisfies_n_of_m
from lmcompose.testing import InterventionConformance, capture_inputs
from lmcompose_sparsegpt.algorithm import sparsegpt_prune


class TestSparseGPTConformance(InterventionConformance):
    intervention = "sparsegpt"
    config = {"sparsity": 0.5}


class TestSparseGPTNMConformance(InterventionConformance):
    intervention = "sparsegpt"
    config = {"structure": "2:4"}
    architectures = ("llama", "gpt2")


def ctx():
    return Context(calibration_samples=8, calibration_seqlen=64)


def layer0_inputs(lm, name):
    return capture_inputs(lm, name, ctx().calibration_batches(lm, 8, 64))


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.7])
def test_exact_sparsity_per_block(sparsity):
    lm = tiny_model("llama")
    build_intervention(parse_step(f"sparsegpt:sparsity={sparsity}")).apply(lm, ctx())
    for name, _ in lm.linear_layers():
        w = lm.weight(name)
        rows, cols = w.shape
        expected = sum(round(rows * min(128, cols - c) * sparsity) for c in range(0, cols, 128))
        assert int((w == 0).sum()) == expected, name


def test_n_m_pattern_in_every_group():
    lm = tiny_model("opt")
    build_intervention(parse_step("sparsegpt:structure=2:4")).apply(lm, ctx())
    for name, _ in lm.linear_layers():
        assert satisfies_n_of_m(lm.weight(name), 2, 4)
        assert float((lm.weight(name) == 0).float().mean()) == 0.5


@pytest.mark.parametrize(
    "arch,name",
    [
        ("llama", "model.layers.0.self_attn.q_proj"),
        ("llama", "model.layers.0.mlp.up_proj"),
        ("gpt2", "transformer.h.0.attn.c_attn"),
    ],
)
@pytest.mark.parametrize("step", ["sparsity=0.5", "structure=2:4"])
def test_reconstruction_error_below_magnitude(arch, name, step):
    lm = tiny_model(arch)
    x = layer0_inputs(lm, name)
    w0 = lm.weight(name).clone()
    build_intervention(parse_step(f"sparsegpt:{step}")).apply(lm, ctx())
    mag = tiny_model(arch)
    build_intervention(parse_step(f"magnitude:{step}")).apply(mag, ctx())
    err_sgpt = torch.linalg.norm((w0 - lm.weight(name)) @ x.t())
    err_mag = torch.linalg.norm((w0 - mag.weight(name)) @ x.t())
    assert err_sgpt < err_mag


def test_obs_update_beats_pruning_without_update():
    """Same mask, with and without SparseGPT's error propagation: the update must help."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=gen) @ torch.randn(64, 64, generator=gen)  # correlated inputs
    w = torch.randn(32, 64, generator=gen)
    pruned = w.clone()
    keep = sparsegpt_prune(pruned, x.t() @ x, 0.5, None, 128, 0.01, [], "w")
    no_update = w * keep
    err = lambda v: torch.linalg.norm((w - v) @ x.t())  # noqa: E731
    assert err(pruned) < err(no_update)


def test_damping_grows_when_the_hessian_is_not_positive_definite():
    messages: list[str] = []
    w = torch.randn(4, 3)
    h = torch.diag(torch.tensor([1.0, 1.0, -0.05]))
    sparsegpt_prune(w, h, 0.5, None, 128, 0.01, messages, "layer.x")
    assert messages and "not positive definite" in messages[0] and "layer.x" in messages[0]
    with pytest.raises(NumericalError, match="raise percdamp"):
        sparsegpt_prune(torch.randn(4, 2), torch.diag(torch.tensor([1.0, -1e6])), 0.5, None, 128, 0.01, [], "layer.y")


def test_dead_inputs_are_pruned():
    w = torch.randn(4, 8)
    x = torch.randn(100, 8)
    x[:, 3] = 0
    keep = sparsegpt_prune(w, x.t() @ x, 0.25, None, 128, 0.01, [], "w")
    assert not keep[:, 3].any() and (w[:, 3] == 0).all()


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_stacked_matrices_are_pruned_as_if_alone(nm):
    """rows=[...]: one sweep over matrices stacked row-wise gives each matrix the mask and
    weights a sweep of its own gives. The matrices' scales differ, so an unstructured
    selection ranked across all stacked rows would give them different masks."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(512, 64, generator=gen) @ torch.randn(64, 64, generator=gen)
    h = x.t() @ x
    ws = [torch.randn(r, 64, generator=gen) * s for r, s in ((24, 1.0), (8, 3.0), (16, 0.2))]
    stacked = torch.cat(ws)
    keep = sparsegpt_prune(stacked, h, 0.5, nm, 32, 0.01, [], "qkv", rows=[24, 8, 16])
    start = 0
    for w in ws:
        alone = w.clone()
        keep_alone = sparsegpt_prune(alone, h, 0.5, nm, 32, 0.01, [], "w")
        assert torch.equal(keep[start : start + len(w)], keep_alone)
        assert torch.allclose(stacked[start : start + len(w)], alone, atol=1e-5)
        start += len(w)
    global_selection = torch.cat(ws)
    sparsegpt_prune(global_selection, h, 0.5, nm, 32, 0.01, [], "all rows ranked together")
    if nm is None:  # the check above can fail: ranking all rows together prunes otherwise
        assert not torch.equal(global_selection != 0, keep)
    with pytest.raises(ValueError, match="do not add up"):
        sparsegpt_prune(torch.cat(ws), h, 0.5, nm, 32, 0.01, [], "qkv", rows=[24, 8])


@pytest.mark.parametrize("step", ["sparsity=0.5", "structure=2:4"])
def test_projections_sharing_an_input_are_pruned_in_one_sweep_as_if_alone(monkeypatch, step):
    """On the pipeline, q/k/v and gate/up (one input each) go through one stacked sweep;
    each comes out with the mask and weights a sweep of its own matrix with that H gives."""
    import lmcompose_sparsegpt.algorithm as algorithm

    real = algorithm.sparsegpt_prune
    calls = []

    def spy(w, h, sparsity, nm, blocksize, percdamp, messages, where, rows=None):
        calls.append((where, w.detach().clone(), h.clone(), rows))
        return real(w, h, sparsity, nm, blocksize, percdamp, messages, where, rows=rows)

    monkeypatch.setattr(algorithm, "sparsegpt_prune", spy)
    lm = tiny_model("llama")
    sgpt = build_intervention(parse_step(f"sparsegpt:{step}"))
    sgpt.apply(lm, ctx())
    c = sgpt.config
    groups = [
        [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"],
        [f"model.layers.0.mlp.{p}_proj" for p in ("gate", "up")],
    ]
    seen = {where: (w0, h, rows) for where, w0, h, rows in calls}
    assert "model.layers.0.self_attn.o_proj" in seen and "model.layers.0.mlp.down_proj" in seen
    for group in groups:
        w0, h, rows = seen["+".join(group)]
        assert rows == [lm.weight(n).shape[0] for n in group]
        start = 0
        for name, r in zip(group, rows, strict=True):
            alone = w0[start : start + r].clone()
            keep = real(alone, h, c.sparsity, (2, 4) if "2:4" in step else None, c.blocksize, c.percdamp, [], name)
            assert torch.equal(sgpt.masks[name], keep), name
            assert torch.allclose(lm.weight(name), alone, atol=1e-5), name
            start += r
