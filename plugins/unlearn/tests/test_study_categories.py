"""Studies of three categories: unlearners paired with compressors and with editors, both
orders, one plan; the report's E_OF / E_OS tables and heatmaps (the ICLR extension's)."""

from __future__ import annotations

import pytest
from lmcompose.reports.order_effects import order_effect_cells
from lmcompose.reports.study import build_study_report
from lmcompose.results import read_rows
from lmcompose.studies import Study, StudyError
from lmcompose.studies.runner import run_study

MEMIT = "memit:layers=0+1,context_templates=0,stats_samples=8,stats_seqlen=64,v_num_grad_steps=5"
TAIL = "datasets=counterfact,known_only=false"


def three(model: str, facts_dir, **over) -> dict:
    data = {
        "name": "tiny-three",
        "model": model,
        "datasets": [{"name": "counterfact", "source": str(facts_dir / "counterfact" / "counterfact.json")}],
        "editors": [MEMIT],
        "unlearners": [{"step": f"ga:{TAIL}", "vary": {"lr": [1e-4, 1e-3]}}, f"rmu:layer=1,{TAIL}"],
        "compressors": [{"step": "rtn:group_size=32", "vary": {"bits": [8, 4, 3]}}],
        "edits": 2,
        "metrics": ["edit", "perplexity", "avg_bits", "unlearn"],
        "metric_options": {"unlearn": {"datasets": ["counterfact"], "known_only": False}},
        "budgets": {"ppl_tokens": 128, "ppl_seqlen": 64, "calibration_samples": 4, "calibration_seqlen": 32},
    }
    data.update(over)
    return data


def test_unlearners_pair_with_every_compressor_and_with_every_editor_over_their_grid(tiny_folder, facts_dir):
    study = Study.from_mapping(three(tiny_folder, facts_dir))
    entries = {e.label: e for e in study.entries}
    assert list(entries) == ["memit+rtn", "ga+rtn", "rmu+rtn", "memit+ga"]
    assert (entries["ga+rtn"].unlearner, entries["ga+rtn"].compressor, entries["ga+rtn"].editor) == ("ga", "rtn", None)
    assert [s.name for s in entries["memit+ga"].steps] == ["memit", "ga"]
    assert list(entries["memit+ga"].vary.values) == [1e-4, 1e-3] and entries["memit+ga"].family == "unlearn"
    assert all(e.orders == [(0, 1), (1, 0)] for e in study.entries)
    # rows of an unlearner entry say so; the paired editor-compressor rows keep the keys they had
    assert entries["rmu+rtn"].labels["unlearner"] == "rmu" and "unlearner" not in entries["memit+rtn"].labels
    assert study.resolved()["unlearners"] == [
        {"name": "ga", "step": f"ga:{TAIL}"},
        {"name": "rmu", "step": f"rmu:layer=1,{TAIL}"},
    ]
    counts = study.counts()
    # one plan: the rtn models are shared by the three pairs, the edited model by memit's two
    quantized = (counts["study"].states["quantize"], counts["separate_sweeps"].states["quantize"])
    assert quantized == (3 + 3 * 3, 3 * (3 + 3))  # rtn alone once, then after each of memit, ga, rmu
    assert (counts["study"].edits, counts["separate_sweeps"].edits) == (1 + 3 + 2, (1 + 3) + (1 + 2))
    # orders by role: an order for each kind of pair
    one = Study.from_mapping(
        three(
            tiny_folder,
            facts_dir,
            orders=[["editor", "compressor"], ["compressor", "unlearner"], ["unlearner", "editor"]],
        )
    )
    got = {e.label: [tuple(e.steps[i].name for i in o) for o in e.orders] for e in one.entries}
    assert got == {
        "memit+rtn": [("memit", "rtn")],
        "ga+rtn": [("rtn", "ga")],
        "rmu+rtn": [("rtn", "rmu")],
        "memit+ga": [("ga", "memit")],
    }


