"""A, P, OI and MCE (DESIGN §6) against hand-computed values, and criterion normalization."""

from __future__ import annotations

import math

import pytest
from lmcompose.composability import area_metrics, composability, normalized_criterion, trapezoid
from lmcompose.errors import DataError

X = [0.0, 0.5, 1.0]
AB = (1.0, 0.8, 0.4)   # ℓ(A→B)
BA = (1.0, 0.6, 0.2)   # ℓ(B→A)
CAB = (0.9, 0.9, 0.1)  # a third order, for N = 3


def test_trapezoid():
    assert trapezoid([0, 0.5, 1], [0, 1, 0]) == pytest.approx(0.5)
    assert trapezoid([0, 0.25, 1], [1, 1, 1]) == pytest.approx(1.0)
    assert trapezoid([0.3], [0.7]) == pytest.approx(0.7)  # one point: its value


def test_two_orders_by_hand():
    m = area_metrics(X, {"ab": AB, "ba": BA})
    # |diff| = 0, .2, .2 -> .5*(0+.2)/2 + .5*(.2+.2)/2 = .05 + .10
    assert m["A"] == pytest.approx(0.15)
    # max = 1, .8, .4 -> .5*1.8/2 + .5*1.2/2 = .45 + .30; P = 1 - .75
    assert m["P"] == pytest.approx(0.25)
    assert m["OI"] == pytest.approx([0.0, 0.2, 0.2])
    assert m["MCE"] == pytest.approx([0.0, 0.2, 0.6])


def test_three_orders_by_hand():
    m = area_metrics(X, {"ab": AB, "ba": BA, "cab": CAB})
    # max = 1, .9, .4; min = .9, .6, .1; max - min = .1, .3, .3
    assert m["A"] == pytest.approx(0.5 * 0.4 / 2 + 0.5 * 0.6 / 2)  # 0.25
    assert m["P"] == pytest.approx(1 - (0.5 * 1.9 / 2 + 0.5 * 1.3 / 2))  # 0.2
    assert m["OI"] == pytest.approx([0.1, 0.3, 0.3])
    assert m["MCE"] == pytest.approx([0.0, 0.1, 0.6])


def test_uneven_grid():
    m = area_metrics([0.0, 0.2, 1.0], {"ab": (1.0, 1.0, 0.0), "ba": (1.0, 0.5, 0.0)})
    assert m["A"] == pytest.approx(0.2 * 0.5 / 2 + 0.8 * 0.5 / 2)
    assert m["P"] == pytest.approx(1 - (0.2 * 2 / 2 + 0.8 * 1 / 2))


def test_normalized_criteria():
    base = {"perplexity": 20.0, "general_nll": math.log(20.0)}
    assert normalized_criterion("perplexity", {"perplexity": 40.0, "general_nll": math.log(40.0)}, base) == pytest.approx(0.5)
    assert normalized_criterion("perplexity", {"perplexity": 10.0, "general_nll": math.log(10.0)}, base) == 1.0
    assert normalized_criterion("perplexity", {"perplexity": None, "general_nll": None}, base) == 0.0  # inf ppl
    assert normalized_criterion("perplexity", {"perplexity": 40.0}, {"perplexity": 20.0}) == pytest.approx(0.5)
    assert normalized_criterion("edit_success", {"edit_success": 0.7}, base) == 0.7
    assert normalized_criterion("locality", {"locality": 1.2}, base) == 1.0
    assert normalized_criterion("generalization", {}, base) is None


