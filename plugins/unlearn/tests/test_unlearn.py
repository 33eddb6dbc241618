from __future__ import annotations

import math

import pytest
import torch
from lmcompose.api import Context
from lmcompose.composability import area_metrics, higher_is_better, normalized_criterion
from lmcompose.compose import build_intervention, compose, parse_step
from lmcompose.engine.policy import rerun_after
from lmcompose.errors import ConfigError, DataError
from lmcompose.models.tiny import tiny_model
from lmcompose.testing import InterventionConformance
from lmcompose_unlearn.config import BenchmarkConfig, RMUConfig
from lmcompose_unlearn.facts import LETTERS, benchmark_for, build_benchmark, collect_topics
from lmcompose_unlearn.intervention import GradientAscent
from lmcompose_unlearn.losses import (
    control_vector,
    ga_loss,
    gd_loss,
    masked_mse,
    npo_loss,
    pad_batch,
    rmu_loss,
    sequence_nll,
)
from lmcompose_unlearn.metric import UnlearnMetrics, multiple_choice
from unlearn_fixtures import write_facts

TINY = {"datasets": ["counterfact"], "known_only": False}
STEP_TAIL = "datasets=counterfact,known_only=false"


def ctx_for(folder, seed=0):
    return Context(seed=seed, data_dir=folder, calibration_samples=4, calibration_seqlen=32)


# -- the conformance suite, on the fixture facts -----------------------------------------
class _Conformance(InterventionConformance):
    @pytest.fixture(autouse=True)
    def _facts(self, tmp_path_factory):
        type(self).facts_dir = write_facts(tmp_path_factory.mktemp("facts"))

    def context(self, seed: int = 0) -> Context:
        return ctx_for(self.facts_dir, seed)


class TestGAConformance(_Conformance):
    intervention = "ga"
    config = TINY


class TestGDConformance(_Conformance):
    intervention = "gd"
    config = {**TINY, "retain_data": "both"}


class TestNPOConformance(_Conformance):
    intervention = "npo"
    config = {**TINY, "epochs": 2, "lr": 1e-3}


class TestRMUConformance(_Conformance):
    intervention = "rmu"
    config = {**TINY, "layer": 1}


# -- the losses against hand computations ----------------------------------------------------
def test_sequence_nll_is_the_labelled_tokens_nll():
    # vocabulary of 3, one sequence [0, 2, 1] whose labels start at position 1 (tokens 2 and 1)
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    ids = torch.tensor([[0, 2, 1]])
    labels = torch.tensor([[False, True, True]])
    lp = [2.0 - math.log(1 + math.e + math.e**2), 0.0 - math.log(math.e + 2)]  # log p(2|pos0), log p(1|pos1)
    assert sequence_nll(logits, ids, labels).item() == pytest.approx(-(lp[0] + lp[1]) / 2, rel=1e-6)
    assert sequence_nll(logits, ids, labels, "sum").item() == pytest.approx(-(lp[0] + lp[1]), rel=1e-6)
    only_answer = torch.tensor([[False, False, True]])
    assert sequence_nll(logits, ids, only_answer).item() == pytest.approx(-lp[1], rel=1e-6)


