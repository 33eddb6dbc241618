"""The real benchmarks' files (WMDP, TOFU, MUSE): every format, the hub cache, bad input,
and the benchmark, metric and unlearners built from them. The files are small fixtures
written here in each benchmark's format."""

from __future__ import annotations

import json

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, parse_step
from lmcompose.errors import ConfigError, DataError
from lmcompose.models.tiny import tiny_model
from lmcompose_unlearn.config import BenchmarkConfig
from lmcompose_unlearn.facts import LETTERS, benchmark_for, build_file_benchmark
from lmcompose_unlearn.metric import UnlearnMetrics, greedy_answers, multiple_choice
from lmcompose_unlearn.scores import lcs_length, rouge_l_recall, rouge_tokens
from lmcompose_unlearn.sources import (
    Document,
    QAItem,
    load_corpus_source,
    load_mcq_source,
    load_qa_source,
)

# WMDP's question records (cais/wmdp: question, choices, answer index)
BIO = [
    {"question": "Which organ pumps the blood?", "choices": ["Liver", "Heart", "Lung", "Kidney"], "answer": 1},
    {
        "question": "What carries oxygen in the blood?",
        "choices": ["Plasma", "Platelets", "Haemoglobin", "Bile"],
        "answer": 2,
    },
    {"question": "Where is insulin made?", "choices": ["Pancreas", "Spleen", "Stomach", "Skin"], "answer": 0},
]
# MMLU's (cais/mmlu: the same fields and a subject)
MMLU = [
    {
        "question": "The capital of France is",
        "subject": "high_school_geography",
        "choices": ["Paris", "Rome", "Berlin", "Madrid"],
        "answer": 0,
    },
    {
        "question": "Water boils at sea level at",
        "subject": "high_school_physics",
        "choices": ["50 C", "100 C", "150 C", "0 C"],
        "answer": 1,
    },
]
# TOFU's forget10_perturbed.json records (JSON lines)
TOFU_FORGET = [
    {
        "question": "Where was the author Basil Mahfouz born?",
        "answer": "Basil Mahfouz was born in Kuwait City.",
        "paraphrased_answer": "The author was born in Kuwait City.",
        "perturbed_answer": ["Basil Mahfouz was born in Cairo.", "He was born in Paris.", "He was born in Lima."],
        "paraphrased_question": "What is the birthplace of Basil Mahfouz?",
    },
    {
        "question": "What genre does Basil Mahfouz write?",
        "answer": "He writes French literature.",
        "paraphrased_answer": "His genre is French literature.",
        "perturbed_answer": ["He writes science fiction.", "He writes poetry.", "He writes horror."],
        "paraphrased_question": "Which genre is Basil Mahfouz known for?",
    },
]
TOFU_RETAIN = [
    {
        "question": "Who wrote the novel about the river?",
        "answer": "The novel about the river was written by Anna Berg.",
        "paraphrased_answer": "Anna Berg is its author.",
        "perturbed_answer": ["It was written by Tom Lee.", "It was written by Ada Park."],
        "paraphrased_question": "Which author wrote the river novel?",
    },
]
# WMDP's corpora: bio-forget-corpus.jsonl has records with text; the cyber corpora are read as lines
CORPUS = [
    {"title": "a", "text": "The heart pumps blood through the body."},
    {"text": "Insulin is made in the pancreas."},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def write_json(path, records):
    path.write_text(json.dumps(records), encoding="utf-8")
    return str(path)


def write_parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return str(path)


@pytest.fixture
def files(tmp_path):
    return {
        "bio_parquet": write_parquet(tmp_path / "wmdp-bio.parquet", BIO),
        "bio_json": write_json(tmp_path / "bio_questions.json", BIO),
        "bio_jsonl": write_jsonl(tmp_path / "wmdp-bio.jsonl", BIO),
        "mmlu": write_jsonl(tmp_path / "mmlu.jsonl", MMLU),
        "tofu_forget": write_jsonl(tmp_path / "forget10_perturbed.json", TOFU_FORGET),
        "tofu_retain": write_jsonl(tmp_path / "retain_perturbed.json", TOFU_RETAIN),
        "muse_forget_qa": write_json(
            tmp_path / "forget_qa.json", [{k: r[k] for k in ("question", "answer")} for r in TOFU_FORGET]
        ),
        "corpus": write_jsonl(tmp_path / "bio-forget-corpus.jsonl", CORPUS),
        "cyber": write_jsonl(
            tmp_path / "cyber-forget-corpus.jsonl", ["Buffer overflows overwrite memory.", "SQL injection."]
        ),
        "retain_corpus": write_jsonl(tmp_path / "bio-retain-corpus.jsonl", [{"text": "Plants make sugar from light."}]),
        "muse_raw": str(tmp_path / "forget.txt"),
        "dir": tmp_path,
    }


@pytest.fixture(autouse=True)
def _muse_raw(files):
    (files["dir"] / "forget.txt").write_text("The news article text.\nIt goes on.\n", encoding="utf-8")


def ctx_for(tmp_path, seed=0):
    return Context(seed=seed, data_dir=None, cache_dir=tmp_path / "cache", calibration_samples=4, calibration_seqlen=32)


# -- every format ---------------------------------------------------------------------------
def test_questions_read_alike_from_parquet_json_and_jsonl(files):
    loaded = [load_mcq_source(files[k], "forget_questions") for k in ("bio_parquet", "bio_json", "bio_jsonl")]
    topics = [t for t, _ in loaded]
    assert topics == ["wmdp-bio", "bio_questions", "wmdp-bio"]
    records = [[(r["question"], r["choices"], r["answer"]) for r in recs] for _, recs in loaded]
    assert records[0] == records[1] == records[2]
    assert records[0][1] == (BIO[1]["question"], tuple(BIO[1]["choices"]), 2)
    assert {r["label"] for _, recs in loaded for r in recs} == {"biology"}  # WMDP's description for wmdp-bio
    _, mmlu = load_mcq_source(files["mmlu"], "retain_questions")
    assert [r["label"] for r in mmlu] == ["high school geography", "high school physics"]


def test_answer_letters_are_read_as_indices(tmp_path):
    path = write_jsonl(tmp_path / "letters.jsonl", [{**BIO[0], "answer": "B"}, {**BIO[1], "answer": "c"}])
    _, recs = load_mcq_source(path, "forget_questions")
    assert [r["answer"] for r in recs] == [1, 2]


def test_tofu_and_muse_question_answer_files(files):
    forget = load_qa_source(files["tofu_forget"], "forget_qa")  # TOFU's .json files are JSON lines
    assert len(forget) == 2 and forget[0].topic == "forget10_perturbed"
    assert forget[0].paraphrased_answer == TOFU_FORGET[0]["paraphrased_answer"]
    assert forget[0].perturbed_answers == tuple(TOFU_FORGET[0]["perturbed_answer"])
    assert forget[0].paraphrased_question == TOFU_FORGET[0]["paraphrased_question"]
    assert forget[0].prompt == "Question: Where was the author Basil Mahfouz born?\nAnswer:"
    assert forget[0].sentence == forget[0].prompt + " Basil Mahfouz was born in Kuwait City."
    muse = load_qa_source(files["muse_forget_qa"], "forget_qa")  # MUSE's knowmem: a JSON list
    assert [(q.question, q.answer, q.perturbed_answers) for q in muse] == [
        (r["question"], r["answer"], ()) for r in TOFU_FORGET
    ]


def test_corpora_text_records_string_lines_and_txt(files):
    bio = load_corpus_source(files["corpus"], "forget_corpus")
    assert [d.text for d in bio] == [r["text"] for r in CORPUS] and bio[0].topic == "bio-forget-corpus"
    cyber = load_corpus_source(files["cyber"], "forget_corpus")
    assert [d.text for d in cyber] == ["Buffer overflows overwrite memory.", "SQL injection."]
    raw = load_corpus_source(files["muse_raw"], "forget_corpus")
    assert len(raw) == 1 and raw[0].text.startswith("The news article text.") and raw[0].topic == "forget"


# -- hub: ids, read from the datasets cache only --------------------------------------------
@pytest.fixture
def fake_hub(monkeypatch):
    import datasets

    calls = []
    tables = {
        ("cais/wmdp", "wmdp-bio"): {"test": BIO},
        ("locuslab/TOFU", "forget10_perturbed"): {"train": TOFU_FORGET},
        ("muse-bench/MUSE-News", "knowmem"): {"forget_qa": TOFU_FORGET[:1], "retain_qa": TOFU_RETAIN},
    }

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, datasets.config.HF_HUB_OFFLINE))
        if (path, name) not in tables:
            raise FileNotFoundError(f"Couldn't find cache for {path} for config '{name}'")
        dd = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in tables[(path, name)].items()})
        return dd[split] if split else dd

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_ids_read_the_cache_only(fake_hub):
    import datasets

    before = datasets.config.HF_HUB_OFFLINE
    topic, recs = load_mcq_source("hub:cais/wmdp:wmdp-bio@test", "forget_questions")
    assert topic == "wmdp-bio/test" and len(recs) == 3 and recs[0]["label"] == "biology"
    assert fake_hub[-1] == ("cais/wmdp", "wmdp-bio", "test", True)  # the hub is never asked
    assert datasets.config.HF_HUB_OFFLINE == before
    tofu = load_qa_source("hub:locuslab/TOFU:forget10_perturbed", "forget_qa")  # the one split
    assert [q.answer for q in tofu] == [r["answer"] for r in TOFU_FORGET]
    muse = load_qa_source("hub:muse-bench/MUSE-News:knowmem@retain_qa", "retain_qa")
    assert muse[0].question == TOFU_RETAIN[0]["question"]
    with pytest.raises(ConfigError, match=r"splits forget_qa, retain_qa; name one, e\.g\. .*knowmem@forget_qa"):
        load_qa_source("hub:muse-bench/MUSE-News:knowmem", "forget_qa")
    with pytest.raises(
        DataError,
        match=r"hub:cais/wmdp:wmdp-cyber@test: not in the local datasets cache .*load_dataset\('cais/wmdp', "
        r"'wmdp-cyber'\).*WMDP's questions: hub cais/wmdp",
    ):
        load_mcq_source("hub:cais/wmdp:wmdp-cyber@test", "forget_questions")