def sweep_rows(curves: dict[tuple[str, ...], list[tuple[float, float]]], values=(0.25, 0.5, 0.75),
               low=0.0, high=1.0) -> list[dict]:
    """Rows of a fake 2-step sweep: ``curves[order]`` gives (edit_success, ppl ratio) at each
    value, per replicate (a list of curves per replicate)."""
    rows = []
    base_nll = 3.0
    for order, reps in curves.items():
        for r, points in enumerate(reps):
            for v, (es, ratio) in zip(values, points, strict=True):
                cell = f"{'>'.join(order)}|{v}|r{r}"
                common = {"sweep": True, "run_id": "t", "cell": cell, "order": list(order), "replicate": r,
                          "strength": v, "strength_normalized": (v - low) / (high - low), "vary": "b.sparsity",
                          "last_position": len(order), "model": "m", "policy": "project"}
                rows.append({**common, "position": 0, "edit_success": 0.0, "general_nll": base_nll, "perplexity": math.exp(base_nll)})
                nll = base_nll - math.log(ratio)
                rows.append({**common, "position": len(order), "edit_success": es, "general_nll": nll,
                             "perplexity": math.exp(nll), "avg_bits": 16 * (1 - v) + v})
    return rows


def test_composability_from_rows_with_replicates():
    rows = sweep_rows({
        ("a", "b"): [list(zip(AB, (1.0, 0.5, 0.25), strict=True)), list(zip(AB, (1.0, 0.5, 0.25), strict=True))],
        ("b", "a"): [list(zip(BA, (1.0, 1.0, 0.5), strict=True)), list(zip(AB, (1.0, 1.0, 0.5), strict=True))],
    })
    c = composability(rows)
    assert c.x == pytest.approx([0.0, 0.5, 1.0])  # 0.25..0.75 rescaled over the sweep
    es = c.criteria["edit_success"]
    assert es.A == pytest.approx([0.15, 0.0])  # replicate 1 has equal curves
    assert es.A_mean == pytest.approx(0.075)
    assert es.A_std == pytest.approx(0.15 / math.sqrt(2))  # sample std of (0.15, 0)
    assert es.P == pytest.approx([0.25, 0.25])
    assert es.per_strength(1, "OI")[0] == pytest.approx(0.1)
    ppl = c.criteria["perplexity"]
    # |diff| = 0, .5, .25 ; max = 1, 1, .5
    assert ppl.A_mean == pytest.approx(0.5 * 0.5 / 2 + 0.5 * 0.75 / 2)
    assert ppl.P_mean == pytest.approx(1 - (0.5 * 2 / 2 + 0.5 * 1.5 / 2))
    assert "generalization" not in c.criteria  # not measured


def test_composability_three_orders_from_rows():
    rows = sweep_rows({o: [list(zip(curve, (1, 1, 1), strict=True))] for o, curve in
                       {("a", "b", "c"): AB, ("b", "a", "c"): BA, ("c", "a", "b"): CAB}.items()})
    es = composability(rows).criteria["edit_success"]
    assert es.A_mean == pytest.approx(0.25) and es.P_mean == pytest.approx(0.2)


def test_average_bits_axis():
    rows = sweep_rows({("a", "b"): [list(zip(AB, (1, 1, 1), strict=True))], ("b", "a"): [list(zip(BA, (1, 1, 1), strict=True))]})
    c = composability(rows, x="avg_bits")
    # bits 12.25, 8.5, 4.75: evenly spaced -> same x as the strength axis
    assert c.x == pytest.approx([0.0, 0.5, 1.0])
    assert c.criteria["edit_success"].A_mean == pytest.approx(0.15)


def test_an_incomplete_replicate_is_left_out_and_said():
    rows = sweep_rows({("a", "b"): [list(zip(AB, (1, 1, 1), strict=True))] * 2,
                       ("b", "a"): [list(zip(BA, (1, 1, 1), strict=True))] * 2})
    rows = [r for r in rows if not (r["replicate"] == 1 and r["order"] == ["b", "a"] and r["strength"] == 0.75 and r["position"] == 2)]
    c = composability(rows)
    assert c.criteria["edit_success"].replicates == [0]
    assert any("incomplete" in n for n in c.notes)


def test_no_sweep_rows_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no sweep rows"):
        composability([{"run_id": "x", "position": 0}])
    with pytest.raises(DataError, match="does not exist"):
        composability(tmp_path / "nothing")
