from __future__ import annotations

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, parse_step
from lmcompose.errors import ConfigError
from lmcompose.models.tiny import TINY_ARCHITECTURES, tiny_model
from lmcompose.testing import InterventionConformance, argmax_hits, subject_final_edits
from lmcompose_alphaedit.algorithm import alphaedit_delta, null_space_projector
from lmcompose_alphaedit.presets import preset_for

# Random tiny models: the target can become the argmax but never confident, so v* needs a
# free delta (as in MEMIT's tests), and the ridge weight must be of the keys' scale.
RANDOM_MODEL = (
    "clamp_norm_factor=100,v_lr=0.2,v_num_grad_steps=40,v_weight_decay=0.001,stats_samples=8,stats_seqlen=64,l2=0.001"
)


class TestAlphaEditConformance(InterventionConformance):
    intervention = "alphaedit"
    config = {**dict(kv.split("=") for kv in RANDOM_MODEL.split(",")), "v_num_grad_steps": 5, "context_templates": 2}


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_edits_become_the_argmax_on_every_architecture(arch, tmp_path):
    lm = tiny_model(arch)
    records = subject_final_edits()
    assert not all(argmax_hits(lm, records))
    step = build_intervention(parse_step(f"alphaedit:{RANDOM_MODEL},layers=0+1"))
    report = step.apply(lm, Context(edits=records, cache_dir=tmp_path))
    assert all(argmax_hits(lm, records)), report.details
    d = report.details
    assert set(d["nullspace_dims"]) == {0, 1} and all(0 < n < d["key_dims"][i] for i, n in d["nullspace_dims"].items())