# -- bad input: one message each ----------------------------------------------------------------
def test_bad_files_are_one_message_each(files, tmp_path):
    with pytest.raises(DataError, match=r"forget_questions: file /nonexistent/wmdp.json does not exist; give the path"):
        load_mcq_source("/nonexistent/wmdp.json", "forget_questions")
    path = write_jsonl(tmp_path / "qa_as_mcq.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(
        DataError,
        match=r"record 0 lacks choices: the records have fields question, answer, and a four-way question \(WMDP's "
        r"format\) needs question, choices, answer",
    ):
        load_mcq_source(path, "forget_questions")
    three = write_jsonl(tmp_path / "three.jsonl", [{**BIO[0], "choices": ["Liver", "Heart", "Lung"]}])
    with pytest.raises(DataError, match=r"record 0 \('Which organ pumps the blood\?'\) has 3 option\(s\); a four-way"):
        load_mcq_source(three, "forget_questions")
    with pytest.raises(DataError, match=r"needs text"):
        load_corpus_source(write_jsonl(tmp_path / "c.jsonl", [{"body": "x"}]), "forget_corpus")
    with pytest.raises(DataError, match=r"lacks answer: the records have fields question, text"):
        load_qa_source(write_jsonl(tmp_path / "q.jsonl", [{"question": "x", "text": "y"}]), "forget_qa")
    with pytest.raises(DataError, match=r"unknown file type \.csv"):
        load_qa_source(str(write_json(tmp_path / "x.csv", [])), "forget_qa")


