"""TOFU-style fictitious facts: made-up subjects, their facts and phrasings, the insertion
step, the retain model behind forget quality, and the unlearners on them (tiny models)."""

from __future__ import annotations

import json

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, parse_step
from lmcompose.errors import ConfigError
from lmcompose.models.tiny import tiny_model, tiny_tokenizer
from lmcompose.testing import InterventionConformance
from lmcompose_unlearn.config import BenchmarkConfig
from lmcompose_unlearn.facts import benchmark_for, collect_topics, known_facts
from lmcompose_unlearn.fictitious import made_up_names, relation_templates, retain_model
from lmcompose_unlearn.metric import RETAIN_REFERENCE, UnlearnMetrics, truth_items, truth_ratios
from unlearn_fixtures import write_facts

RELATIONS = "P103+P30+P176"
FICT = {"fictitious": 10, "fictitious_relations": RELATIONS, "insert_epochs": 20, "insert_lr": 1e-3}


def facts_with_templates(folder):
    """The fixture facts and two more P103 records in other templates (the most frequent
    template stays the prompt, the second is held out as the paraphrase)."""
    folder = write_facts(folder)
    path = folder / "counterfact" / "counterfact.json"
    records = json.loads(path.read_text())
    extra = [("{} spoke the language", "Victor Hugo", "French"), ("{} spoke the language", "Goethe", "German")]
    extra += [("{}, a native", "Ibsen", "Norwegian")]
    for i, (template, subject, answer) in enumerate(extra):
        rewrite = {"prompt": template, "relation_id": "P103", "subject": subject}
        rewrite |= {"target_new": {"str": "Latin"}, "target_true": {"str": answer}}
        records.append(
            {"case_id": 500 + i, "requested_rewrite": rewrite, "paraphrase_prompts": [], "neighborhood_prompts": []}
        )
    path.write_text(json.dumps(records))
    return folder


@pytest.fixture
def data(tmp_path):
    return facts_with_templates(tmp_path / "data")


def ctx_for(folder, tmp_path, seed=0):
    return Context(
        seed=seed, data_dir=folder, cache_dir=tmp_path / "cache", calibration_samples=4, calibration_seqlen=32
    )


# -- the made-up subjects and their facts --------------------------------------------------------
def test_made_up_names_are_new_to_the_tokenizer_and_seeded():
    tok = tiny_tokenizer()
    names = made_up_names(12, 0, tok, set())
    assert names == made_up_names(12, 0, tok, set()) and names != made_up_names(12, 1, tok, set())
    assert len(set(names)) == 12
    for name in names:
        assert all(len(tok(" " + w, add_special_tokens=False).input_ids) >= 2 for w in name.split())
    assert names[0] not in made_up_names(12, 0, tok, {names[0]})


def test_fictitious_benchmark_facts_questions_and_phrasings(data, tmp_path):
    lm = tiny_model("llama")
    bench = benchmark_for(BenchmarkConfig(**FICT), lm, ctx_for(data, tmp_path))
    topics, _ = collect_topics(["counterfact"], ctx_for(data, tmp_path))
    assert relation_templates(topics["P103"])[:3] == [
        "The mother tongue of {} is",
        "{} spoke the language",
        "{}, a native",
    ]
    assert bench.kind == "fictitious" and bench.forget_topics == ["P103", "P30", "P176"]
    subjects = {f.subject for f in bench.forget}
    assert len(subjects) == 1 and len(bench.forget) == 3 and len(bench.retain) == 27  # 10% of 10 subjects forgotten
    assert not subjects & {f.subject for f in bench.retain}
    assert all(f.answer in topics[f.topic].answers for f in [*bench.forget, *bench.retain])
    p103 = next(f for f in bench.forget if f.topic == "P103")
    (name,) = subjects
    assert p103.prompt == f"The mother tongue of {name} is" and p103.paraphrases == (f"{name} spoke the language",)
    # the insertion trains on every phrasing but the held-out paraphrase
    phrasings = {f.prompt for f in bench.insert_forget if f.topic == "P103"}
    assert phrasings == {f"The mother tongue of {name} is", f"{name}, a native"}
    assert len(bench.insert_forget) == 4 and len(bench.insert_retain) == 36
    q = bench.forget_questions[0]
    assert len(set(q.choices)) == 4 and q.choices[q.answer] == q.fact.answer
    # the truth ratio is asked in the held-out paraphrase, against the question's other options
    item = truth_items(bench.forget, bench.forget_questions)[0]
    assert item.prompt == q.fact.paraphrases[0] and set(item.perturbed) == set(q.choices) - {q.fact.answer}