def rank_deficient_keys(d_in: int = 24, rank: int = 9, n: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(d_in, rank, generator=g, dtype=torch.float64)
    return basis @ torch.randn(rank, n, generator=g, dtype=torch.float64)  # (d_in, n), rank 9


def test_update_leaves_rank_deficient_preserved_keys_unchanged_to_float64_precision():
    g = torch.Generator().manual_seed(1)
    k0 = rank_deficient_keys()
    cov = k0 @ k0.T / k0.shape[1]
    p, dim = null_space_projector(cov, 1e-8)
    assert dim == 24 - 9
    layer = torch.nn.Linear(24, 16, bias=False, dtype=torch.float64)
    with torch.no_grad():
        before = layer(k0.T)
    keys = torch.randn(24, 3, generator=g, dtype=torch.float64)  # new keys: off the preserved span
    resid = torch.randn(16, 3, generator=g, dtype=torch.float64)
    delta = alphaedit_delta(keys, resid, p, torch.zeros_like(p), l2=0.1)
    with torch.no_grad():
        layer.weight += delta
    assert float(delta.norm()) > 0.1  # it did move the layer
    with torch.no_grad():
        after = layer(k0.T)
    assert torch.allclose(after, before, rtol=0, atol=1e-10 * float(before.abs().max()))
    # and it writes the new keys as far as the null space lets it
    moved = delta @ keys
    assert float((moved - resid).norm()) < float(resid.norm())


def test_with_no_projection_it_is_ridge_regression():
    """P = I and no earlier keys: ΔWᵀ = (K Kᵀ + λI)⁻¹ K Rᵀ, the least-squares solution of
    [Kᵀ; √λ I] ΔWᵀ = [Rᵀ; 0], computed here independently by lstsq."""
    g = torch.Generator().manual_seed(2)
    keys = torch.randn(12, 5, generator=g, dtype=torch.float64)
    resid = torch.randn(7, 5, generator=g, dtype=torch.float64)
    lam = 0.3
    ours = alphaedit_delta(
        keys, resid, torch.eye(12, dtype=torch.float64), torch.zeros(12, 12, dtype=torch.float64), lam
    )
    design = torch.cat([keys.T, lam**0.5 * torch.eye(12, dtype=torch.float64)])
    target = torch.cat([resid.T, torch.zeros(12, 7, dtype=torch.float64)])
    direct = torch.linalg.lstsq(design, target).solution.T
    assert torch.allclose(ours, direct, atol=1e-10)


def test_earlier_keys_are_kept_by_the_next_batch():
    """With K_p K_pᵀ in the solve, batch 2's update moves batch 1's keys' outputs far less."""
    g = torch.Generator().manual_seed(3)
    p = torch.eye(20, dtype=torch.float64)
    k1 = torch.randn(20, 4, generator=g, dtype=torch.float64)
    k2 = k1 + 0.3 * torch.randn(20, 4, generator=g, dtype=torch.float64)  # related subjects: overlapping keys
    r2 = torch.randn(10, 4, generator=g, dtype=torch.float64)
    forgetful = alphaedit_delta(k2, r2, p, torch.zeros_like(p), 0.1)
    keeping = alphaedit_delta(k2, r2, p, k1 @ k1.T, 0.1)
    assert float((keeping @ k1).norm()) < 0.5 * float((forgetful @ k1).norm())


@pytest.mark.parametrize("editor", ["alphaedit", "memit"])
def test_sequential_batches_compose(editor, tmp_path):
    """Batch 2 does not undo batch 1: after two batches every edit is the argmax, and the
    first batch's edits are still the argmax after the second."""
    records = subject_final_edits()
    config = RANDOM_MODEL if editor == "alphaedit" else RANDOM_MODEL.replace(",l2=0.001", "")
    lm = tiny_model("llama")
    first = build_intervention(parse_step(f"{editor}:{config},layers=0+1"))
    first.apply(lm, Context(edits=records[:2], cache_dir=tmp_path))
    assert all(argmax_hits(lm, records[:2]))
    lm = tiny_model("llama")
    step = build_intervention(parse_step(f"{editor}:{config},layers=0+1,batches=2"))
    report = step.apply(lm, Context(edits=records, cache_dir=tmp_path))
    assert report.details["batches"] == 2 and len(report.details["update_norms"]) == 4
    assert all(argmax_hits(lm, records)), report.details


def test_empty_null_space_is_one_message_naming_threshold_and_range(tmp_path):
    lm = tiny_model("llama")
    step = build_intervention(parse_step(f"alphaedit:{RANDOM_MODEL},layers=0,nullspace_threshold=1e-12"))
    with pytest.raises(
        ConfigError,
        match=r"nullspace_threshold=1e-12 leaves an empty null space: the eigenvalues .* lie in \[[-0-9.e]+, "
        r"[0-9.e+-]+\]",
    ):
        step.apply(lm, Context(edits=subject_final_edits(), cache_dir=tmp_path))
    with pytest.raises(ConfigError, match="nullspace_threshold=0"):
        build_intervention(parse_step("alphaedit:nullspace_threshold=0"))
    with pytest.raises(ConfigError, match="batches=2 and batch_size=2"):
        build_intervention(parse_step("alphaedit:batches=2,batch_size=2"))
    with pytest.raises(ConfigError, match="batches=9 but only 4 edits"):
        build_intervention(parse_step(f"alphaedit:{RANDOM_MODEL},batches=9")).apply(
            lm, Context(edits=subject_final_edits(), cache_dir=tmp_path)
        )


def test_presets_and_rule():
    where, values = preset_for(tiny_model("llama"))
    assert where.startswith("rule") and values["layers"] == [0] and "nullspace_threshold" not in values
    assert values["l2"] == 10.0


def test_hyperparameters_resolve_into_a_frozen_config():
    from lmcompose_alphaedit.config import AlphaEditHParams

    source, hp = build_intervention(parse_step("alphaedit:l2=3")).hparams(tiny_model("llama"))
    assert isinstance(hp, AlphaEditHParams) and hp.l2 == 3.0 and hp.nullspace_threshold is None
    assert source.endswith("overridden: l2")
