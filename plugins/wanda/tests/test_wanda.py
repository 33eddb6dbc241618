from __future__ import annotations

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, parse_step
from lmcompose.models.tiny import tiny_model
from lmcompose.sparsity import satisfies_n_of_m
from lmcompose.testing import InterventionConformance, capture_inputs, with_outlier_features
from lmcompose_wanda.intervention import wanda_scores


class TestWandaConformance(InterventionConformance):
    intervention = "wanda"
    config = {"sparsity": 0.5}


class TestWandaNMConformance(InterventionConformance):
    intervention = "wanda"
    config = {"structure": "2:4"}
    architectures = ("gemma3", "gpt2")


def ctx():
    return Context(calibration_samples=8, calibration_seqlen=64)


def layer0_inputs(lm, name):
    return capture_inputs(lm, name, ctx().calibration_batches(lm, 8, 64))


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_exact_sparsity_per_row(sparsity):
    lm = tiny_model("gpt_neox")
    build_intervention(parse_step(f"wanda:sparsity={sparsity}")).apply(lm, ctx())
    for name, _ in lm.linear_layers():
        w = lm.weight(name)
        assert ((w == 0).sum(dim=1) == round(w.shape[1] * sparsity)).all()


def test_n_m_pattern():
    lm = tiny_model("llama")
    build_intervention(parse_step("wanda:structure=2:4")).apply(lm, ctx())
    for name, _ in lm.linear_layers():
        assert satisfies_n_of_m(lm.weight(name), 2, 4)


@pytest.mark.parametrize(
    "proj",
    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
)
def test_mask_follows_the_wanda_score_on_layer0(proj):
    """Layer 0 sees the dense model's inputs: the mask is exactly the per-row lowest |W|·‖X‖
    (also for projections that share their input's statistics with another: k, v, up)."""
    lm = tiny_model("llama")
    name = f"model.layers.0.{proj}"
    x = layer0_inputs(lm, name)
    w0 = lm.weight(name).clone()
    build_intervention(parse_step("wanda:sparsity=0.5")).apply(lm, ctx())
    scores = wanda_scores(w0, (x.double() ** 2).sum(0))
    k = w0.shape[1] // 2
    expected_pruned = torch.zeros_like(w0, dtype=torch.bool).scatter_(
        1, torch.argsort(scores, dim=1, stable=True)[:, :k], True
    )
    assert torch.equal(lm.weight(name) == 0, expected_pruned)


@pytest.mark.parametrize(
    "arch,name",
    [
        ("llama", "model.layers.0.self_attn.q_proj"),
        ("llama", "model.layers.0.mlp.gate_proj"),
        ("opt", "model.decoder.layers.0.fc1"),
    ],
)
def test_reconstruction_error_below_magnitude(arch, name):
    """Real LLMs have a few input features with much larger norms (the reason Wanda works);
    give the tiny model's layer-0 norms such outliers (seeded log-normal gains)."""
    lm, mag = with_outlier_features(tiny_model(arch)), with_outlier_features(tiny_model(arch))
    x = layer0_inputs(lm, name)
    w0 = lm.weight(name).clone()
    build_intervention(parse_step("wanda:sparsity=0.5")).apply(lm, ctx())
    build_intervention(parse_step("magnitude:sparsity=0.5")).apply(mag, ctx())
    assert torch.linalg.norm((w0 - lm.weight(name)) @ x.t()) < torch.linalg.norm((w0 - mag.weight(name)) @ x.t())