def test_pad_batch_masks_padding_and_the_prompt():
    ids, attn, labels = pad_batch([([5, 6, 7], 1), ([8, 9], 1), ([1, 2, 3, 4], 3)], pad=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 3, 4]]
    assert attn.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert labels.int().tolist() == [[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]


def test_ga_gd_npo_losses_by_hand():
    f = torch.tensor([1.0, 3.0])
    r = torch.tensor([0.5, 1.5, 2.5])
    assert ga_loss(f).item() == pytest.approx(-2.0)
    assert gd_loss(f, r, 40.0).item() == pytest.approx(-2.0 + 40 * 1.5)
    nll, ref, beta = torch.tensor([2.0, 5.0]), torch.tensor([2.0, 3.0]), 0.1
    # -(2/b) log sigmoid(-b (ref - nll)): at nll = ref, (2/b) log 2; at nll - ref = 2, (2/b) log(1 + e^{-0.2})
    want = (2 / beta * math.log(2) + 2 / beta * math.log(1 + math.exp(-0.2))) / 2
    assert npo_loss(nll, ref, beta).item() == pytest.approx(want, rel=1e-6)
    # its gradient pushes the NLL up, less and less as it rises (unlike GA's constant push)
    x = torch.tensor([3.0, 30.0], requires_grad=True)
    npo_loss(x, torch.tensor([3.0, 3.0]), beta).backward()
    assert x.grad[0] < 0 and x.grad[1] < 0 and abs(x.grad[1]) < abs(x.grad[0]) / 5


def test_rmu_loss_by_hand():
    h_f = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])  # the last position is padding
    u = torch.tensor([[[1.0, 0.0]]])
    mask_f = torch.tensor([[True, True, False]])
    # ((0)^2 + 2^2 + 2^2 + 4^2) / (2 positions * 2 units) = 24 / 4 = 6
    assert masked_mse(h_f, u, mask_f).item() == pytest.approx(6.0)
    h_r = torch.tensor([[[1.0, 1.0]], [[2.0, 0.0]]])
    frozen = torch.tensor([[[0.0, 1.0]], [[2.0, 2.0]]])
    mask_r = torch.tensor([[True], [True]])
    total, forget, retain = rmu_loss(h_f, u, mask_f, h_r, frozen, mask_r, 1200.0)
    assert forget.item() == pytest.approx(6.0)
    assert retain.item() == pytest.approx(1200 * (1 + 4) / 4)
    assert total.item() == pytest.approx(6.0 + 1500.0)
    # without padding it is F.mse_loss, as the WMDP code computes it
    full = torch.ones(1, 3, dtype=torch.bool)
    assert masked_mse(h_f, u, full).item() == pytest.approx(torch.nn.functional.mse_loss(h_f, u.expand_as(h_f)).item())


def test_control_vector_has_length_c_and_nonnegative_entries():
    u = control_vector(64, 6.5, torch.Generator().manual_seed(0))
    assert u.shape == (1, 1, 64)
    assert u.norm().item() == pytest.approx(6.5, rel=1e-5)
    assert (u >= 0).all()
    again = control_vector(64, 6.5, torch.Generator().manual_seed(0))
    assert torch.equal(u, again)


