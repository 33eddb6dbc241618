"""Locality as preservation (EasyEdit's: the neighbour prompts' answer-position argmaxes
unchanged from the unedited model), the renamed neighbour-knowledge scores, the base-model
reference stored in the run folder and read back by a resume and by a Ray task, and the NLL
of unedited facts (the control of Figure 5)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from lmcompose.api import Context, EditRecord, References
from lmcompose.compose import compose, load_edits, load_unedited
from lmcompose.errors import ConfigError
from lmcompose.metrics.edits import REFERENCE_KIND, EditMetrics, Scorer
from lmcompose.models.tiny import tiny_model
from lmcompose.protocols import get_protocol
from lmcompose.results import read_rows
from lmcompose.studies import Study
from lmcompose.studies.runner import StudyWork, run_study

from tests.test_study import numbers, quick, sample

NEIGHBOURS = [
    ("Madrid is the capital city of", "the Kingdom of Spain"),
    ("Lisbon lies in", "Portugal"),
    ("The river town of Oxford lies on the banks of the", "Thames"),
]


def records() -> list[EditRecord]:
    return [
        EditRecord(
            "a",
            "Madrid",
            "Madrid is the capital of",
            "Italy",
            "Spain",
            locality=[{"prompt": p, "answer": a} for p, a in NEIGHBOURS],
        )
    ]


def by_hand(lm, pairs) -> tuple[list[list[int]], list[list[int]]]:
    """Per pair, the argmaxes at its answer positions and at every position of prompt + answer
    (one unpadded forward pass each)."""
    sc = Scorer(lm, 1)
    answer, every = [], []
    with torch.no_grad():
        for p, a in pairs:
            pi, ti = sc.encode(p, a)
            argmax = lm.model(torch.tensor([pi + ti])).logits[0, :-1].argmax(-1).tolist()
            answer.append(argmax[len(pi) - 1 :])
            every.append(argmax)
    return answer, every


def share(post: list[list[int]], base: list[list[int]]) -> float:
    per = [sum(a == b for a, b in zip(x, y, strict=True)) / len(x) for x, y in zip(post, base, strict=True)]
    return sum(per) / len(per)


def test_preservation_compares_the_answer_positions_with_the_unedited_model():
    lm = tiny_model("llama", seed=1)
    ctx = Context(edits=records())
    metric = EditMetrics()
    metric.reference(lm, ctx)
    out = metric.compute(lm, ctx)
    assert out["locality"] == out["locality_preservation"] == 1.0 and out["locality_scorer"] == "preservation"
    base_answer, base_every = by_hand(lm, NEIGHBOURS)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():  # seeded noise on every projection, a third of each weight's spread
        for name, _ in lm.linear_layers():
            w = lm.weight(name)
            w.add_(0.3 * w.std() * torch.randn(w.shape, generator=noise))
    moved = metric.compute(lm, ctx)["locality_preservation"]
    post_answer, post_every = by_hand(lm, NEIGHBOURS)
    assert moved == pytest.approx(share(post_answer, base_answer))
    assert 0.0 < moved < 1.0
    # counting the prompt's positions too (the earlier drift) gives another number
    assert share(post_every, base_every) != pytest.approx(moved)


def test_an_edit_that_moves_a_neighbour_argmax_lowers_preservation():
    rows = compose(
        tiny_model("llama", seed=4),
        ["ft:steps=30,lr=0.05,norm_constraint=0"],
        edits=records(),
        metrics=["edit"],
    )
    base, edited = rows
    assert base["locality_preservation"] == 1.0 and edited["edit_success"] == 1.0
    assert edited["locality"] == edited["locality_preservation"] < 1.0
    # what the model knows of the neighbours is another key (scored on request), never locality_f1
    assert edited["neighbour_knowledge"] is None and "locality_f1" not in edited


def test_a_model_without_its_reference_measures_no_preservation():
    ctx = Context(edits=records())
    out = EditMetrics().compute(tiny_model("llama"), ctx)
    assert out["locality_preservation"] is None and out["locality"] is None
    assert any("needs the base model's reference" in n for n in ctx.notes)


def test_locality_scorer_names():
    assert EditMetrics.from_overrides({"locality_scorer": "drift"}).config.locality_scorer == "preservation"
    for old, new in (("f1", "neighbour_knowledge"), ("accuracy", "neighbour_knowledge_accuracy")):
        with pytest.raises(ConfigError, match=f"since lmcompose 0.4 it is '{new}'"):
            EditMetrics.from_overrides({"locality_scorer": old})
    with pytest.raises(ConfigError, match="is not one of preservation, prob"):
        EditMetrics.from_overrides({"locality_scorer": "nope"})


def test_neighbour_knowledge_is_scored_on_request_and_changes_nothing_else(monkeypatch):
    """By default no greedy generation runs on the locality prompts and neighbour_knowledge is
    null; neighbour_knowledge: true scores it, and every other score (per record too) is the
    same either way. locality_scorer neighbour_knowledge (protocol paper) turns it on."""
    lm = tiny_model("llama", seed=2)
    ctx = Context(edits=records())
    EditMetrics().reference(lm, ctx)
    generated: list[list[tuple[str, str]]] = []
    original = Scorer.generate_for

    def spy(self, pairs, forced=None):
        generated.append(list(pairs))
        return original(self, pairs, forced)

    monkeypatch.setattr(Scorer, "generate_for", spy)
    lean = EditMetrics().compute(lm, ctx)
    full = EditMetrics.from_overrides({"neighbour_knowledge": True}).compute(lm, ctx)
    assert not set(NEIGHBOURS) & set(generated[0]) and set(NEIGHBOURS) <= set(generated[1])
    assert lean["neighbour_knowledge"] is None and lean["per_edit"]["neighbour_knowledge"] == [None]
    assert full["neighbour_knowledge"] is not None and full["per_edit"]["neighbour_knowledge"] != [None]
    skip = {"neighbour_knowledge", "per_edit"}
    assert {k: v for k, v in lean.items() if k not in skip} == {k: v for k, v in full.items() if k not in skip}
    assert {k: v for k, v in lean["per_edit"].items() if k != "neighbour_knowledge"} == {
        k: v for k, v in full["per_edit"].items() if k != "neighbour_knowledge"
    }
    paper = EditMetrics.from_overrides({"locality_scorer": "neighbour_knowledge"})
    assert paper.config.neighbour_knowledge is True


def test_the_paper_protocol_scores_locality_as_the_paper_code_did():
    options = get_protocol("paper").options({})
    assert options["edit"] == {"locality_scorer": "neighbour_knowledge"}
    lm = tiny_model("llama")
    ctx = Context(edits=records())
    metric = EditMetrics.from_overrides(options["edit"])
    metric.reference(lm, ctx)
    out = metric.compute(lm, ctx)
    assert out["locality"] == out["neighbour_knowledge"] and out["locality_preservation"] == 1.0
    from lmcompose.report import locality_notes

    assert "locality here is the paper's" in locality_notes([out])[0]
    assert "lmcompose before 0.4" in locality_notes([{"locality": 0.5, "locality_scorer": "f1"}])[0]


def test_unedited_nll_is_the_true_targets_nll_of_the_control_records():
    lm = tiny_model("gpt2", seed=2)
    controls = [
        EditRecord("u1", "Rome", "Rome is the capital of", "Spain", "Italy"),
        EditRecord("u2", "Oslo", "Oslo lies in", "Peru", "Norway"),
        EditRecord("u3", "Lima", "Lima lies in", "Chile", None),  # no true target: not a control
    ]
    out = EditMetrics().compute(lm, Context(edits=records(), unedited=controls))
    sc = Scorer(lm, 1)
    nlls = []
    with torch.no_grad():
        for r in controls[:2]:
            pi, ti = sc.encode(r.prompt, r.target_true)
            logp = torch.log_softmax(lm.model(torch.tensor([pi + ti])).logits[0].float(), -1)
            nlls.append(-float(sum(logp[len(pi) - 1 + j, t] for j, t in enumerate(ti)) / len(ti)))
    assert out["unedited_nll"] == pytest.approx(sum(nlls) / 2, rel=1e-4)
    assert "unedited_nll" not in out["per_edit"]  # they are not edits
    assert EditMetrics().compute(lm, Context(edits=records()))["unedited_nll"] is None


def test_control_records_are_no_replicates_edits_and_as_many_as_its_edits():
    source = sample("counterfact", "counterfact_sample.json")
    batches = [load_edits("counterfact", source, limit=2, seed=3, replicate=r) for r in range(2)]
    controls = load_unedited("counterfact", batches, source, seed=3)
    assert [len(c) for c in controls] == [2, 2]
    edited = {r.prompt for b in batches for r in b}
    chosen = [r.prompt for c in controls for r in c]
    assert not edited & set(chosen) and len(set(chosen)) == 4  # disjoint from the edits and from each other
    assert [[r.case_id for r in c] for c in controls] == [
        [r.case_id for r in c] for c in load_unedited("counterfact", batches, source, seed=3)
    ]
    # 8 of the sample's 10 records edited: the two left are every replicate's controls, said in a note
    ctx = Context()
    big = [load_edits("counterfact", source, limit=4, seed=3, replicate=r) for r in range(2)]
    few = load_unedited("counterfact", big, source, seed=3, ctx=ctx)
    assert [len(c) for c in few] == [2, 2] and {r.prompt for c in few for r in c}.isdisjoint(
        {r.prompt for b in big for r in b}
    )
    assert any("fewer than the edits or shared between replicates" in n for n in ctx.notes)


# -- the reference in the run folder ----------------------------------------------------------


def small(model: str) -> dict:
    return quick(
        model,
        datasets=[{"name": "counterfact", "source": sample("counterfact", "counterfact_sample.json")}],
        compressors=[{"step": "magnitude", "vary": {"sparsity": [0.5]}}],
        replicates=2,
    )


@pytest.fixture(scope="module")
def first(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("loc") / "study"
    result = run_study(Study.from_mapping(small(tiny_folder)), out=out, threads=1)
    return result, read_rows(out / "results.jsonl")


@pytest.fixture
def base_passes(monkeypatch):
    """Forward passes of the model (calls of its token embeddings, which every path through
    the model makes) while references are recorded by an executor or a Ray probe, one count
    per call of record_references."""
    import lmcompose.engine.executor as executor

    real = executor.record_references
    counts: list[int] = []

    def counting(lm, ctx, metrics, batches):
        calls = []
        handle = lm.model.get_input_embeddings().register_forward_pre_hook(lambda *_: calls.append(1))
        try:
            return real(lm, ctx, metrics, batches)
        finally:
            handle.remove()
            counts.append(len(calls))

    monkeypatch.setattr(executor, "record_references", counting)
    return counts


def test_each_batchs_reference_is_stored_once_in_the_run_folder(first):
    result, rows = first
    assert result.complete and result.references == 2  # one pass of the base model per replicate
    files = sorted((result.folder / "references").glob("*.json"))
    assert len(files) == 2
    stored = [json.loads(f.read_text()) for f in files]
    fingerprint = result.folder.joinpath("config.yaml").read_text().split("model_fingerprint: ")[1].split()[0]
    assert {s["kind"] for s in stored} == {REFERENCE_KIND} and {s["model"] for s in stored} == {fingerprint}
    assert all(f.stem == s["key"] for f, s in zip(files, stored, strict=True))
    assert all(r["unedited_nll"] is not None for r in rows)
    assert {r["locality_preservation"] for r in rows if r["position"] == 0} == {1.0}


def test_a_resumed_run_reads_the_stored_reference(first, tiny_folder, tmp_path, base_passes):
    result, rows = first
    out = tmp_path / "resumed"
    shutil.copytree(result.folder, out)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:-5]))  # killed before its last five rows
    again = run_study(Study.from_mapping(small(tiny_folder)), out=out, threads=1, plots=False)
    assert again.complete and again.references == 0 and base_passes == [0]
    redone = read_rows(out / "results.jsonl")[-5:]
    before = {(r["cell"], r["position"]): numbers(r) | {"u": r["unedited_nll"]} for r in rows}
    assert all(before[(r["cell"], r["position"])] == numbers(r) | {"u": r["unedited_nll"]} for r in redone)


def test_a_ray_task_reads_the_stored_reference(first, tiny_folder, base_passes):
    """What the Ray driver does, in this process: the probe computes only the references the
    folder lacks (none), and a task handed them passes the base model no more."""
    from lmcompose.engine.ray_executor import _probe_and_reference, _task
    from lmcompose.engine.run_folder import RunFolder

    result, rows = first
    study = Study.from_mapping(small(tiny_folder))
    work = StudyWork(study.data, study.name, study.device)
    stored = RunFolder(result.folder, study.id, "study").reference_records()
    inputs, _numerics, computed = _probe_and_reference(work, 1, False, {}, set(), None, stored)
    assert computed == {} and base_passes == [0]
    plan = study.plan()
    plan.mark_needed(set())
    task = next(t for t in plan.tasks() if not t.root)
    got = [
        row
        for item in _task(work, task, set(), None, 1, False, inputs["model_fingerprint"], {}, None, stored)
        for row in item["rows"]
    ]
    assert got and base_passes == [0, 0]
    before = {(r["cell"], r["position"]): numbers(r) for r in rows}
    assert all(before[(r["cell"], r["position"])] == numbers(r) for r in got)
    # without the folder's references the probe computes them, once per replicate
    _inputs, _n, fresh = _probe_and_reference(work, 1, False, {}, set(), None, {})
    assert len(fresh) == 2 and base_passes[-1] > 0
    assert {k: r["value"] for k, r in fresh.items()} == {k: r["value"] for k, r in stored.items()}


def test_a_reference_of_another_base_model_is_not_read(tmp_path):
    from lmcompose.engine.run_folder import FolderReferences

    FolderReferences(tmp_path, "model-a").put(REFERENCE_KIND, "d1", [[1, 2]])
    assert FolderReferences(tmp_path, "model-a").get(REFERENCE_KIND, "d1") == [[1, 2]]
    assert FolderReferences(tmp_path, "model-b").get(REFERENCE_KIND, "d1") is None
    assert References("model-a").get(REFERENCE_KIND, "d1") is None  # memory only
    (next(tmp_path.glob("*.json"))).write_text("{not json")
    assert FolderReferences(tmp_path, "model-a").get(REFERENCE_KIND, "d1") is None  # computed again


# -- Figure 5 and its control ----------------------------------------------------------------


def test_figure_5_draws_the_control_and_an_old_folder_says_it_has_none(first, tmp_path):
    from lmcompose.studies.report import write_study_report

    result, rows = first
    md = (result.folder / "report.md").read_text()
    assert (result.folder / "plots" / "fig5_nll.png").read_bytes().startswith(b"\x89PNG")
    assert "Dotted, hollow markers: the control" in md
    old = tmp_path / "old"
    old.mkdir()
    stripped = [{k: v for k, v in r.items() if k != "unedited_nll"} for r in rows]
    (old / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stripped))
    report = write_study_report(old)
    text = (old / "report.md").read_text()
    assert (old / "plots" / "fig5_nll.png").exists() and any(p.name == "fig5_nll.png" for p in report.plots)
    assert "This figure has no control: the rows have no `unedited_nll`" in text
