"""A, P, OI and MCE (docs/sweeps.md, the paper's Appendix B) against hand-computed values,
and criterion normalization."""

from __future__ import annotations

import math

import pytest
from lmcompose.composability import area_metrics, composability, normalized_criterion, trapezoid
from lmcompose.errors import DataError

X = [0.0, 0.5, 1.0]
AB = (1.0, 0.8, 0.4)  # ℓ(A→B)
BA = (1.0, 0.6, 0.2)  # ℓ(B→A)
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
    assert normalized_criterion(
        "perplexity", {"perplexity": 40.0, "general_nll": math.log(40.0)}, base
    ) == pytest.approx(0.5)
    assert normalized_criterion("perplexity", {"perplexity": 10.0, "general_nll": math.log(10.0)}, base) == 1.0
    assert normalized_criterion("perplexity", {"perplexity": None, "general_nll": None}, base) == 0.0  # inf ppl
    assert normalized_criterion("perplexity", {"perplexity": 40.0}, {"perplexity": 20.0}) == pytest.approx(0.5)
    assert normalized_criterion("edit_success", {"edit_success": 0.7}, base) == 0.7
    assert normalized_criterion("locality", {"locality": 1.2}, base) == 1.0
    assert normalized_criterion("generalization", {}, base) is None


def sweep_rows(
    curves: dict[tuple[str, ...], list[tuple[float, float]]], values=(0.25, 0.5, 0.75), low=0.0, high=1.0
) -> list[dict]:
    """Rows of a fake 2-step sweep: ``curves[order]`` gives (edit_success, ppl ratio) at each
    value, per replicate (a list of curves per replicate)."""
    rows = []
    base_nll = 3.0
    for order, reps in curves.items():
        for r, points in enumerate(reps):
            for v, (es, ratio) in zip(values, points, strict=True):
                cell = f"{'>'.join(order)}|{v}|r{r}"
                common = {
                    "sweep": True,
                    "run_id": "t",
                    "cell": cell,
                    "order": list(order),
                    "replicate": r,
                    "strength": v,
                    "strength_normalized": (v - low) / (high - low),
                    "vary": "b.sparsity",
                    "last_position": len(order),
                    "model": "m",
                    "policy": "project",
                }
                rows.append(
                    {
                        **common,
                        "position": 0,
                        "edit_success": 0.0,
                        "general_nll": base_nll,
                        "perplexity": math.exp(base_nll),
                        "avg_bits": 16.0,
                    }
                )
                nll = base_nll - math.log(ratio)
                rows.append(
                    {
                        **common,
                        "position": len(order),
                        "edit_success": es,
                        "general_nll": nll,
                        "perplexity": math.exp(nll),
                        "avg_bits": 16 * (1 - v) + v,
                    }
                )
    return rows


def test_composability_from_rows_with_replicates():
    rows = sweep_rows(
        {
            ("a", "b"): [list(zip(AB, (1.0, 0.5, 0.25), strict=True)), list(zip(AB, (1.0, 0.5, 0.25), strict=True))],
            ("b", "a"): [list(zip(BA, (1.0, 1.0, 0.5), strict=True)), list(zip(AB, (1.0, 1.0, 0.5), strict=True))],
        }
    )
    c = composability(rows, x="strength")
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
    rows = sweep_rows(
        {
            o: [list(zip(curve, (1, 1, 1), strict=True))]
            for o, curve in {("a", "b", "c"): AB, ("b", "a", "c"): BA, ("c", "a", "b"): CAB}.items()
        }
    )
    es = composability(rows, x="strength").criteria["edit_success"]
    assert es.A_mean == pytest.approx(0.25) and es.P_mean == pytest.approx(0.2)


def test_average_bits_axis():
    rows = sweep_rows(
        {("a", "b"): [list(zip(AB, (1, 1, 1), strict=True))], ("b", "a"): [list(zip(BA, (1, 1, 1), strict=True))]}
    )
    c = composability(rows, x="avg_bits")
    # bits 12.25, 8.5, 4.75: evenly spaced -> same x as the strength axis
    assert c.x == pytest.approx([0.0, 0.5, 1.0])
    assert c.criteria["edit_success"].A_mean == pytest.approx(0.15)


def test_an_incomplete_replicate_is_left_out_and_said():
    rows = sweep_rows(
        {
            ("a", "b"): [list(zip(AB, (1, 1, 1), strict=True))] * 2,
            ("b", "a"): [list(zip(BA, (1, 1, 1), strict=True))] * 2,
        }
    )
    rows = [
        r
        for r in rows
        if not (r["replicate"] == 1 and r["order"] == ["b", "a"] and r["strength"] == 0.75 and r["position"] == 2)
    ]
    c = composability(rows, x="strength")
    assert c.criteria["edit_success"].replicates == [0]
    assert any("incomplete" in n for n in c.notes)


def test_no_sweep_rows_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no sweep rows"):
        composability([{"run_id": "x", "position": 0}])
    with pytest.raises(DataError, match="does not exist"):
        composability(tmp_path / "nothing")


def _two_order_rows(ab=AB, ba=BA, values=(0.25, 0.5, 0.75)):
    return sweep_rows(
        {
            ("a", "b"): [list(zip(ab, (1,) * len(ab), strict=True))],
            ("b", "a"): [list(zip(ba, (1,) * len(ba), strict=True))],
        },
        values=values,
    )