def test_insertion_teaches_the_facts_and_unlearning_removes_them(data, tmp_path):
    lm = tiny_model("llama")
    ctx = ctx_for(data, tmp_path)
    bench = benchmark_for(BenchmarkConfig(**FICT), lm, ctx)
    assert sum(known_facts(lm, [*bench.forget, *bench.retain])) == 0  # made up: unknown to the model
    report = build_intervention(parse_step({"name": "fictitious", **FICT})).apply(lm, ctx)
    assert report.details["known_after"] >= 0.6 and report.details["n_inserted"] == 40, report.details
    assert all(known_facts(lm, bench.forget))
    base_fields = {k: v for k, v in FICT.items() if not k.startswith("insert")}
    ga = build_intervention(parse_step({"name": "ga", **base_fields, "epochs": 10, "lr": 1e-3, "frozen_layers": 0}))
    ga.apply(lm, ctx)
    assert not any(known_facts(lm, bench.forget))
    assert not [n for n in ctx.notes if "nothing to unlearn" in n]


def test_unlearning_facts_never_inserted_is_noted(data, tmp_path):
    lm = tiny_model("llama")
    ctx = ctx_for(data, tmp_path)
    build_intervention(parse_step({"name": "ga", "fictitious": 10, "fictitious_relations": RELATIONS})).apply(lm, ctx)
    assert any(
        "answers none of the 3 made-up forget facts" in n and "put the fictitious step first" in n for n in ctx.notes
    )


def test_forget_quality_against_the_retain_model(data, tmp_path):
    lm = tiny_model("llama")
    ctx = ctx_for(data, tmp_path)
    metric = UnlearnMetrics.from_overrides(FICT)
    metric.reference(lm, ctx)  # on the unmodified model: builds the retain model once
    assert ctx.references.computed == 1
    bench = benchmark_for(metric.config, lm, ctx)
    held = [r for r in ctx.references.records().values() if r["kind"] == RETAIN_REFERENCE]
    # the retain model: the unmodified model given the insertion of the retain facts only
    items = truth_items(bench.forget, bench.forget_questions)
    again = truth_ratios(retain_model(tiny_model("llama"), bench, metric.config, ctx.seed), items, 16)
    assert held[0]["value"] == pytest.approx(again, rel=1e-5)
    build_intervention(parse_step({"name": "fictitious", **FICT})).apply(lm, ctx)
    values = metric.compute(lm, ctx)
    assert set(values) == set(UnlearnMetrics.keys) and 0.0 <= values["forget_quality"] <= 1.0
    assert values["forget_qa"] == 1.0 and values["model_utility"] > 0
    assert ctx.references.computed == 1  # kept, not computed again


# -- bad input ------------------------------------------------------------------------------
def test_bad_fictitious_settings_are_one_message_each(data, tmp_path):
    lm = tiny_model("llama")
    ctx = ctx_for(data, tmp_path)
    with pytest.raises(ConfigError, match=r"forget_topics chooses topics .* made-up subjects .*drop forget_topics"):
        BenchmarkConfig(fictitious=10, forget_topics=["P103"])
    with pytest.raises(ConfigError, match=r"either the made-up subjects' or the files'; drop one"):
        BenchmarkConfig(fictitious=10, forget_qa=["x.json"])
    with pytest.raises(ConfigError, match=r"fictitious_relations: 'P999' is not a relation of datasets counterfact"):
        benchmark_for(BenchmarkConfig(fictitious=10, fictitious_relations=["P999"]), lm, ctx)
    with pytest.raises(ConfigError, match=r"topic 'P140' has 3 distinct answer\(s\)"):
        benchmark_for(BenchmarkConfig(fictitious=10, fictitious_relations=["P140"]), lm, ctx)
    with pytest.raises(ConfigError, match=r"leaves no subject to retain"):
        benchmark_for(BenchmarkConfig(fictitious=2, fictitious_forget=1.0), lm, ctx)
    with pytest.raises(ConfigError, match=r"insert_lr=0.0 must be > 0"):
        BenchmarkConfig(fictitious=10, insert_lr=0.0)


class TestFictitiousConformance(InterventionConformance):
    intervention = "fictitious"
    config = {"fictitious": 4, "fictitious_relations": RELATIONS, "insert_epochs": 1}

    @pytest.fixture(autouse=True)
    def _facts(self, tmp_path_factory):
        type(self).facts_dir = write_facts(tmp_path_factory.mktemp("facts"))

    def context(self, seed: int = 0) -> Context:
        return Context(seed=seed, data_dir=self.facts_dir, calibration_samples=4, calibration_seqlen=32)


def test_insertion_is_reproducible_from_the_seed(data, tmp_path):
    states = []
    for _ in range(2):
        lm = tiny_model("llama")
        build_intervention(parse_step({"name": "fictitious", **FICT, "insert_epochs": 2})).apply(
            lm, ctx_for(data, tmp_path)
        )
        states.append(torch.cat([p.detach().flatten() for p in lm.model.parameters()]))
    assert torch.equal(states[0], states[1])
