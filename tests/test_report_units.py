"""P ÷ w: P on the paper's [0, 1] scale beside the raw area (issue 42 item 5; docs/sweeps.md),
by hand, and as the sweep report and the study's Table 1 print it with its bootstrap interval."""

from __future__ import annotations

import re

import pytest
from lmcompose.composability import composability, load_sweep, per_width
from lmcompose.intervals import APInterval, APSamples
from lmcompose.report import build_report
from lmcompose.studies.report import build_study_report, load_study_rows

from tests.test_composability import _two_order_rows
from tests.test_intervals import noisy, study, synthetic

NUMBER = r"-?[0-9]+\.[0-9]+"


def test_p_per_width_is_the_paper_p_on_any_axis_by_hand():
    rows = _two_order_rows()  # sparsity .25/.5/.75: compression x = 15 s / 16, evenly spaced
    strength = composability(rows, x="strength")  # x spans [0, 1]: P is already the paper's
    assert strength.width == 1.0
    assert strength.P_normalized("edit_success") == (pytest.approx(0.25), pytest.approx(0.0))
    compression = composability(rows)
    # P = 0.1171875 over [0.234375, 0.703125] (test_the_compression_axis_is_absolute_by_hand)
    assert compression.width == pytest.approx(0.46875)
    assert compression.P_normalized("edit_success")[0] == pytest.approx(0.1171875 / 0.46875)  # = 0.25
    paper = composability(rows, x="paper")  # P = 1.875 over raw bits [4.75, 12.25]: above 1
    assert paper.P_normalized("edit_success")[0] == pytest.approx(1.875 / 7.5)  # = 0.25, in [0, 1]
    assert paper.as_dict()["criteria"]["edit_success"]["P_normalized"] == pytest.approx(0.25)
    assert paper.as_dict()["width"] == pytest.approx(7.5)
    assert compression.P_normalized("generalization") == (None, None)  # not measured


def test_p_per_width_keeps_the_spread_over_replicates_in_proportion():
    rows = _two_order_rows() + [
        {**r, "replicate": 1, "cell": r["cell"].replace("|r0", "|r1"), "edit_success": r["edit_success"] / 2}
        for r in _two_order_rows()
    ]
    c = composability(rows)
    es = c.criteria["edit_success"]
    assert es.P_std > 0
    mean, std = c.P_normalized("edit_success")
    assert mean == pytest.approx(es.P_mean / c.width) and std == pytest.approx(es.P_std / c.width)
    assert 0 <= mean <= 1


def test_per_width_of_a_zero_width_interval_is_none():
    assert per_width(0.3, (0.5, 0.5)) is None and per_width(None, (0.0, 1.0)) is None
    iv = APInterval("edit_success", (0.0, 0.1), (0.2, 0.4), APSamples("edit_success", None, None))  # type: ignore[arg-type]
    assert iv.P_per_width((0.5, 0.5)) is None
    assert iv.P_per_width((0.2, 0.7)) == (pytest.approx(0.4), pytest.approx(0.8))


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(NUMBER, text)]


def test_the_sweep_table_prints_p_per_width_and_its_interval_beside_p():
    rows, lines = synthetic(noisy(20))
    rep = build_report(load_sweep(rows), per_edit=lines)
    table = rep.tables[0]
    assert table.columns[:4] == ["criterion", "A", "P", "P ÷ w"]
    assert "P ÷ w: P divided by the width w of the x interval, in [0, 1]" in table.caption
    comp = rep.composability[table.title.split("x = ")[1].rstrip(")")]
    for row in table.rows:
        name = row[0]
        if name == "perplexity":  # no per-edit scores: the value alone
            assert numbers(row[3]) == pytest.approx([comp.P_normalized(name)[0]], abs=5e-5)
            continue
        iv = rep.intervals[comp.x_axis][name]
        p = numbers(row[2])[0]  # two replicates: mean ± std [lo, hi]
        got, std, lo, hi = numbers(row[3])
        assert got == pytest.approx(comp.criteria[name].P_mean / comp.width, abs=5e-5)
        assert std == pytest.approx(comp.criteria[name].P_std / comp.width, abs=5e-5)
        assert (lo, hi) == (
            pytest.approx(iv.P[0] / comp.width, abs=5e-5),
            pytest.approx(iv.P[1] / comp.width, abs=5e-5),
        )
        assert p == pytest.approx(comp.criteria[name].P_mean, abs=5e-5) and lo <= got <= hi


def test_the_study_table1_cell_is_a_p_and_p_per_width():
    rows, lines = study({"awq": noisy(40), "wanda": noisy(40, seed=3)})
    rep = build_study_report(load_study_rows(rows), per_edit=lines)
    table = rep.tables[0]
    assert table.title.startswith("Table 1") and "Each cell: A / P / P ÷ w" in table.caption
    assert "in [0, 1], the paper's scale" in table.caption
    columns = table.columns
    for row in table.rows:
        key = (row[0], row[1])
        comp = rep.composability[key]
        for name in ("edit_success", "generalization", "locality"):
            cell = row[columns.index(name.replace("_", " "))]
            a_text, p_text, w_text = cell.split(" / ")
            iv = rep.intervals[key][name]
            c = comp.criteria[name]
            assert numbers(p_text)[0] == pytest.approx(c.P_mean, abs=5e-4)
            mean, std, lo, hi = numbers(w_text)  # two replicates: mean ± std [lo, hi]
            assert mean == pytest.approx(c.P_mean / comp.width, abs=5e-4)
            assert std == pytest.approx(c.P_std / comp.width, abs=5e-4)
            assert (lo, hi) == (
                pytest.approx(iv.P[0] / comp.width, abs=5e-4),
                pytest.approx(iv.P[1] / comp.width, abs=5e-4),
            )
            assert 0 <= lo <= mean <= hi <= 1
    common = next(t for t in rep.tables if t.title.startswith("Table 1 on the common interval"))
    assert "Each cell: A / P / P ÷ w." in common.caption and all(
        cell.count(" / ") == 2 for r in common.rows for cell in r[2:5]
    )
