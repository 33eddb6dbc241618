from __future__ import annotations

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, load_edits, parse_step
from lmcompose.errors import ConfigError, DataError
from lmcompose.models.tiny import TINY_ARCHITECTURES, tiny_model
from lmcompose.testing import InterventionConformance, argmax_hits, subject_final_edits
from lmcompose_memit import algorithm as alg
from lmcompose_memit.presets import preset_for, rule_preset

# Random tiny models have near-uniform attention and logits of tiny scale: the target can
# become the argmax but never confident, so v* needs a free (unclamped, undecayed) delta,
# and lambda must be about the MLP width (the rule's default). Small statistics keep it fast.
RANDOM_MODEL = "clamp_norm_factor=100,v_lr=0.2,v_num_grad_steps=40,v_weight_decay=0.001,stats_samples=8,stats_seqlen=64"


class TestMEMITConformance(InterventionConformance):
    intervention = "memit"
    config = {**dict(kv.split("=") for kv in RANDOM_MODEL.split(",")), "v_num_grad_steps": 5, "context_templates": 2}


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_edits_become_the_argmax_on_every_architecture(arch, tmp_path):
    lm = tiny_model(arch)
    records = subject_final_edits()
    assert not all(argmax_hits(lm, records))
    step = build_intervention(parse_step(f"memit:{RANDOM_MODEL},layers=0+1"))
    report = step.apply(lm, Context(edits=records, cache_dir=tmp_path))
    assert all(argmax_hits(lm, records)), report.details
    assert set(report.details["update_norms"]) == {f"{lm.arch.layers}.{i}.{lm.arch.mlp_out}" for i in (0, 1)}


def test_closed_form_update_matches_least_squares():
    """ΔW = R Kᵀ(λC + KKᵀ)⁻¹ minimises |ΔW K − R|² + λ tr(ΔW C ΔWᵀ): solve that as one
    stacked least-squares problem with C = U Uᵀ and compare."""
    gen = torch.Generator().manual_seed(0)
    d_in, d_out, n, lam = 24, 10, 6, 3.0
    a = torch.randn(d_in, 200, generator=gen, dtype=torch.float64)
    cov = a @ a.T / 200
    keys = torch.randn(d_in, n, generator=gen, dtype=torch.float64)
    resid = torch.randn(d_out, n, generator=gen, dtype=torch.float64)
    u = torch.linalg.cholesky(cov)
    design = torch.cat([keys, lam**0.5 * u], dim=1)  # (d_in, n + d_in)
    target = torch.cat([resid, torch.zeros(d_out, d_in, dtype=torch.float64)], dim=1)
    direct = torch.linalg.lstsq(design.T, target.T).solution.T
    ours = alg.memit_delta(keys.float(), resid.float(), cov, lam)
    assert ours.dtype == torch.float64
    assert torch.allclose(ours, alg.memit_delta(keys, resid, cov, lam), atol=1e-5)
    assert torch.allclose(alg.memit_delta(keys, resid, cov, lam), direct, atol=1e-9)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_tail_reproduces_the_model_logits(arch):
    lm = tiny_model(arch)
    ids = torch.tensor([lm.tokenizer("The Eiffel Tower is located in the city of").input_ids])
    full = lm.model(ids).logits[0]
    for z in range(2):
        h = alg.residual_after(lm, z, ids)
        pos = torch.arange(ids.shape[1])
        with torch.no_grad():
            got = alg.Tail(lm, z).logits(h, torch.zeros_like(pos), pos)
        assert torch.allclose(got, full, atol=1e-5), (arch, z)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_split_tail_reproduces_the_model_logits(arch):
    """The prefix run once and kept as keys and values, the suffix through the layers above
    z: the logits of every suffix position equal the whole model's, for right-padded
    suffixes of two lengths and for a subset of the rows; also past gemma3's sliding window."""
    lm = tiny_model(arch)
    texts = [
        "The Eiffel Tower is located in the city of Paris, which is the capital of",
        "Danny Glover is an actor who was born in the country of the United States and",
    ]
    seqs = [lm.tokenizer(t).input_ids for t in texts]
    with torch.no_grad():
        full = [lm.model(torch.tensor([s])).logits[0] for s in seqs]
    pad = alg.pad_id(lm.tokenizer)
    for z in range(2):
        for p in (0, 3, 18):
            cut = [s[: len(s) - 2 * k] for k, s in enumerate(seqs)]  # suffixes of unequal length
            prefix = torch.tensor([c[:p] for c in cut])
            split = alg.split_forward(lm, z, prefix, alg.pad_right([c[p:] for c in cut], pad))
            tail = alg.Tail(lm, z)
            for sel in (None, torch.tensor([1])):
                rows_here = [0, 1] if sel is None else [1]
                for k, r in enumerate(rows_here):
                    pos = torch.arange(len(cut[r]) - p)
                    with torch.no_grad():
                        got = tail.logits(
                            split.h0 if sel is None else split.h0[sel], torch.full_like(pos, k), pos, split, sel
                        )
                    assert torch.allclose(got, full[r][p : len(cut[r])], atol=1e-5), (arch, z, p, r)


