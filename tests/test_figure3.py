"""Figure 3 and MQuAKE in a study: every evaluated state records, for one edit's prompt per
dataset, the targets' first-token logit, probability and rank and the top-30 logits; the
study report draws the paper's Figure 3 from them; MQuAKE's multi-hop accuracy reaches the
rows; an index beyond the edits and an older folder are each one clear message."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from lmcompose.api import EditRecord
from lmcompose.engine.executor import TOP_LOGITS, check_topk_edit, topk_next_tokens
from lmcompose.errors import UsageError
from lmcompose.metrics.edits import target_text
from lmcompose.models.tiny import tiny_model
from lmcompose.results import read_rows
from lmcompose.studies import Study, StudyError
from lmcompose.studies.report import write_study_report
from lmcompose.studies.runner import run_study
from lmcompose.testing import sample_file as sample

MEMIT = "memit:layers=0+1,context_templates=0,stats_samples=8,stats_seqlen=64,v_num_grad_steps=5"
STANDARD = "Q: What is the capital of France? A: Paris\nQ: Who wrote Hamlet? A: William Shakespeare"


def test_the_record_gives_each_targets_first_token_logit_probability_and_rank():
    lm = tiny_model("llama")
    prompt = "The capital of France is"
    rec = topk_next_tokens(lm, prompt, 5, targets={"target_new": "Rome", "target_true": None}, top_logits=30)
    with torch.no_grad():
        logits = lm.model(lm.tokenizer(prompt, return_tensors="pt").input_ids).logits[0, -1].float()
    first = lm.tokenizer(target_text(prompt, "Rome"), add_special_tokens=False).input_ids[0]
    new = rec["targets"]["target_new"]
    assert new["token_id"] == first and new["text"] == "Rome"
    assert new["logit"] == pytest.approx(float(logits[first]))
    assert new["prob"] == pytest.approx(float(torch.softmax(logits, -1)[first]), rel=1e-5)
    assert new["rank"] == 1 + int((logits > logits[first]).sum())
    assert rec["targets"]["target_true"] is None
    top = rec["top_logits"]
    assert len(top["logits"]) == 30 and top["logits"] == sorted(top["logits"], reverse=True)
    assert top["token_ids"][:5] == rec["token_ids"] and top["logits"][0] == pytest.approx(float(logits.max()))
    if new["rank"] <= 30:  # the target among the top 30 sits at its rank
        assert top["token_ids"][new["rank"] - 1] == first or top["logits"][new["rank"] - 1] == new["logit"]


def test_an_index_beyond_the_edits_is_one_message():
    recs = [EditRecord(case_id=str(i), subject="Paris", prompt="Paris is in", target_new="Italy") for i in range(3)]
    check_topk_edit(2, {("counterfact", 0): recs, ("zsre", 0): []})  # a batch without edits needs none
    with pytest.raises(UsageError, match=r"topk_edit 3: counterfact replicate 1 has 3 edits \(indices 0 to 2\)"):
        check_topk_edit(3, {("counterfact", 0): recs + recs, ("counterfact", 1): recs})


def spec(model: str, **over) -> dict:
    data = {
        "name": "tiny-fig3",
        "model": model,
        "datasets": [
            {"name": "counterfact", "source": sample("counterfact", "counterfact_sample.json")},
            {"name": "mquake", "source": sample("mquake", "mquake_sample.json")},
        ],
        "editors": [MEMIT],
        "compressors": [{"step": "magnitude", "vary": {"sparsity": [0.25, 0.5]}}],
        "replicates": 1,
        "edits": 2,
        "topk_edit": 1,
        "metrics": ["edit", "perplexity", "avg_bits"],
        "budgets": {"ppl_tokens": 128, "ppl_seqlen": 64, "calibration_samples": 4, "calibration_seqlen": 32},
    }
    data.update(over)
    return data


@pytest.fixture(scope="module")
def study_run(tiny_folder, tmp_path_factory):
    """CounterFact and MQuAKE (the plugin's sample cases), MEMIT and magnitude pruning, both
    orders, with MQuAKE's prompts in the data folder."""
    data = tmp_path_factory.mktemp("data")
    (data / "mquake" / "prompts").mkdir(parents=True)
    (data / "mquake" / "prompts" / "multihop-prompts.txt").write_text(STANDARD)
    out = tmp_path_factory.mktemp("study") / "run"
    study = Study.from_mapping(spec(tiny_folder))
    result = run_study(study, out=out, threads=1, data_dir=data)
    return result, read_rows(out / "results.jsonl"), study


def test_mquake_is_a_dataset_of_the_study_with_multi_hop_accuracy_in_every_row(study_run):
    result, rows, study = study_run
    assert not result.missing
    mquake = [r for r in rows if r["dataset"] == "mquake"]
    assert mquake and all(r["multi_hop_accuracy"] is not None for r in mquake)
    assert all(r["multi_hop_accuracy_original"] is not None for r in mquake)
    assert {r["multi_hop_protocol"] for r in mquake} == {"mquake"}
    assert {r["position"] for r in mquake} == {0, 1, 2}
    assert all(r.get("multi_hop_accuracy") is None for r in rows if r["dataset"] == "counterfact")
    assert study.resolved()["topk_edit"] == 1


def test_every_state_records_the_chosen_edits_targets_and_top_30_logits(study_run):
    result, rows, study = study_run
    edits = study.load_edits()
    for r in rows:
        tk = r["topk"]
        chosen = edits[(r["dataset"], 0)][1]
        assert tk["edit_index"] == 1 and tk["case_id"] == chosen.case_id and tk["prompt"] == chosen.prompt
        assert len(tk["tokens"]) == 5 and len(tk["top_logits"]["logits"]) == TOP_LOGITS
        new, true = tk["targets"]["target_new"], tk["targets"]["target_true"]
        assert new["text"] == chosen.target_new and true["text"] == chosen.target_true
        assert new["rank"] >= 1 and 0 <= new["prob"] <= 1
    # MEMIT moves the new target up on the chosen prompt (the dense edited model against the base)
    base = next(r for r in rows if r["dataset"] == "counterfact" and r["position"] == 0)
    edited = next(
        r for r in rows if r["dataset"] == "counterfact" and r["position"] == 1 and r["step"]["kind"] == "edit"
    )
    assert edited["topk"]["targets"]["target_new"]["logit"] != base["topk"]["targets"]["target_new"]["logit"]


def test_the_report_draws_figure_3_per_compressor_and_lists_it(study_run):
    result, _rows, _study = study_run
    folder = result.folder
    assert (folder / "plots" / "fig3_magnitude.png").stat().st_size > 0
    report = (folder / "report.md").read_text()
    assert "![fig3_magnitude](plots/fig3_magnitude.png)" in report and "Fig. 3 (magnitude)" in report
    assert "Figure 3" not in report.split("## Figures")[0]  # nothing it could not draw


def strip(folder, src, change):
    shutil.copytree(src, folder)
    rows = read_rows(folder / "results.jsonl")
    for r in rows:
        change(r)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.rmtree(folder / "plots")
    return folder


def test_an_older_folder_reports_and_says_what_it_cannot_draw(study_run, tmp_path):
    result, _rows, _study = study_run

    def old_topk(r):
        for key in ("targets", "top_logits", "edit_index", "case_id"):
            r["topk"].pop(key)

    old = strip(tmp_path / "old", result.folder, old_topk)
    rep = write_study_report(old)
    assert not (old / "plots" / "fig3_magnitude.png").exists() and (old / "plots" / "fig1_prune.png").exists()
    text = (old / "report.md").read_text()
    assert "Figure 3 (top-30 next-token logits) is not drawn: the rows' top-k records keep the top-k" in text
    assert "written by lmcompose before 0.4" in text and rep.tables

    none = strip(tmp_path / "none", result.folder, lambda r: r.pop("topk"))
    write_study_report(none)
    assert "the rows hold no top-k record (the study ran with topk: 0)" in (none / "report.md").read_text()

    def no_edited_state(r):  # a row lost for one state: its panel is empty, and the report says which
        if r["position"] == 1 and r["step"]["kind"] == "edit" and r["dataset"] == "mquake":
            r["topk"].pop("top_logits")

    partial = strip(tmp_path / "partial", result.folder, no_edited_state)
    write_study_report(partial)
    assert (partial / "plots" / "fig3_magnitude.png").exists()
    assert (
        "Figure 3 for magnitude on mquake (0.5, replicate 0): no row with the top-30 logits for edited (memit)"
        in (partial / "report.md").read_text()
    )


def test_a_missing_prompt_file_stops_the_study_before_anything_is_written(tiny_folder, tmp_path):
    from lmcompose.errors import DataError

    empty = tmp_path / "empty-data"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty-data/mquake/prompts/multihop-prompts.txt, which does not exist"):
        run_study(Study.from_mapping(spec(tiny_folder)), out=tmp_path / "s", threads=1, data_dir=empty)
    assert not (tmp_path / "s").exists()


def test_an_index_beyond_the_edits_stops_the_study_before_the_model_loads(tiny_folder, tmp_path):
    with pytest.raises(UsageError, match=r"topk_edit 9: counterfact replicate 0 has 2 edits \(indices 0 to 1\)"):
        run_study(Study.from_mapping(spec(tiny_folder, topk_edit=9)), out=tmp_path / "s", threads=1)
    assert not (tmp_path / "s" / "results.jsonl").exists()
    with pytest.raises(StudyError, match="topk_edit: picks the prompt of the top-k record, and topk is 0"):
        Study.from_mapping(spec(tiny_folder, topk=0))
    with pytest.raises(StudyError, match="topk_edit: -1 is below 0"):
        Study.from_mapping(spec(tiny_folder, topk_edit=-1))
    assert "topk_edit" not in Study.from_mapping(spec(tiny_folder, topk_edit=0)).resolved()  # ids stay as they were