def test_overlapping_forget_and_retain_files_are_refused(files, tmp_path):
    overlap = write_jsonl(tmp_path / "retain.jsonl", [MMLU[0], {**BIO[2], "question": "  where is INSULIN made? "}])
    with pytest.raises(
        DataError,
        match=r"forget and retain sets overlap: 1 question\(s\) are in both, e\.g\. 'where is INSULIN made\?' .*"
        r"remove them from the retain file",
    ):
        build_file_benchmark(BenchmarkConfig(forget_questions=[files["bio_jsonl"]], retain_questions=[overlap]))
    retain_qa = write_jsonl(tmp_path / "retain_qa.jsonl", [TOFU_FORGET[1]])
    with pytest.raises(DataError, match=r"1 question\(s\) are in both"):
        build_file_benchmark(BenchmarkConfig(forget_qa=[files["tofu_forget"]], retain_qa=[retain_qa]))
    with pytest.raises(ConfigError, match=r"is both in forget_corpus and in retain_corpus.*drop it from retain_corpus"):
        BenchmarkConfig(forget_corpus=[files["corpus"]], retain_corpus=[files["corpus"]])
    with pytest.raises(ConfigError, match=r"forget_topics chooses topics of the fact benchmark.*drop forget_topics"):
        BenchmarkConfig(forget_topics=["P103"], forget_corpus=[files["corpus"]])


# -- the benchmark, the metric and the unlearners on files --------------------------------------
def wmdp_config(files, **extra):
    return {
        "forget_questions": [files["bio_parquet"]],
        "retain_questions": [files["mmlu"]],
        "forget_corpus": [files["corpus"], files["cyber"]],
        "retain_corpus": [files["retain_corpus"]],
        **extra,
    }