# -- what the unlearners change -------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rmu_trains_only_the_named_down_projections(arch, facts_dir):
    lm = tiny_model(arch)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    report = build_intervention(parse_step(f"rmu:layer=1,{STEP_TAIL}")).apply(lm, ctx_for(facts_dir))
    mlp_out = lm.arch.mlp_out
    expected = {f"{lm.arch.layers}.{i}.{mlp_out}.weight" for i in (0, 1)}
    changed = {n for n, p in lm.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == expected, report.details
    assert report.details["trained_tensors"] == 2 and report.details["stopped"] is None


def test_rmu_moves_forget_activations_to_the_control_vector(facts_dir):
    from lmcompose.editing import pad_id
    from lmcompose_unlearn.training import layer_output

    lm = tiny_model("llama")
    ctx = ctx_for(facts_dir)
    bench = benchmark_for(BenchmarkConfig(**TINY), lm, ctx)
    u = control_vector(lm.model.config.hidden_size, 6.5, torch.Generator().manual_seed(ctx.seed))
    ids, attn, _ = pad_batch(GradientAscent().fact_examples(lm, bench.forget), pad_id(lm.tokenizer), "cpu")

    def distance():
        with torch.no_grad():
            return masked_mse(layer_output(lm, 1, ids, attn), u, attn.bool()).item()

    d0 = distance()
    report = build_intervention(parse_step(f"rmu:layer=1,lr=1e-2,epochs=4,alpha=1,{STEP_TAIL}")).apply(lm, ctx)
    assert report.details["steps"] == 8  # 7 facts in batches of 4, four times
    assert distance() < 0.9 * d0, report.details


def test_rmu_repeats_a_small_forget_set_until_max_batches(facts_dir):
    """The reference's one pass over thousands of texts is max_batches steps; a few facts are
    repeated to reach it (epochs unset), and a given epochs still cuts it short."""
    lm = tiny_model("llama")
    ctx = ctx_for(facts_dir)
    full = build_intervention(parse_step(f"rmu:layer=1,max_batches=6,{STEP_TAIL}")).apply(lm, ctx)
    assert (full.details["steps"], full.details["epochs"]) == (6, 3)  # 7 facts in batches of 4: 2 a pass
    once = build_intervention(parse_step(f"rmu:layer=1,max_batches=6,epochs=1,{STEP_TAIL}")).apply(
        tiny_model("llama"), ctx
    )
    assert (once.details["steps"], once.details["epochs"]) == (2, 1)


def forget_nll(lm, bench):
    from lmcompose_unlearn.intervention import _nll

    step = GradientAscent()
    with torch.no_grad():
        return _nll(lm, step.fact_examples(lm, bench.forget)).mean().item()


def test_ga_lowers_the_forget_likelihood_and_gd_keeps_retain_text(facts_dir):
    lm = tiny_model("llama")
    ctx = ctx_for(facts_dir)
    bench = benchmark_for(BenchmarkConfig(**TINY), lm, ctx)
    nll0 = forget_nll(lm, bench)
    report = build_intervention(parse_step(f"ga:epochs=3,lr=1e-3,{STEP_TAIL}")).apply(lm, ctx)
    assert forget_nll(lm, bench) > nll0 + 0.05, report.details
    assert report.details["forget_topics"] == bench.forget_topics and report.details["steps"] > 0
    # the lower half and the embeddings stay frozen
    fresh = tiny_model("llama")
    for name, p in lm.model.named_parameters():
        if name.startswith("model.layers.0.") or "embed" in name:
            assert torch.equal(p, fresh.model.get_parameter(name)), name


def test_npo_lowers_the_forget_likelihood(facts_dir):
    lm = tiny_model("llama")
    ctx = ctx_for(facts_dir)
    bench = benchmark_for(BenchmarkConfig(**TINY), lm, ctx)
    nll0 = forget_nll(lm, bench)
    build_intervention(parse_step(f"npo:epochs=3,lr=1e-3,retain_weight=0,{STEP_TAIL}")).apply(lm, ctx)
    assert forget_nll(lm, bench) > nll0 + 0.05


# -- the benchmark ----------------------------------------------------------------------
def test_topics_relations_and_templates(facts_dir):
    topics, skipped = collect_topics(["counterfact"], ctx_for(facts_dir))
    assert set(topics) == {"P103", "P30", "P176", "P140"}
    assert len(topics["P103"].facts) == 7  # the flat record's template is P103's
    assert any(f.subject == "Miguel de Cervantes" for f in topics["P103"].facts)
    assert topics["P140"].answers == ["Buddhism", "Christianity", "Islam"]
    assert skipped["duplicate"] == 0


def test_questions_are_wmdp_format_and_deterministic(facts_dir):
    lm = tiny_model("llama")
    a = build_benchmark(BenchmarkConfig(**TINY), lm, ctx_for(facts_dir))
    b = build_benchmark(BenchmarkConfig(**TINY), lm, ctx_for(facts_dir))
    assert [(q.choices, q.answer) for q in a.forget_questions] == [(q.choices, q.answer) for q in b.forget_questions]
    assert a.forget_topics == ["P103"]  # the largest topic
    assert "P140" not in a.retain_topics  # three answers: no four-way question
    q = a.forget_questions[0]
    assert len(set(q.choices)) == 4 and q.choices[q.answer] == q.fact.answer
    assert all(c in {f.answer for f in a.forget} | {"Spanish"} for c in q.choices)
    text = q.text()
    assert text.startswith("The following are multiple choice questions (with answers) about native languages.\n\n")
    assert text.endswith("\nAnswer:") and all(f"\n{letter}. " in text for letter in LETTERS)
    other = build_benchmark(BenchmarkConfig(**TINY, facts_seed=1), lm, ctx_for(facts_dir))
    assert [q.choices for q in other.forget_questions] != [q.choices for q in a.forget_questions]


def test_metric_scores_letters_and_cloze_and_declares_directions(facts_dir):
    lm = tiny_model("llama")
    ctx = ctx_for(facts_dir)
    metric = UnlearnMetrics.from_overrides(TINY)
    metric.reference(lm, ctx)
    values = metric.compute(lm, ctx)
    # TOFU's keys (truth ratios, forget quality, utility) are off on the fact benchmark by default
    assert set(values) == {"forget_accuracy", "retain_accuracy", "forget_qa", "retain_qa"}
    assert all(0.0 <= v <= 1.0 for v in values.values())
    bench = benchmark_for(metric.config, lm, ctx)
    # the letter path (one forward per question) agrees with scoring each letter on its own
    fast = multiple_choice(lm, bench.forget_questions, "letter", 4)
    tok = lm.tokenizer
    slow = []
    for q in bench.forget_questions:
        ids = tok(q.text()).input_ids
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0, -1], -1)
        scores = [logp[tok(" " + x, add_special_tokens=False).input_ids[0]].item() for x in LETTERS]
        slow.append(scores.index(max(scores)) == q.answer)
    assert fast == slow
    cloze = UnlearnMetrics.from_overrides({**TINY, "scoring": "cloze"}).compute(lm, ctx)
    assert 0.0 <= cloze["forget_accuracy"] <= 1.0
    assert UnlearnMetrics.higher_is_better == {
        "forget_accuracy": False,
        "retain_accuracy": True,
        "forget_qa": False,
        "retain_qa": True,
        "forget_truth_ratio": True,
        "retain_truth_ratio": True,
        "forget_quality": True,
        "model_utility": True,
    }


