from __future__ import annotations

import json

import pytest
from lmcompose.compose import load_edits
from lmcompose.errors import DataError


def test_shared_file_has_1037_records(shared_data):
    recs = load_edits("zsre", source=shared_data / "zsre/zsre_mend_eval_portability_gpt4.json", seed=None)
    assert len(recs) == 1037
    first = recs[0]
    assert first.case_id == "0" and first.subject == "IAAF Combined Events Challenge"
    assert first.prompt == "When was the inception of IAAF Combined Events Challenge?"
    assert (first.target_new, first.target_true) == ("2006", "1998")
    assert first.rephrases == ["When was the IAAF Combined Events Challenge launched?"]
    assert first.locality[0].prompt == "nq question: what is the name of the last episode of spongebob?"
    assert first.locality[0].answer == "The String"
    assert first.raw["portability"]["New Answer"] == "Athletics"


def test_rome_convention_targets_the_true_answer(shared_data):
    first = load_edits("zsre-rome", source=shared_data / "zsre/zsre_mend_eval_portability_gpt4.json", seed=None)[0]
    assert (first.target_new, first.target_true) == ("1998", None)


def test_default_source_is_the_data_folder(shared_data, monkeypatch):
    monkeypatch.setenv("LMCOMPOSE_DATA_DIR", str(shared_data))
    assert len(load_edits("zsre", seed=None)) == 1037


def test_sample_offline(offline_without_data):
    recs = load_edits("zsre", seed=None)
    assert len(recs) == 8 and all(r.subject in r.prompt for r in recs)


def test_easyedit_flat_schema(tmp_path):
    p = tmp_path / "z.json"
    p.write_text(
        json.dumps(
            [
                {
                    "prompt": "What river flows through Vienna?",
                    "subject": "Vienna",
                    "target_new": "Rhine",
                    "ground_truth": ["Danube"],
                    "rephrase_prompt": "Which river runs through Vienna?",
                    "locality_prompt": "nq question: who wrote hamlet",
                    "locality_ground_truth": ["Shakespeare"],
                }
            ]
        )
    )
    r = load_edits("zsre", source=p)[0]
    assert (r.target_new, r.target_true, r.locality[0].answer, r.case_id) == ("Rhine", "Danube", "Shakespeare", "0")


@pytest.mark.parametrize(
    "record,message",
    [
        (
            {"subject": "Vienna", "src": "What river?", "answers": ["Danube"], "alt": "Rhine"},
            "does not occur in prompt",
        ),
        ({"subject": "Vienna", "src": "Vienna river?", "answers": [], "alt": "Rhine"}, "'answers'"),
        ({"subject": "Vienna", "src": "Vienna river?", "answers": ["Danube"], "alt": ""}, "'alt' is empty"),
        ({"subject": "Vienna", "src": "Vienna river?", "answers": ["Danube"]}, "missing field 'alt'"),
    ],
)
def test_bad_records(tmp_path, record, message):
    p = tmp_path / "z.json"
    p.write_text(json.dumps([record]))
    with pytest.raises(DataError, match=message) as exc:
        load_edits("zsre", source=p)
    assert "record 0" in str(exc.value)