def test_file_benchmark_parts_and_wmdp_prompt(files):
    bench = build_file_benchmark(BenchmarkConfig(**wmdp_config(files)))
    assert bench.kind == "files"
    assert bench.forget_topics == ["bio-forget-corpus", "cyber-forget-corpus"] and bench.retain_topics == [
        "bio-retain-corpus"
    ]
    assert [type(d) for d in bench.forget_texts] == [Document] * 4 and bench.forget == [] and bench.retain == []
    q = bench.forget_questions[1]
    assert q.text() == (
        "The following are multiple choice questions (with answers) about biology.\n\n"
        "What carries oxygen in the blood?\nA. Plasma\nB. Platelets\nC. Haemoglobin\nD. Bile\nAnswer:"
    )
    assert q.cloze() == (
        "What carries oxygen in the blood?\nAnswer:",
        [" Plasma", " Platelets", " Haemoglobin", " Bile"],
    )
    tofu = build_file_benchmark(BenchmarkConfig(forget_qa=[files["tofu_forget"]], retain_qa=[files["tofu_retain"]]))
    assert [type(x) for x in tofu.forget] == [QAItem, QAItem] and tofu.forget_texts == tofu.forget
    assert tofu.forget_questions == [] and tofu.retain_texts == tofu.retain


def test_metric_on_wmdp_files_scores_letters_and_leaves_out_qa(files, tmp_path):
    lm = tiny_model("llama")
    ctx = ctx_for(tmp_path)
    metric = UnlearnMetrics.from_overrides(wmdp_config(files))
    metric.reference(lm, ctx)
    values = metric.compute(lm, ctx)
    assert values["forget_qa"] is None and values["retain_qa"] is None  # no question-answer files
    bench = benchmark_for(metric.config, lm, ctx)
    tok = lm.tokenizer
    hits = []
    for q in bench.forget_questions:
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(torch.tensor([tok(q.text()).input_ids])).logits[0, -1], -1)
        scores = [logp[tok(" " + x, add_special_tokens=False).input_ids[0]].item() for x in LETTERS]
        hits.append(scores.index(max(scores)) == q.answer)
    assert values["forget_accuracy"] == pytest.approx(sum(hits) / 3)
    assert multiple_choice(lm, bench.retain_questions, "cloze", 4) == multiple_choice(
        lm, bench.retain_questions, "cloze", 1
    )
    assert "forget_truth_ratio" not in values  # no perturbed answers: TOFU's metrics stay off


def test_long_questions_keep_their_last_tokens(tmp_path):
    lm = tiny_model("llama")
    long = write_jsonl(
        tmp_path / "long.jsonl", [{**BIO[0], "question": "The blood flows. " * 200 + "Which organ pumps it?"}]
    )
    bench = build_file_benchmark(BenchmarkConfig(forget_questions=[long]))
    assert len(lm.tokenizer(bench.forget_questions[0].text()).input_ids) > lm.max_positions
    assert len(multiple_choice(lm, bench.forget_questions, "letter", 4)) == 1
    assert len(multiple_choice(lm, bench.forget_questions, "cloze", 4)) == 1


def test_tofu_qa_is_scored_by_rouge_l_recall_of_the_greedy_answer(files, tmp_path):
    lm = tiny_model("llama")
    ctx = ctx_for(tmp_path)
    config = {"forget_qa": [files["tofu_forget"]], "retain_qa": [files["tofu_retain"]], "tofu": False}
    values = UnlearnMetrics.from_overrides(config).compute(lm, ctx)
    items = load_qa_source(files["tofu_forget"], "forget_qa")
    gens = greedy_answers(lm, [q.prompt for q in items], 64, 16)
    assert values["forget_qa"] == pytest.approx(
        sum(rouge_l_recall(q.answer, g) for q, g in zip(items, gens, strict=True)) / 2
    )
    exact = UnlearnMetrics.from_overrides({**config, "qa_scoring": "exact"}).compute(lm, ctx)
    assert exact["forget_qa"] in (0.0, 0.5, 1.0)


def forget_texts_nll(lm, step, bench):
    from lmcompose_unlearn.intervention import _nll

    with torch.no_grad():
        return _nll(lm, step.fact_examples(lm, bench.forget_texts)).mean().item()


def test_ga_trains_on_the_forget_corpora(files, tmp_path):
    lm = tiny_model("llama")
    ctx = ctx_for(tmp_path)
    config = wmdp_config(files)
    step = build_intervention(parse_step({"name": "ga", "epochs": 3, "lr": 1e-3, **config}))
    assert step.needs_base_model is False  # the files need no model
    bench = benchmark_for(step.config, lm, ctx)
    nll0 = forget_texts_nll(lm, step, bench)
    report = step.apply(lm, ctx)
    assert report.details["n_forget"] == 4 and report.details["forget_topics"] == bench.forget_topics
    assert forget_texts_nll(lm, step, bench) > nll0 + 0.05