def test_the_compression_axis_is_absolute_by_hand():
    # avg bits of pruning at sparsity s: 16(1 - s) + s; base 16 -> x = 1 - bits/16 = 15 s / 16
    c = composability(_two_order_rows())  # the default axis when average bits change
    assert c.x_axis == "compression"
    assert c.x == pytest.approx([15 * 0.25 / 16, 15 * 0.5 / 16, 15 * 0.75 / 16])
    assert c.interval == pytest.approx((0.234375, 0.703125))
    es = c.criteria["edit_success"]
    # |diff| = 0, .2, .2 over steps of 0.234375; 1 - max = 0, .2, .6
    assert es.A_mean == pytest.approx(0.234375 * 0.2 / 2 + 0.234375 * 0.4 / 2)  # 0.0703125
    assert es.P_mean == pytest.approx(0.234375 * 0.2 / 2 + 0.234375 * 0.8 / 2)  # 0.1171875


def test_the_paper_mode_integrates_over_raw_average_bits():
    c = composability(_two_order_rows(), x="paper")
    assert c.x == pytest.approx([4.75, 8.5, 12.25])  # ascending bits: the strongest pruning first
    es = c.criteria["edit_success"]
    # at 4.75, 8.5, 12.25 bits: |diff| = .2, .2, 0 and 1 - max = .6, .2, 0 (steps of 3.75 bits)
    assert es.A_mean == pytest.approx(3.75 * 0.4 / 2 + 3.75 * 0.2 / 2)  # 1.125: above 1, as in the paper's Table 1
    assert es.P_mean == pytest.approx(3.75 * 0.8 / 2 + 3.75 * 0.2 / 2)  # 1.875


def test_curves_that_cross():
    ab, ba = (1.0, 0.8, 0.2), (1.0, 0.6, 0.6)  # ab is better at 0.5, worse at 0.75
    c = composability(_two_order_rows(ab, ba), x="strength")
    es = c.criteria["edit_success"]
    # max - min = 0, .2, .4 ; 1 - max = 0, .2, .4 ; x = 0, .5, 1
    assert es.A_mean == pytest.approx(0.5 * 0.2 / 2 + 0.5 * 0.6 / 2)  # 0.2
    assert es.P_mean == pytest.approx(0.5 * 0.2 / 2 + 0.5 * 0.6 / 2)  # 0.2
    assert es.per_strength(2, "OI")[0] == pytest.approx(0.4)


def test_one_strength_gives_oi_and_mce_never_a_and_p():
    c = composability(_two_order_rows(AB[1:2], BA[1:2], values=(0.5,)))
    es = c.criteria["edit_success"]
    assert c.single and es.A_mean is None and es.P_mean is None
    assert es.per_strength(0, "OI")[0] == pytest.approx(0.2) and es.per_strength(0, "MCE")[0] == pytest.approx(0.2)
    assert any("one strength only" in n for n in c.notes)


def test_two_methods_on_different_grids_share_a_common_interval():
    from lmcompose.composability import common_interval

    # method 1 at sparsities .25/.5/.75 (x = .234, .469, .703); method 2 at .4/.8 (x = .375, .75)
    one = composability(_two_order_rows())
    two = composability(_two_order_rows((0.9, 0.5), (0.7, 0.5), values=(0.4, 0.8)))
    shared, interval = common_interval({"one": one, "two": two})
    assert interval == pytest.approx((0.375, 0.703125))
    grid = [0.375, 0.46875, 0.703125]  # both ends and method 1's point inside
    assert shared["one"].x == pytest.approx(grid) and shared["two"].x == pytest.approx(grid)

    def at(x, xs, ys):  # linear interpolation by hand
        for i in range(len(xs) - 1):
            if xs[i] <= x <= xs[i + 1]:
                return ys[i] + (x - xs[i]) / (xs[i + 1] - xs[i]) * (ys[i + 1] - ys[i])

    def areas(xs, ab, ba):
        d = [abs(at(g, xs, ab) - at(g, xs, ba)) for g in grid]
        lost = [1 - max(at(g, xs, ab), at(g, xs, ba)) for g in grid]
        trap = lambda y: sum((grid[i + 1] - grid[i]) * (y[i] + y[i + 1]) / 2 for i in range(2))  # noqa: E731
        return trap(d), trap(lost)

    a1, p1 = areas(one.x, AB, BA)
    a2, p2 = areas(two.x, (0.9, 0.5), (0.7, 0.5))
    assert shared["one"].criteria["edit_success"].A_mean == pytest.approx(a1)
    assert shared["one"].criteria["edit_success"].P_mean == pytest.approx(p1)
    assert shared["two"].criteria["edit_success"].A_mean == pytest.approx(a2)
    assert shared["two"].criteria["edit_success"].P_mean == pytest.approx(p2)
    # intervals that do not overlap have no common interval
    far = composability(_two_order_rows((0.9, 0.5), (0.7, 0.5), values=(0.8, 0.9)))
    near = composability(_two_order_rows((0.9, 0.5), (0.7, 0.5), values=(0.1, 0.2)))
    assert common_interval({"far": far, "near": near}) == ({}, None)