def test_batched_vstar_equals_one_edit_at_a_time():
    lm = tiny_model("llama")
    records = subject_final_edits()[:3]
    templates = alg.context_templates(lm, 2, 6, seed=0)
    hp = {"v_num_grad_steps": 12, "v_lr": 0.2, "v_weight_decay": 1e-3, "clamp_norm_factor": 100.0, "kl_factor": 0.0625}
    together = alg.optimize_vstar(lm, records, templates, 0, hp, 5e-2, max_tokens=64)
    for e, r in enumerate(records):
        alone = alg.optimize_vstar(lm, [r], templates, 0, hp, 5e-2, max_tokens=4096)
        assert torch.allclose(together.target[e], alone.target[0], atol=1e-4)
        assert together.steps[e] == alone.steps[0]


def test_early_stopping_is_per_edit():
    lm = tiny_model("llama")
    records = subject_final_edits()[:2]
    templates = ["{}"]
    hp = {"v_num_grad_steps": 10, "v_lr": 0.2, "v_weight_decay": 1e-3, "clamp_norm_factor": 100.0, "kl_factor": 0.0}
    first = alg.optimize_vstar(lm, records, templates, 0, hp, 1e9, 4096)  # every loss is below: no step at all
    assert first.steps == [0, 0] and first.forward_steps == 1
    assert torch.equal(first.target, first.init)
    threshold = (first.first_loss[0] + first.first_loss[1]) / 2  # only the lower one stops at once
    mixed = alg.optimize_vstar(lm, records, templates, 0, hp, threshold, 4096)
    low = 0 if first.first_loss[0] < first.first_loss[1] else 1
    assert mixed.steps[low] == 0 and mixed.steps[1 - low] > 0


def test_row_wise_adam_matches_torch_adam():
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(3, 5, generator=gen)
    ref = p[1].clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.1)
    m, v, t = torch.zeros_like(p), torch.zeros_like(p), torch.zeros(3)
    active = torch.tensor([False, True, False])
    frozen = p[[0, 2]].clone()
    for _ in range(4):
        g = torch.randn(3, 5, generator=gen)
        ref.grad = g[1].clone()
        opt.step()
        alg._adam(p, g, m, v, t, 0.1, active)
    assert torch.allclose(p[1], ref.detach(), atol=1e-6)
    assert torch.equal(p[[0, 2]], frozen)


