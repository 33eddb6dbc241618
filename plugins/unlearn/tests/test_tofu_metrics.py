"""TOFU's metrics: the truth ratio and its forget and retain aggregations, forget quality
against a retain model (kept as a run reference), model utility; by hand and on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from lmcompose.api import Context
from lmcompose.models.tiny import tiny_model
from lmcompose_unlearn.facts import benchmark_for
from lmcompose_unlearn.metric import RETAIN_REFERENCE, UnlearnMetrics, greedy_answers, rouge_recalls, truth_items
from lmcompose_unlearn.scores import (
    forget_quality,
    forget_truth_ratio,
    harmonic_mean,
    retain_truth_ratio,
    rouge_l_recall,
    truth_ratio,
)
from lmcompose_unlearn.sources import load_qa_source
from test_sources import TOFU_FORGET, TOFU_RETAIN, write_jsonl
from unlearn_fixtures import write_facts

WORLD = [
    {"question": "What is the capital of France?", "answer": "Paris", "perturbed_answer": ["Rome", "Madrid", "Lima"]},
    {"question": "Which planet is red?", "answer": "Mars", "perturbed_answer": ["Venus", "Saturn", "Jupiter"]},
]


def ctx_for(tmp_path, seed=0):
    return Context(seed=seed, cache_dir=tmp_path / "cache", calibration_samples=4, calibration_seqlen=32)


@pytest.fixture
def tofu(tmp_path):
    return {
        "forget_qa": [write_jsonl(tmp_path / "forget10_perturbed.json", TOFU_FORGET)],
        "retain_qa": [write_jsonl(tmp_path / "retain_perturbed.json", TOFU_RETAIN)],
    }


# -- by hand --------------------------------------------------------------------------------
def test_truth_ratio_and_its_aggregations_by_hand():
    # NLLs per token: paraphrased 1.0, perturbed 2.0 and 4.0 -> R = exp(1 - 3) = e^-2
    assert truth_ratio(1.0, [2.0, 4.0]) == pytest.approx(math.exp(-2))
    # the perturbed answers' NLLs are averaged before the exponential (a geometric mean of
    # their probabilities), as TOFU's and open-unlearning's code do
    assert truth_ratio(1.0, [2.0, 4.0]) != pytest.approx((math.exp(-2) + math.exp(-4)) / 2 / math.exp(-1))
    rs = [0.25, 1.0, 4.0]
    assert forget_truth_ratio(rs) == pytest.approx((0.25 + 1.0 + 0.25) / 3)  # mean min(R, 1/R)
    assert retain_truth_ratio(rs) == pytest.approx((0.75 + 0.0 + 0.0) / 3)  # mean max(0, 1 - R)
    assert forget_truth_ratio([]) is None and retain_truth_ratio([]) is None
    with pytest.raises(ValueError, match="at least one perturbed answer"):
        truth_ratio(1.0, [])


def test_forget_quality_is_the_ks_p_value_and_utility_the_harmonic_mean():
    from scipy.stats import ks_2samp

    a, b = [0.1, 0.2, 0.3, 0.4, 0.5], [0.6, 0.7, 0.8, 0.9, 1.1]
    assert forget_quality(a, b) == pytest.approx(ks_2samp(a, b).pvalue)
    assert forget_quality(a, a) == pytest.approx(1.0)
    # the test reads R or 1/R alike (TOFU compares P_para/P_pert, open-unlearning its inverse)
    assert forget_quality(a, b) == pytest.approx(forget_quality([1 / x for x in a], [1 / x for x in b]))
    assert forget_quality(a, []) is None
    assert harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert harmonic_mean([0.5, 0.0]) == 0.0 and harmonic_mean([]) is None


# -- on a tiny model ----------------------------------------------------------------------------
def answer_nll(lm, prompt, answer):
    """Mean token NLL of ' answer' after prompt, by one plain forward pass."""
    tok = lm.tokenizer
    p = tok(prompt).input_ids
    a = tok(" " + answer.strip(), add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([p + a])).logits[0].float(), -1)
    return -sum(logp[len(p) - 1 + i, t].item() for i, t in enumerate(a)) / len(a)


def hand_ratios(lm, items):
    out = []
    for it in items:
        para = answer_nll(lm, it.prompt, it.paraphrased_answer or it.answer)
        pert = [answer_nll(lm, it.prompt, p) for p in it.perturbed_answers]
        out.append(math.exp(para - sum(pert) / len(pert)))
    return out


def test_tofu_metrics_on_tofu_files_match_a_hand_computation(tofu, tmp_path):
    lm = tiny_model("llama")
    ctx = ctx_for(tmp_path)
    metric = UnlearnMetrics.from_overrides(tofu)
    metric.reference(lm, ctx)
    values = metric.compute(lm, ctx)
    forget = load_qa_source(tofu["forget_qa"][0], "forget_qa")
    retain = load_qa_source(tofu["retain_qa"][0], "retain_qa")
    f_rs, r_rs = hand_ratios(lm, forget), hand_ratios(lm, retain)
    assert values["forget_truth_ratio"] == pytest.approx(forget_truth_ratio(f_rs), rel=1e-4)
    assert values["retain_truth_ratio"] == pytest.approx(retain_truth_ratio(r_rs), rel=1e-4)
    assert values["forget_quality"] is None  # no retain model named
    # utility: the retain set's probability (length-normalised), ROUGE-L recall and truth ratio
    prob = sum(math.exp(-answer_nll(lm, it.prompt, it.answer)) for it in retain) / len(retain)
    gens = greedy_answers(lm, [it.prompt for it in retain], 64, 16)
    rouge = sum(rouge_l_recall(it.answer, g) for it, g in zip(retain, gens, strict=True)) / len(retain)
    parts = [prob, rouge, retain_truth_ratio(r_rs)]
    assert values["model_utility"] == pytest.approx(harmonic_mean(parts), rel=1e-4)


def test_utility_files_enter_as_tofus_world_facts(tofu, tmp_path):
    lm = tiny_model("llama")
    world = write_jsonl(tmp_path / "world_facts_perturbed.json", WORLD)
    metric = UnlearnMetrics.from_overrides({**tofu, "utility_qa": [world]})
    values = metric.compute(lm, ctx_for(tmp_path))
    retain = load_qa_source(tofu["retain_qa"][0], "retain_qa")
    items = load_qa_source(world, "utility_qa")
    r_rs = hand_ratios(lm, retain)
    gens = greedy_answers(lm, [it.prompt for it in retain], 64, 16)
    parts = [
        sum(math.exp(-answer_nll(lm, it.prompt, it.answer)) for it in retain) / len(retain),
        sum(rouge_l_recall(it.answer, g) for it, g in zip(retain, gens, strict=True)) / len(retain),
        retain_truth_ratio(r_rs),
    ]
    norm = []
    for it in items:  # the answer's probability normalised over it and its perturbed answers
        p = [math.exp(-answer_nll(lm, it.prompt, a)) for a in (it.answer, *it.perturbed_answers)]
        norm.append(p[0] / sum(p))
    w_gens = greedy_answers(lm, [it.prompt for it in items], 64, 16)
    parts += [
        sum(norm) / len(norm),
        sum(rouge_l_recall(it.answer, g) for it, g in zip(items, w_gens, strict=True)) / len(items),
        retain_truth_ratio(hand_ratios(lm, items)),  # no paraphrase: the answer against the perturbed ones
    ]
    assert values["model_utility"] == pytest.approx(harmonic_mean(parts), rel=1e-4)


def test_forget_quality_against_a_retain_model_kept_as_a_reference(tofu, tmp_path, monkeypatch):
    from lmcompose.models import loading

    lm = tiny_model("llama")
    folder = tmp_path / "retain-model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    loads = []
    real = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    ctx = ctx_for(tmp_path)
    metric = UnlearnMetrics.from_overrides({**tofu, "retain_model": str(folder)})
    metric.reference(lm, ctx)
    values = metric.compute(lm, ctx)
    # the same weights: the truth ratios are the retain model's, the KS test cannot tell them apart
    assert values["forget_quality"] == pytest.approx(1.0)
    # a model that differs (trained further) is compared against the same kept reference
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    moved = metric.compute(lm, ctx)
    assert 0.0 <= moved["forget_quality"] <= 1.0
    assert len(loads) == 1 and ctx.references.computed == 1  # loaded once, kept in ctx.references
    items = truth_items(benchmark_for(metric.config, lm, ctx).forget, [])
    held = [r for r in ctx.references.records().values() if r["kind"] == RETAIN_REFERENCE]
    assert (
        len(held) == 1
        and len(held[0]["value"]) == len(items)
        and json.loads(held[0]["content"])[:2] == ["model", str(folder)]
    )


def test_tofu_metrics_on_the_fact_benchmark_when_asked(tmp_path):
    facts = write_facts(tmp_path / "data")
    lm = tiny_model("llama")
    ctx = Context(seed=0, data_dir=facts, cache_dir=tmp_path / "cache", calibration_samples=4, calibration_seqlen=32)
    config = {"datasets": ["counterfact"], "known_only": False}
    assert "forget_truth_ratio" not in UnlearnMetrics.from_overrides(config).compute(lm, ctx)
    metric = UnlearnMetrics.from_overrides({**config, "tofu": True})
    values = metric.compute(lm, ctx)
    bench = benchmark_for(metric.config, lm, ctx)
    items = truth_items(bench.forget, bench.forget_questions)
    q = bench.forget_questions[0]
    assert items[0].answer == q.fact.answer and set(items[0].perturbed) == set(q.choices) - {q.fact.answer}
    rs = []
    for it in items:
        para = answer_nll(lm, it.prompt, it.answer)
        rs.append(math.exp(para - sum(answer_nll(lm, it.prompt, p) for p in it.perturbed) / 3))
    assert values["forget_truth_ratio"] == pytest.approx(forget_truth_ratio(rs), rel=1e-4)
    assert 0.0 <= values["model_utility"] <= 1.0 and values["forget_quality"] is None
    # a fact's greedy answer for ROUGE-L is clipped to the answer's token length
    tok = lm.tokenizer
    f = bench.retain[0]
    n = len(tok(" " + f.answer, add_special_tokens=False).input_ids)
    with torch.no_grad():
        out = lm.model.generate(torch.tensor([tok(f.prompt).input_ids]), max_new_tokens=n, do_sample=False)
    text = tok.decode(out[0, len(tok(f.prompt).input_ids) :], skip_special_tokens=True)
    assert rouge_recalls(lm, [f], 64, 4) == [pytest.approx(rouge_l_recall(f.answer, text))]