BAD = [
    (
        {"unlearners": ["rtn"]},
        r"unlearners\[0\]: 'rtn' is a quantize step, not an unlearner \(kind unlearn\); list it under compressors",
    ),
    ({"unlearners": [MEMIT]}, r"unlearners\[0\]: 'memit' is an edit step, not an unlearner.*list it under editors"),
    (
        {"compressors": [{"step": f"ga:{TAIL}", "vary": {"lr": [1e-4]}}]},
        r"compressors\[0\]\.step: 'ga' is an unlearner \(kind unlearn\); list it under unlearners",
    ),
    ({"unlearners": [f"ga:{TAIL}", f"ga:{TAIL}"]}, r"unlearners\[1\]: two unlearners are named 'ga'"),
    (
        {"unlearners": [{"step": f"ga:{TAIL}", "vary": {"lr": [1e-4]}, "grid": 1}]},
        r"unlearners\[0\]: unknown key 'grid'",
    ),
    (
        {"unlearners": [{"step": f"ga:{TAIL}", "vary": {"lrr": [1e-4]}}]},
        r"unlearners\[0\]\.vary: unknown field 'lrr' \(did you mean 'lr'\?\)",
    ),
    (
        {"editors": [], "edits": None, "unlearners": [{"step": f"ga:{TAIL}", "vary": {"lr": [1e-4]}}]},
        r"unlearners\[0\]\.vary: varies the unlearner paired with every editor, and editors is empty",
    ),
    (
        {"orders": [["editor", "compressor"]]},
        r"orders: no order for the unlearner-compressor pairs; add \[unlearner, compressor\]",
    ),
    (
        {
            "unlearners": [f"ga:{TAIL}"],
            "orders": [["editor", "compressor"], ["unlearner", "compressor"], ["editor", "unlearner"]],
        },
        r"orders\[2\]: no entry pairs an editor with an unlearner; remove this order",
    ),
    ({"orders": [["unlearner", "unlearner"]]}, r"orders\[0\]: an order lists editor and compressor once each"),
]


@pytest.mark.parametrize("over,match", BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_three_category_study_is_one_message(tiny_folder, facts_dir, over, match):
    with pytest.raises(StudyError, match=match):
        Study.from_mapping(three(tiny_folder, facts_dir, **over))


def test_a_study_of_unlearners_and_compressors_alone_needs_no_edits(tiny_folder, facts_dir):
    study = Study.from_mapping(three(tiny_folder, facts_dir, editors=[], edits=None, unlearners=[f"ga:{TAIL}"]))
    assert [e.label for e in study.entries] == ["rtn"] and study.entries[0].unlearner == "ga"


def test_a_three_category_study_runs_and_reports_order_effects(tiny_folder, facts_dir, tmp_path):
    data = three(
        tiny_folder,
        facts_dir,
        unlearners=[{"step": f"ga:{TAIL}", "vary": {"lr": [1e-4, 1e-3]}}],
        compressors=[{"step": "rtn:group_size=32", "vary": {"bits": [8, 4, 3]}}],
    )
    result = run_study(Study.from_mapping(data), out=tmp_path / "s", threads=1, data_dir=facts_dir)
    assert result.complete
    rows = read_rows(result.folder / "results.jsonl")
    by_entry = {r["entry"] for r in rows}
    assert by_entry == {"memit+rtn", "ga+rtn", "memit+ga"}
    ga_rtn = [r for r in rows if r["entry"] == "ga+rtn"]
    assert all(r["unlearner"] == "ga" and r["compressor"] == "rtn" and r["editor"] is None for r in ga_rtn)
    assert all(0.0 <= r["forget_accuracy"] <= 1.0 for r in ga_rtn)
    report = build_study_report(result.folder)
    cells = {(c.pair, c.row, c.column): c for c in report.order_effects}
    assert set(cells) == {
        ("editing × compression", "memit", "rtn"),
        ("unlearning × compression", "ga", "rtn"),
        ("editing × unlearning", "memit", "ga"),
    }
    ga = cells[("unlearning × compression", "ga", "rtn")]
    assert (ga.field, ga.value) == ("bits", 4)  # the middle of [8, 4, 3]
    # E_OF is the lower order's forget accuracy, E_OS the orders' difference, at 4 bits
    final = {tuple(r["order"]): r for r in ga_rtn if r["strength"] == 4 and r["position"] == 2}
    accs = [final[o]["forget_accuracy"] for o in final]
    assert ga.measures["forget_accuracy"]["E_OF"][0] == pytest.approx(min(accs))
    assert ga.measures["forget_accuracy"]["E_OS"][0] == pytest.approx(max(accs) - min(accs))
    assert order_effect_cells(report.data, report.composability, {"bits": 8})[1].value == 8
    # each category's own criterion only on the pairs that hold it
    assert "edit_success" not in ga.measures and "forget_accuracy" in ga.measures
    edit_rtn = cells[("editing × compression", "memit", "rtn")]
    assert "edit_success" in edit_rtn.measures and "forget_accuracy" not in edit_rtn.measures
    assert {"perplexity", "retain_accuracy"} <= set(edit_rtn.measures) & set(ga.measures)
    md = (result.folder / "report.md").read_text()
    for title in ("editing × compression", "unlearning × compression", "editing × unlearning"):
        assert f"### Order effects at one strength, {title}: counterfact" in md
    plots = {p.name for p in (result.folder / "plots").iterdir()}
    assert {"order_editing___compression_counterfact.png", "order_unlearning___compression_counterfact.png"} <= plots