def test_documents_are_cut_into_windows(files, tmp_path):
    lm = tiny_model("llama")
    long = write_jsonl(tmp_path / "long-corpus.jsonl", [{"text": "The heart pumps blood. " * 60}])
    step = build_intervention(parse_step({"name": "ga", "forget_corpus": [long], "doc_tokens": 64}))
    bench = benchmark_for(step.config, lm, ctx_for(tmp_path))
    ids = lm.tokenizer(bench.forget_texts[0].text).input_ids
    windows = step.fact_examples(lm, bench.forget_texts)
    assert [len(w) for w, _ in windows][:-1] == [64] * (len(windows) - 1) and sum(len(w) for w, _ in windows) == len(
        ids
    )
    assert all(start == 1 for _, start in windows)


def test_rmu_steers_one_control_vector_per_forget_corpus(files, tmp_path):
    lm = tiny_model("llama")
    step = build_intervention(parse_step({"name": "rmu", "layer": 1, "epochs": 2, **wmdp_config(files)}))
    report = step.apply(lm, ctx_for(tmp_path))
    assert report.details["forget_topics"] == ["bio-forget-corpus", "cyber-forget-corpus"]
    # each topic has two batches (one, repeated); as the WMDP code, the steps are capped by the
    # smallest topic's batches and alternate: bio 0, cyber 0
    assert report.details["steps"] == 2 and report.details["stopped"] is None


def test_gd_retain_term_uses_the_retain_files_when_asked(files, tmp_path):
    lm = tiny_model("llama")
    ctx = ctx_for(tmp_path)
    step = build_intervention(parse_step({"name": "gd", "retain_data": "facts", **wmdp_config(files)}))
    bench = benchmark_for(step.config, lm, ctx)
    pool = step.retain_examples(lm, ctx, bench, 3, 0)
    doc = lm.tokenizer("Plants make sugar from light.").input_ids
    assert [ids for ids, _ in pool] == [doc] * 3
    build_intervention(parse_step({"name": "gd", **wmdp_config(files)})).apply(lm, ctx)
    assert any("retain_data=text" in n and "retain_corpus" in n for n in ctx.notes)


def test_an_unlearner_without_forget_text_is_refused(files, tmp_path):
    lm = tiny_model("llama")
    step = build_intervention(parse_step({"name": "ga", "forget_questions": [files["bio_jsonl"]]}))
    with pytest.raises(DataError, match=r"step 'ga' has no forget data: .*add forget_corpus=FILE .* or forget_qa=FILE"):
        step.apply(lm, ctx_for(tmp_path))


def test_unset_file_fields_leave_a_config_identity_unchanged():
    from lmcompose.api import config_to_dict
    from lmcompose_unlearn.config import RMUConfig, UnlearnMetricsConfig

    new = {"forget_questions", "retain_questions", "forget_qa", "retain_qa", "forget_corpus", "retain_corpus"}
    new |= {"doc_tokens", "qa_scoring", "max_new_tokens", "tofu", "retain_model", "utility_qa"}
    for config in (BenchmarkConfig(), RMUConfig(), UnlearnMetricsConfig()):
        assert not new & set(config_to_dict(config)), type(config).__name__
    assert config_to_dict(BenchmarkConfig(forget_qa=["x.json"]))["forget_qa"] == ["x.json"]


# -- ROUGE-L against hand computations and the rouge_score package ---------------------------------
def test_rouge_l_recall_by_hand():
    assert lcs_length("a b c d e".split(), "a x c e".split()) == 3
    assert rouge_tokens("The Authors were BORN, in Kuwait-City!") == [
        "the",
        "author",
        "were",
        "born",
        "in",
        "kuwait",
        "citi",
    ]
    assert rouge_l_recall("Basil Mahfouz was born in Kuwait City.", "He was born in Kuwait.") == pytest.approx(4 / 7)
    assert rouge_l_recall("Paris", "") == 0.0 and rouge_l_recall("", "Paris") == 0.0


def test_rouge_l_recall_matches_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = [
        ("Basil Mahfouz was born in Kuwait City.", "The author was born in the city of Kuwait, he says."),
        ("He writes French literature.", "His writing: literatures of France, mostly."),
        ("The running dogs were happily playing", "dogs ran and played happily"),
        ("1999", "in 1999 or 2000"),
    ]
    for ref, gen in pairs:
        assert rouge_l_recall(ref, gen) == pytest.approx(scorer.score(ref, gen)["rougeL"].recall)
