from __future__ import annotations

import json

import pytest
from lmcompose.compose import load_edits
from lmcompose.errors import DataError


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


def test_multi_hop_accuracy_runs_on_mquake(offline_without_data):
    from lmcompose.api import Context
    from lmcompose.metrics.edits import EditMetrics
    from lmcompose.models.tiny import tiny_model

    out = EditMetrics().compute(tiny_model("llama"), Context(edits=load_edits("mquake", seed=None)))
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