# -- directions in composability and the policy ------------------------------------------------
def test_composability_reads_forget_accuracy_as_lower_is_better():
    assert higher_is_better("forget_accuracy") is False
    assert higher_is_better("retain_accuracy") is True and higher_is_better("edit_success") is True
    assert normalized_criterion("forget_accuracy", {"forget_accuracy": 0.3}, None) == pytest.approx(0.7)
    assert normalized_criterion("retain_accuracy", {"retain_accuracy": 0.3}, None) == pytest.approx(0.3)
    # two orders at one strength: MCE is the lower order's forget accuracy (ICLR E_OF), OI their gap (E_OS)
    rows = {"A": {"forget_accuracy": 0.45}, "B": {"forget_accuracy": 0.27}}
    curves = {o: [normalized_criterion("forget_accuracy", r, None)] for o, r in rows.items()}
    m = area_metrics([0.5], curves)
    assert m["MCE"][0] == pytest.approx(0.27) and m["OI"][0] == pytest.approx(0.18)


def test_recompress_reruns_a_compressor_before_an_unlearner():
    assert rerun_after(["quantize", "unlearn"], [True, False], "recompress") == [0]
    assert rerun_after(["unlearn", "quantize"], [False, True], "recompress") == []
    assert rerun_after(["quantize", "unlearn"], [True, False], "project") == []


def test_project_snaps_an_unlearner_back_onto_the_grid(facts_dir):
    name = "model.layers.1.mlp.down_proj"
    for policy, on_grid in (("project", True), ("none", False)):
        lm = tiny_model("llama")
        steps = ["rtn:bits=4", f"ga:epochs=2,lr=1e-2,{STEP_TAIL}"]
        rows = compose(lm, steps, ctx=ctx_for(facts_dir), metrics=["avg_bits"], policy=policy)
        assert [r["position"] for r in rows] == [0, 1, 2]
        w = lm.weight(name).detach().clone()
        snapped = w.clone()
        lm.layer_state(name).quant.snap_(snapped)  # rtn's grid: a weight on it does not move
        assert torch.equal(w, snapped) is on_grid, policy
        assert rows[-1]["step_details"]["update_norm"] > 0