def test_kl_term_is_the_reference_direction():
    # compute_z: kl_div(init, now, log_target=True) = KL(p_now || p_init), not KL(p_init || p_now)
    g = torch.Generator().manual_seed(0)
    now = torch.log_softmax(torch.randn(3, 11, generator=g), -1)
    init = torch.log_softmax(torch.randn(3, 11, generator=g), -1)
    ref = torch.nn.functional.kl_div(init, now, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(alg.kl_term(now, init), ref)
    assert not torch.allclose(alg.kl_term(init, now), ref)  # the two directions differ here


def test_keys_average_within_template_groups_then_across():
    # compute_ks: [["{}"], [generated...]]: the bare prompt weighs 1/2, the generated share 1/2
    k = torch.tensor(
        [
            [[6.0], [0.0], [3.0], [0.0]],  # edit 0: bare 6, generated 0, 3, 0
            [[1.0], [2.0], [2.0], [2.0]],
        ]
    )
    keys = alg.template_key_mean(k.view(8, 1), n_edits=2, n_templates=4)
    assert keys.flatten().tolist() == [0.5 * 6 + 0.5 * 1.0, 0.5 * 1 + 0.5 * 2]
    assert alg.template_key_mean(k[:, :1].reshape(2, 1), 2, 1).flatten().tolist() == [6.0, 1.0]


def test_subject_last_token_index():
    lm = tiny_model("llama")
    text = "I met Danny Glover yesterday"
    ids, last = alg.subject_last_index(lm.tokenizer, text, text.index("Glover") + len("Glover"))
    upto = lm.tokenizer.decode(ids[: last + 1])
    assert upto.endswith("Glover")


def test_context_templates_are_seeded_and_hold_one_slot():
    lm = tiny_model("gpt2")
    a = alg.context_templates(lm, 5, 10, seed=3)
    assert a == alg.context_templates(lm, 5, 10, seed=3)
    assert a[0] == "{}" and len(a) == 6
    assert all(t.count("{}") == 1 and t.endswith(". {}") for t in a[1:])


def test_presets_and_rule():
    lm = tiny_model("llama")
    where, values = preset_for(lm)
    assert where.startswith("rule") and values["layers"] == [0] and values["mom2_update_weight"] == 128.0
    assert rule_preset(28, "gptj", 16384)["layers"] == [3, 4, 5, 6, 7]


def test_bad_requests_are_clear_errors(tmp_path):
    lm = tiny_model("llama")
    with pytest.raises(ConfigError, match="layers"):
        build_intervention(parse_step("memit:layers=5")).apply(
            lm, Context(edits=subject_final_edits(), cache_dir=tmp_path)
        )
    with pytest.raises(ConfigError, match="only 4 edits"):
        build_intervention(parse_step("memit:n_edits=10")).apply(
            lm, Context(edits=subject_final_edits(), cache_dir=tmp_path)
        )
    with pytest.raises(DataError, match="needs edit requests"):
        build_intervention(parse_step("memit")).apply(lm, Context(cache_dir=tmp_path))
    with pytest.raises(ConfigError):
        parse_and_build = build_intervention(parse_step("memit:n_edits=0"))  # noqa: F841


def test_sequential_batches_apply_every_edit(tmp_path):
    lm = tiny_model("gemma3")
    records = subject_final_edits()
    step = build_intervention(parse_step(f"memit:{RANDOM_MODEL},layers=0+1,batch_size=2"))
    report = step.apply(lm, Context(edits=records, cache_dir=tmp_path))
    assert report.details["batches"] == 2
    assert all(argmax_hits(lm, records))


def test_statistics_are_cached_and_reused(tmp_path):
    lm = tiny_model("llama")
    records = subject_final_edits()[:1]
    ctx = Context(edits=records, cache_dir=tmp_path)
    step = build_intervention(
        parse_step(
            "memit:" + RANDOM_MODEL.replace("v_num_grad_steps=40", "v_num_grad_steps=2") + ",context_templates=1"
        )
    )
    assert step.apply(lm, ctx).details["stats_cached"] is False
    again = tiny_model("llama")
    assert step.apply(again, ctx).details["stats_cached"] is True
    pruned = tiny_model("llama")
    build_intervention(parse_step("magnitude:sparsity=0.5")).apply(pruned, ctx)
    assert step.apply(pruned, ctx).details["stats_cached"] is False


@pytest.mark.slow
def test_ten_counterfact_edits_on_smollm2(shared_data, tmp_path):
    from lmcompose.metrics.edits import EditMetrics
    from lmcompose.models.loading import load_model

    lm = load_model("smollm2-135m")
    records = load_edits("counterfact", limit=10, seed=0)
    ctx = Context(edits=records)
    report = build_intervention(parse_step("memit")).apply(lm, ctx)
    scores = EditMetrics(EditMetrics.Config(scorer="prob")).compute(lm, ctx)
    assert scores["edit_success_prob"] >= 0.9, (scores, report.details)


def test_through_post_norm_reaches_any_output_the_norm_can_give():
    """A change to an output the norm can produce is met exactly; for any other change the
    output is the nearest one the norm can give (closer than y / rms(y / g), the rescaling
    used before lmcompose 0.3, and than any other output of the norm tried)."""
    lm = tiny_model("gemma3")
    norm = lm.model.get_submodule(f"{lm.arch.layers}.0.{lm.arch.mlp_post_norm}")
    with torch.no_grad():
        norm.weight.normal_(0, 0.3)
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(3, norm.weight.shape[0], generator=gen) * 5
    other = torch.randn(3, norm.weight.shape[0], generator=gen)
    with torch.no_grad():
        change = norm(other) - norm(out)
        d = alg.through_post_norm(norm, lm.arch.norm_offset, out, change)
        assert torch.allclose(norm(out + d), norm(other), atol=1e-4)
        change = 3.0 * torch.randn(3, out.shape[1], generator=gen)  # far beyond what the norm can give
        d = alg.through_post_norm(norm, lm.arch.norm_offset, out, change)
        y = norm(out) + change
        got = (norm(out + d) - y).norm(dim=-1)
        u = y / (lm.arch.norm_offset + norm.weight)
        rescaled = (y / u.pow(2).mean(-1, keepdim=True).sqrt() - y).norm(dim=-1)
        assert (got < rescaled).all()
        tries = norm(torch.randn(256, out.shape[1], generator=gen))  # other outputs the norm gives
        for k in range(3):
            assert float(got[k]) <= float((tries - y[k]).norm(dim=-1).min()) + 1e-4
            # first-order optimality on the sphere: no output nearby along the sphere is closer
            v = (out + d)[k] / (out + d)[k].pow(2).mean().sqrt()
            for _ in range(20):
                step = 1e-3 * torch.randn(v.shape, generator=gen)
                w = v + step
                w = w / w.pow(2).mean().sqrt()
                assert float((norm(w) - y[k]).norm()) >= float(got[k]) - 1e-4
        assert torch.allclose((out + d).norm(dim=-1), out.norm(dim=-1), rtol=1e-5)  # the input keeps its size


def test_gemma_spread_moves_the_residual_to_the_target(tmp_path):
    """With the post-MLP norm inverted, one layer's update (λ tiny, C = I) moves layer z's
    output at the subject to a target the layer can reach (its MLP output swapped for
    another one the norm can give); treating the norm as absent misses it."""
    import dataclasses

    records = subject_final_edits()[:1]
    errors = {}
    for inverted in (True, False):
        lm = tiny_model("gemma3")
        with torch.no_grad():  # a random model's MLP outputs are so small that the norm's eps would matter
            lm.weight(f"{lm.arch.layers}.1.{lm.arch.mlp_out}").mul_(1000)
        if not inverted:
            lm.arch = dataclasses.replace(lm.arch, mlp_post_norm=None)
        step = build_intervention(parse_step("memit:layers=1"))
        r = records[0]
        bare = [alg.Row(*alg.subject_last_index(lm.tokenizer, r.prompt, r.prompt.index(r.subject) + len(r.subject)), 0)]
        name = f"{lm.arch.layers}.1"
        cur = alg.module_values_at(lm, bare, name, "output", 4096)
        out = alg.module_values_at(lm, bare, f"{name}.{lm.arch.mlp_out}", "output", 4096)
        norm = lm.model.get_submodule(f"{name}.post_feedforward_layernorm")
        with torch.no_grad():
            other = out + 2 * out.norm() * torch.nn.functional.normalize(
                torch.randn(out.shape, generator=torch.Generator().manual_seed(1)), dim=-1
            )
            target = cur + norm(other) - norm(out)
        d_ff = lm.weight(f"{name}.{lm.arch.mlp_out}").shape[1]
        step.spread(lm, records, target, ["{}"], [1], 1e-6, {1: torch.eye(d_ff, dtype=torch.float64)})
        after = alg.module_values_at(lm, bare, name, "output", 4096)
        errors[inverted] = float((after - target).norm() / (target - cur).norm())
    assert errors[True] < 0.02 and errors[False] > 0.3, errors


def test_stats_from_base_uses_the_unmodified_models_statistics(tmp_path):
    """compress→edit with stats_from=base reuses the dense model's covariance (the paper's
    code cached it by model name); the default computes it on the compressed weights."""
    from lmcompose.compose import compose

    records = subject_final_edits()[:2]
    step = "memit:" + RANDOM_MODEL.replace("v_num_grad_steps=40", "v_num_grad_steps=5") + ",layers=0+1"

    def stats_files():
        return {p.name for p in tmp_path.rglob("*") if p.is_file()}

    compose(tiny_model("llama"), [step], edits=records, metrics=["avg_bits"], ctx=Context(cache_dir=tmp_path))
    dense = stats_files()
    assert dense
    ctx = Context(cache_dir=tmp_path)
    compose(tiny_model("llama"), ["magnitude", step + ",stats_from=base"], edits=records, metrics=["avg_bits"], ctx=ctx)
    assert stats_files() == dense  # nothing new: the base model's statistics served the compressed model
    name = f"{ctx.base_model.arch.layers}.0.mlp.down_proj"
    assert torch.equal(ctx.base_model.weight(name), tiny_model("llama").weight(name))  # kept unmodified
    compose(
        tiny_model("llama"), ["magnitude", step], edits=records, metrics=["avg_bits"], ctx=Context(cache_dir=tmp_path)
    )
    assert stats_files() > dense  # the default: statistics of the pruned model
    assert build_intervention(parse_step("memit:stats_from=base")).needs_base_model
    assert not build_intervention(parse_step("memit")).needs_base_model


def test_hyperparameters_resolve_into_a_frozen_typed_config():
    import dataclasses

    from lmcompose_memit.config import MEMITHParams

    lm = tiny_model("llama")
    source, hp = build_intervention(parse_step("memit:v_lr=2,layers=1+0")).hparams(lm)
    assert isinstance(hp, MEMITHParams) and source.endswith("overridden: layers, v_lr")
    assert hp.layers == (0, 1) and hp.v_lr == 2.0 and isinstance(hp.v_num_grad_steps, int)
    assert hp.mom2_update_weight == rule_preset(2, "llama", 128)["mom2_update_weight"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        hp.v_lr = 3.0  # type: ignore[misc]
    assert hp.as_dict()["layers"] == [0, 1]
    with pytest.raises(ConfigError, match="no value for mom2_update_weight"):
        MEMITHParams.from_values({**rule_preset(2, "llama", 128), "mom2_update_weight": None}, "memit")
    with pytest.raises(ConfigError, match="unknown hyperparameters l2"):
        MEMITHParams.from_values({**rule_preset(2, "llama", 128), "l2": 1.0}, "memit")
