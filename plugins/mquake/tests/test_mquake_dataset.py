from __future__ import annotations

import json

import pytest
from lmcompose.compose import load_edits
from lmcompose.errors import DataError

#: short demonstrations in the format of MQuAKE's prompt files (the real ones outrun a tiny
#: model's 256 positions)
STANDARD = "Q: What is the capital of France? A: Paris\nQ: Who wrote Hamlet? A: William Shakespeare"
COT = "Question: Who wrote Hamlet?\nThoughts: Hamlet was written by William Shakespeare.\nAnswer: William Shakespeare"


def write_prompts(folder):
    """A data folder holding mquake/prompts/ with short demonstrations."""
    prompts = folder / "mquake" / "prompts"
    prompts.mkdir(parents=True)
    (prompts / "multihop-prompts.txt").write_text(STANDARD)
    (prompts / "multihop-cot-prompts.txt").write_text(COT)
    return folder


def by_case(recs):
    out = {}
    for r in recs:
        out.setdefault(r.source["id"], []).append(r)
    return out


def test_mquake_hard_has_429_cases_of_4_edits(shared_data):
    recs = load_edits("mquake", source=shared_data / "mquake/MQuAKE-hard.json", seed=None)
    cases = by_case(recs)
    assert len(cases) == 429 and len(recs) == 1716
    assert all(len(v) == 4 for v in cases.values())
    first = cases[7417]
    assert first[0].prompt == "Hey Jude was performed by" and first[0].target_new == "Madonna"
    assert first[0].target_true == "The Beatles" and first[0].rephrases == ["Who performed Hey Jude?"]
    mh = first[0].multi_hop
    assert mh.new_answer == "Arabic" and mh.answer == "English" and len(mh.questions) == 3
    assert "Arabic language" in mh.new_answer_aliases
    assert all(r.multi_hop is None for r in first[1:])


def test_akew_subset_has_354_cases(shared_data):
    recs = load_edits("mquake", source=shared_data / "mquake/AKEW-MQuAKE-CF.json", seed=None)
    cases = by_case(recs)
    assert len(cases) == 354 and len(recs) == 436
    sizes = [len(v) for v in cases.values()]
    assert (sizes.count(1), sizes.count(2), sizes.count(3)) == (277, 72, 5)
    assert cases[1][0].multi_hop.new_answer == "Kolinda Grabar-Kitarović"


def test_limit_counts_cases_and_keeps_their_edits_together(shared_data):
    recs = load_edits("mquake", source=shared_data / "mquake/MQuAKE-hard.json", limit=3, seed=1)
    assert len(by_case(recs)) == 3 and len(recs) == 12


def test_sample_offline_and_unchanged_hops_are_locality(offline_without_data):
    recs = load_edits("mquake", seed=None)
    cases = by_case(recs)
    assert len(cases) == 3 and len(cases[2]) == 2
    # case 3 edits the second hop only: the first hop (Atacama -> Chile) is unchanged
    loc = cases[3][0].locality
    assert [(lp.prompt, lp.answer) for lp in loc] == [("The Atacama Desert is located in", "Chile")]


def test_multi_hop_accuracy_runs_on_mquake(offline_without_data, tmp_path):
    from lmcompose.api import Context
    from lmcompose.metrics.edits import EditMetrics
    from lmcompose.models.tiny import tiny_model

    folder = write_prompts(tmp_path / "data")
    ctx = Context(edits=load_edits("mquake", seed=None), data_dir=folder)
    out = EditMetrics().compute(tiny_model("llama"), ctx)
    assert out["multi_hop_accuracy"] == 0.0  # a random model answers nothing right


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c["requested_rewrite"][0].update(prompt="no placeholder"), r"requested_rewrite\[0\]\.prompt"),
        (lambda c: c.update(questions=[]), "questions"),
        (lambda c: c.update(new_answer=""), "'new_answer' is empty"),
        (lambda c: c["requested_rewrite"][0]["target_new"].update(str=""), r"requested_rewrite\[0\]\.target_new\.str"),
        (lambda c: c.pop("case_id"), "case_id"),
    ],
)
def test_bad_cases(tmp_path, offline_without_data, mutate, message):
    from lmcompose_mquake.dataset import MQuAKE

    case = json.loads(MQuAKE.sample.read_text())[0]
    mutate(case)
    p = tmp_path / "m.json"
    p.write_text(json.dumps([case]))
    with pytest.raises(DataError, match=message):
        load_edits("mquake", source=p)


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda c: c.pop("answer"), r"missing field 'answer'"),
        (lambda c: c.pop("new_answer"), r"missing field 'new_answer'"),
        (lambda c: c.pop("questions"), r"missing field 'questions'"),
        (lambda c: c["questions"].__setitem__(1, 5), r"field 'questions\[1\]' must be a non-empty string"),
        (lambda c: c.update(new_answer_alias="Ottawa"), r"field 'new_answer_alias' must be a list"),
        (lambda c: c.update(answer_alias=["Paris", None]), r"field 'answer_alias\[1\]' must be a string"),
    ],
)
def test_a_case_without_what_multi_hop_scoring_needs_names_record_and_field(
    tmp_path, offline_without_data, mutate, field
):
    from lmcompose_mquake.dataset import MQuAKE

    cases = json.loads(MQuAKE.sample.read_text())
    mutate(cases[1])
    p = tmp_path / "m.json"
    p.write_text(json.dumps(cases))
    with pytest.raises(DataError, match=r"record 1 \(case_id 2\): " + field) as err:
        load_edits("mquake", source=p)
    assert str(err.value).count("\n") == 0


def test_the_data_folder_serves_the_cf_3k_subset_before_mquake_hard(shared_data, monkeypatch):
    """Published MQuAKE numbers are on MQuAKE-CF-3k: AKEW's subset of it comes before the
    harder MQuAKE-hard when the folder holds no CF-3k file."""
    from lmcompose_mquake.dataset import MQuAKE

    monkeypatch.setenv("LMCOMPOSE_DATA_DIR", str(shared_data))
    ds = MQuAKE()
    recs = ds.load(seed=None)
    assert ds.source_used.endswith("mquake/AKEW-MQuAKE-CF.json") and len(by_case(recs)) == 354