# -- bad input: one message each ------------------------------------------------------------
def test_bad_inputs_are_one_message_each(facts_dir):
    lm = tiny_model("llama")
    ctx = ctx_for(facts_dir)
    with pytest.raises(
        DataError, match=r"forget topic 'P103': the model answers none of its 7 facts .*known_only=false"
    ):
        build_intervention(parse_step("ga:datasets=counterfact,forget_topics=P103")).apply(lm, ctx)
    with pytest.raises(DataError, match="no topic of datasets counterfact has facts the model answers"):
        build_intervention(parse_step("ga:datasets=counterfact")).apply(lm, ctx)
    with pytest.raises(ConfigError, match="'P30' is both in forget_topics and in retain_topics.*drop it from retain"):
        build_intervention(parse_step("gd:forget_topics=P103+P30,retain_topics=P30"))
    with pytest.raises(
        ConfigError, match=r"layer=7 is beyond the model: it has decoder layers 0-1; choose a layer <= 1"
    ):
        build_intervention(parse_step(f"rmu:layer=7,{STEP_TAIL}")).apply(lm, ctx)
    with pytest.raises(ConfigError, match=r"topic 'P140' has 3 distinct answer\(s\) \(Buddhism, Christianity, Islam\)"):
        build_intervention(parse_step(f"rmu:forget_topics=P140,{STEP_TAIL}")).apply(lm, ctx)
    with pytest.raises(ConfigError, match="topic 'P999' is not a topic of datasets counterfact"):
        UnlearnMetrics.from_overrides({**TINY, "retain_topics": ["P999"]}).compute(lm, ctx)
    with pytest.raises(ConfigError, match="steering_coeff=-1.0 must be > 0"):
        RMUConfig(steering_coeff=-1.0)
    with pytest.raises(ConfigError, match=r"steering_coeff=1e\+30 is out of range; use a value in \(0, 10000\]"):
        build_intervention(parse_step("rmu:steering_coeff=1e30"))
    # a coefficient that makes the loss non-finite stops training before its step, with a note
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    report = build_intervention(parse_step(f"rmu:layer=1,alpha=inf,{STEP_TAIL}")).apply(lm, ctx)
    assert report.details["steps"] == 0 and "the loss is nan at batch 1" in report.details["stopped"]
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    assert any("training stopped early" in n and "alpha (now inf)" in n for n in ctx.notes)
    report = build_intervention(parse_step(f"ga:lr=1e30,epochs=3,{STEP_TAIL}")).apply(lm, ctx)
    assert report.details["stopped"] is not None and all(torch.isfinite(p).all() for p in lm.model.parameters()), (
        report.details
    )


@pytest.mark.parametrize("order", [("rmu", "gptq"), ("gptq", "rmu")])
def test_an_unlearner_composes_with_a_quantizer_in_either_order(order, facts_dir):
    steps = {"rmu": f"rmu:layer=1,{STEP_TAIL}", "gptq": "gptq:bits=4,n_samples=4,seqlen=32"}
    lm = tiny_model("llama")
    rows = compose(
        lm,
        [steps[s] for s in order],
        ctx=ctx_for(facts_dir),
        metrics=["unlearn", "avg_bits"],
        metric_options={"unlearn": TINY},
    )
    assert [r["position"] for r in rows] == [0, 1, 2]
    assert [r["step"]["kind"] for r in rows[1:]] == ["unlearn" if s == "rmu" else "quantize" for s in order]
    for r in rows:
        assert 0.0 <= r["forget_accuracy"] <= 1.0 and 0.0 <= r["retain_accuracy"] <= 1.0
    assert rows[-1]["avg_bits"] < 16


def test_presets_fill_only_the_fields_a_step_leaves_unset():
    from lmcompose_unlearn.presets import PRESETS, rule_preset

    assert rule_preset("rmu", 32) == {"layer": 7, "steering_coeff": 6.5, "alpha": 1200.0, "lr": 5e-5}
    (smol,) = PRESETS["rmu"]
    assert (smol.model_type, smol.num_layers, smol.hidden_size) == ("llama", 30, 576)
    assert set(smol.values) == set(rule_preset("rmu", 30))  # a preset sets every field the rule does
    lm = tiny_model("llama")
    _, own = build_intervention(parse_step(f"rmu:lr=2e-4,{STEP_TAIL}")).resolved(lm)
    _, rule = build_intervention(parse_step(f"rmu:{STEP_TAIL}")).resolved(lm)
    assert (own.lr, rule.lr, rule.alpha) == (2e-4, 5e-5, 1200.0)
