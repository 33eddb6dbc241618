"""Bootstrap intervals of A and P from per-edit scores, and paired comparisons
(lmcompose.intervals; docs/studies.md): the same A and P as composability without
resampling, a case computed by hand, reproducible with the seed, narrower with more edits;
identical methods not distinguishable; reports with and without per-edit scores."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from lmcompose.composability import area_metrics, common_interval, composability, interpolate, load_sweep
from lmcompose.intervals import (
    APSamples,
    MethodScores,
    ReplicateScores,
    area_samples,
    bootstrap_ap,
    bootstrap_p_value,
    compare,
    interpolate_samples,
    intervals_for,
    method_scores,
    percentile_interval,
    resample_indices,
    state_means,
)
from lmcompose.report import build_report, p_width_caption
from lmcompose.studies.report import build_study_report, load_study_rows, render_study_markdown

ROOT = Path(__file__).resolve().parents[1]
VALUES = (0.25, 0.5, 0.75)
ORDERS = (("edit", "prune"), ("prune", "edit"))


def synthetic(
    scores: dict[tuple[str, ...], list[np.ndarray]], values=VALUES, labels: dict | None = None, prefix: str = ""
) -> tuple[list[dict], dict[tuple[str, int], dict]]:
    """Rows and per-edit lines of a fake sweep: ``scores[order][r]`` is a (strengths × edits)
    array of per-edit edit_success (generalization and locality: 1 − it, and a constant 1);
    each row holds the means, as the edit metric writes them."""
    rows, lines = [], {}
    for order, reps in scores.items():
        for r, matrix in enumerate(reps):
            n = matrix.shape[1]
            for v, per_edit in zip(values, matrix, strict=True):
                cell = f"{prefix}{'>'.join(order)}|{v}|r{r}"
                common = {
                    "sweep": True,
                    "run_id": "t",
                    "cell": cell,
                    "order": list(order),
                    "replicate": r,
                    "strength": v,
                    "strength_normalized": v,
                    "vary": "prune.sparsity",
                    "last_position": 2,
                    "model": "m",
                    "policy": "project",
                    **(labels or {}),
                }
                rows.append({**common, "position": 0, "edit_success": 0.0, "avg_bits": 16.0})
                per = {
                    "edit_success": [float(s) for s in per_edit],
                    "generalization": [1.0 - float(s) for s in per_edit],
                    "locality": [1.0] * n,
                }
                rows.append(
                    {
                        **common,
                        "position": 2,
                        **{k: sum(x) / len(x) for k, x in per.items()},
                        "avg_bits": 16 * (1 - v) + v,
                    }
                )
                lines[(cell, 2)] = {
                    "run_id": "t",
                    "cell": cell,
                    "position": 2,
                    "dataset": (labels or {}).get("dataset"),
                    "replicate": r,
                    "case_ids": [f"c{i}" for i in range(n)],
                    "scores": per,
                }
    return rows, lines


def noisy(n: int, replicates: int = 2, seed: int = 1, gap: float = 0.3) -> dict:
    """Per-edit 0/1 scores whose success rate falls with strength, lower by ``gap`` in one order."""
    rng = np.random.default_rng(seed)
    p_first = np.array([0.9, 0.7, 0.5])
    return {
        ORDERS[0]: [(rng.random((3, n)) < p_first[:, None]).astype(float) for _ in range(replicates)],
        ORDERS[1]: [(rng.random((3, n)) < (p_first - gap)[:, None]).astype(float) for _ in range(replicates)],
    }


def test_batched_areas_and_interpolation_are_the_composability_ones():
    rng = np.random.default_rng(0)
    x = [0.1, 0.3, 0.35, 0.8]
    curves = {o: rng.random((4, 50)) for o in ORDERS}
    a, p = area_samples(x, curves)
    for b in range(50):
        m = area_metrics(x, {o: list(c[:, b]) for o, c in curves.items()})
        assert (a[b], p[b]) == (m["A"], m["P"])  # the same terms in the same order: equal, not close
    grid = [0.1, 0.2, 0.35, 0.5, 0.8]
    got = interpolate_samples(x, curves[ORDERS[0]], grid)
    for b in range(50):
        assert list(got[:, b]) == [interpolate(x, list(curves[ORDERS[0]][:, b]), g) for g in grid]


def test_without_resampling_the_bootstrap_gives_the_reported_a_and_p():
    rows, lines = synthetic(noisy(12))
    data = load_sweep(rows)
    comp = composability(data)
    for criterion in ("edit_success", "generalization", "locality"):
        scores, why = method_scores(data, comp, lines, criterion)
        assert why is None
        same = {r: np.arange(12)[None, :] for r in scores.replicates}  # one "resample": every edit once
        got = bootstrap_ap(scores, indices=same)
        assert got.A[0] == pytest.approx(comp.criteria[criterion].A_mean, abs=1e-12)
        assert got.P[0] == pytest.approx(comp.criteria[criterion].P_mean, abs=1e-12)
    # and on a common interval with another method, through the same interpolation
    rows2, lines2 = synthetic(noisy(12, seed=2), values=(0.4, 0.6, 0.8), prefix="two|")
    data2 = load_sweep(rows2)
    comp2 = composability(data2)
    shared, interval = common_interval({"one": comp, "two": comp2})
    assert interval is not None
    scores, _ = method_scores(data, comp, lines, "edit_success")
    got = bootstrap_ap(scores, grid=shared["one"].x, indices={r: np.arange(12)[None, :] for r in (0, 1)})
    assert got.A[0] == pytest.approx(shared["one"].criteria["edit_success"].A_mean, abs=1e-12)
    assert got.P[0] == pytest.approx(shared["one"].criteria["edit_success"].P_mean, abs=1e-12)


def test_a_case_by_hand():
    # one replicate, two edits, x = 0 and 1, two orders:
    #   order 1: edit scores (1, 0) at x=0 and (1, 0) at x=1
    #   order 2: edit scores (1, 1) at x=0 and (0, 1) at x=1
    one = ReplicateScores(
        [(0, "a"), (1, "b")],
        {ORDERS[0]: np.array([[1.0, 0.0], [1.0, 0.0]]), ORDERS[1]: np.array([[1.0, 1.0], [0.0, 1.0]])},
    )
    method = MethodScores("edit_success", [0.0, 1.0], {0: one})
    idx = np.array([[0, 0], [1, 1], [0, 1]])
    got = bootstrap_ap(method, indices={0: idx})
    # resample (0, 0): order 1 = (1, 1), order 2 = (1, 0): OI = (0, 1), best = (1, 1) -> A = 0.5, P = 0
    # resample (1, 1): order 1 = (0, 0), order 2 = (1, 1): OI = (1, 1), best = (1, 1) -> A = 1, P = 0
    # resample (0, 1): order 1 = (.5, .5), order 2 = (1, .5): OI = (.5, 0), best = (1, .5) -> A = .25, P = .25
    assert list(got.A) == [0.5, 1.0, 0.25] and list(got.P) == [0.0, 0.0, 0.25]
    # percentile interval (linear between order statistics): 2.5% and 97.5% of (.25, .5, 1)
    lo, hi = percentile_interval(got.A)
    assert lo == pytest.approx(0.25 + 0.05 * 0.25) and hi == pytest.approx(0.5 + 0.95 * 0.5)


def test_the_interval_holds_the_value_is_reproducible_and_shrinks_with_more_edits():
    def width_and_interval(n, seed=0):
        rows, lines = synthetic(noisy(n))
        data = load_sweep(rows)
        comp = composability(data)
        ivs, notes = intervals_for(data, comp, lines, seed=seed)
        assert not notes and set(ivs) == {"edit_success", "generalization", "locality"}
        return comp, ivs

    comp, ivs = width_and_interval(40)
    for name, iv in ivs.items():
        c = comp.criteria[name]
        assert iv.A[0] <= c.A_mean <= iv.A[1] and iv.P[0] <= c.P_mean <= iv.P[1], name
    assert ivs["edit_success"].A[0] > 0  # the orders differ by 0.3: distinguishable from 0
    assert ivs["locality"].A == (0.0, 0.0) and ivs["locality"].P == (0.0, 0.0)  # every edit scores 1 in both orders
    _, again = width_and_interval(40)
    assert np.array_equal(again["edit_success"].samples.A, ivs["edit_success"].samples.A)  # the seed fixes them
    _, other = width_and_interval(40, seed=1)
    assert not np.array_equal(other["edit_success"].samples.A, ivs["edit_success"].samples.A)
    _, many = width_and_interval(640)
    width = lambda iv: iv.A[1] - iv.A[0]  # noqa: E731
    assert width(many["edit_success"]) < width(ivs["edit_success"]) / 2  # about 1/sqrt(16) as wide


def test_resampled_indices_are_shared_by_every_method_of_a_replicate():
    a, b = resample_indices(7, 5, seed=0, replicate=1), resample_indices(7, 5, seed=0, replicate=1)
    assert a.shape == (5, 7) and np.array_equal(a, b) and a.min() >= 0 and a.max() < 7
    assert not np.array_equal(a, resample_indices(7, 5, seed=0, replicate=0))


def test_state_means_are_paired_means_over_replicates_by_hand():
    """Two states on the same edits: each resample's value is the mean of the drawn edits'
    scores (NaN ones left out), averaged over replicates, and both states draw the same
    edits, so their difference is the mean of the per-edit differences."""
    e = {0: np.array([1.0, 0.0, 1.0, 1.0]), 1: np.array([1.0, 1.0, np.nan, 0.0])}
    ec = {0: np.array([0.0, 0.0, 1.0, 1.0]), 1: np.array([0.0, 1.0, 1.0, 0.0])}
    out = state_means({"E": e, "EC": ec}, resamples=50, seed=3)
    assert out["E"][0] == pytest.approx((0.75 + 2 / 3) / 2)
    assert out["EC"][0] == pytest.approx((0.5 + 0.5) / 2)
    idx = {r: resample_indices(4, 50, 3, r) for r in (0, 1)}
    for name, scores in (("E", e), ("EC", ec)):
        want = np.mean([[np.nanmean(scores[r][row]) for row in idx[r]] for r in (0, 1)], axis=0)
        np.testing.assert_allclose(out[name][1], want, atol=1e-12)
    # paired: edit 0 of replicate 0 is the only one where the states differ there
    d0 = (out["E"][1] - out["EC"][1]) * 2 - [np.nanmean(e[1][row]) - np.nanmean(ec[1][row]) for row in idx[1]]
    np.testing.assert_allclose(d0, [np.mean(row == 0) for row in idx[0]], atol=1e-12)
    # the same seed gives the same samples; another seed other ones
    again = state_means({"E": e, "EC": ec}, resamples=50, seed=3)
    np.testing.assert_array_equal(again["E"][1], out["E"][1])
    assert not np.array_equal(state_means({"E": e}, resamples=50, seed=4)["E"][1], out["E"][1])


def test_state_means_refuse_states_that_do_not_pair():
    with pytest.raises(ValueError, match="replicates"):
        state_means({"E": {0: np.ones(3)}, "EC": {1: np.ones(3)}})
    with pytest.raises(ValueError, match="edits"):
        state_means({"E": {0: np.ones(3)}, "EC": {0: np.ones(4)}})
    assert state_means({}) == {}


def test_identical_methods_differ_by_zero_not_distinguishably():
    rows, lines = synthetic(noisy(30))
    data = load_sweep(rows)
    comp = composability(data)
    scores, _ = method_scores(data, comp, lines, "edit_success")
    one, two = bootstrap_ap(scores), bootstrap_ap(scores)
    c = comp.criteria["edit_success"]
    diffs = compare("awq", "gptq", one, two, {"A": (c.A_mean, c.A_mean), "P": (c.P_mean, c.P_mean)})
    for d in diffs:
        assert d.difference == 0 and d.interval == (0.0, 0.0) and d.p_value == 1.0 and not d.distinguishable
        assert d.clause().endswith("— not distinguishable")
    assert diffs[0].clause() == "A difference 0.000, 95% CI [0.000, 0.000], p = 1 — not distinguishable"


def test_the_p_value():
    assert bootstrap_p_value(np.full(999, 0.1)) == pytest.approx(2 / 1000)  # every resample on one side
    assert bootstrap_p_value(np.zeros(999)) == 1.0
    assert bootstrap_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(2 * 2 / 5)
    d = compare(
        "a",
        "b",
        APSamples("x", np.full(9, 0.2), np.zeros(9)),
        APSamples("x", np.zeros(9), np.zeros(9)),
        {"A": (0.2, 0.0), "P": (0.0, 0.0)},
    )
    assert d[0].distinguishable and "not distinguishable" not in d[0].clause() and d[0].p_value == pytest.approx(0.2)


def test_a_method_without_per_edit_lines_says_why():
    rows, lines = synthetic(noisy(5))
    data = load_sweep(rows)
    comp = composability(data)
    missing = dict(list(lines.items())[1:])
    ivs, notes = intervals_for(data, comp, missing)
    assert ivs == {} and len(notes) == 3 and all("no per-edit scores for the final model" in n for n in notes)
    scores, why = method_scores(data, comp, lines, "perplexity")
    assert scores is None and "no per-edit scores" in why


def test_the_sweep_report_shows_intervals_beside_a_and_p():
    rows, lines = synthetic(noisy(20))
    with_iv = build_report(load_sweep(rows), per_edit=lines)
    table = with_iv.tables[0]
    row = next(r for r in table.rows if r[0] == "edit_success")
    assert row[1].count("[") == 1 and "bootstrap interval" in table.caption
    assert "n.d." in next(r for r in table.rows if r[0] == "locality")[1]  # A = 0 in every resample
    without = build_report(load_sweep(rows))
    assert any("no per-edit scores" in n for n in without.notes)
    plain = next(r for r in without.tables[0].rows if r[0] == "edit_success")
    assert row[1].startswith(plain[1] + " [")


def study(per_entry: dict[str, dict], datasets=("cf",)) -> tuple[list[dict], dict]:
    rows, lines = [], {}
    for ds in datasets:
        for entry, scores in per_entry.items():
            labels = {
                "study": "s",
                "entry": entry,
                "dataset": ds,
                "family": "prune",
                "editor": "memit",
                "compressor": entry,
            }
            r, pe = synthetic(scores, labels=labels, prefix=f"{ds}|{entry}|")
            rows += r
            lines.update(pe)
    return rows, lines


def test_the_study_report_compares_compressors_on_the_same_edits():
    same = noisy(200)
    rows, lines = study({"awq": same, "gptq": same, "wanda": noisy(200, seed=3, gap=0.0)})
    rep = build_study_report(load_study_rows(rows), per_edit=lines)
    assert [(d.first, d.second) for d in rep.comparisons[::6]] == [("awq", "gptq"), ("awq", "wanda"), ("gptq", "wanda")]
    twins = [d for d in rep.comparisons if (d.first, d.second) == ("awq", "gptq")]
    assert len(twins) == 6 and all(d.difference == 0 and not d.distinguishable for d in twins)
    md = render_study_markdown(rep)
    assert "## Comparisons" in md and "### Compressors compared with memit on cf" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("- awq vs gptq on cf") and "edit_success" in ln)
    assert "A difference 0.000, 95% CI [0.000, 0.000], p = 1 — not distinguishable" in line
    # awq's orders differ by 0.3, wanda's not at all: their A differs distinguishably
    a_diff = next(
        d for d in rep.comparisons if (d.first, d.second, d.criterion, d.what) == ("awq", "wanda", "edit_success", "A")
    )
    assert a_diff.difference > 0 and a_diff.distinguishable and a_diff.p_value < 0.01
    table = rep.tables[0]
    # A, P and P ÷ w, each with its interval (P ÷ w's since issue 42: the paper's [0, 1] scale)
    assert "bootstrap interval" in table.caption and all(cell.count("[") == 3 for r in table.rows for cell in r[2:5])


def without_p_per_width(line: str) -> str:
    """A Table 1 line as it was before P ÷ w: each criterion cell's third value dropped."""
    if not line.startswith("| "):
        return line
    return " | ".join(cell.rsplit(" / ", 1)[0] if cell.count(" / ") == 2 else cell for cell in line.split(" | "))


def drop_order_effects(lines: list[str]) -> list[str]:
    """``lines`` of a study report without its order-effect tables (each from its heading to
    the next heading) and heatmaps (the image, its caption and their blank lines)."""
    out: list[str] = []
    skipping = False
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("### Order effects at one strength, "):
            skipping = True
        elif skipping and ln.startswith("#"):
            skipping = False
        if ln.startswith("![order_"):
            i += 4  # the image, a blank line, the caption, a blank line
            continue
        if not skipping:
            out.append(ln)
        i += 1
    return out


@pytest.mark.parametrize("name", ["protocol-run", "run", "editors-run"])
def test_an_old_folder_reports_as_before_plus_the_new_lines(tmp_path, name):
    """A committed run folder (no per_edit.jsonl, no base_format, rows of lmcompose 0.3): its
    report is the committed one plus one note on intervals, one header line on the base
    checkpoint, P ÷ w after each P of Table 1 with a caption saying so, a note that its
    locality is the earlier score (against the neighbours' answers), a note that Figure 3
    cannot be drawn from its top-k records, and a Figure 5 caption saying the figure has no
    control (no unedited_nll) (issue 42); and the order-effect tables and heatmaps of its
    editor-compressor pairs (E_OF / E_OS at one strength, issue 43)."""
    from lmcompose.studies.report import write_study_report

    src = ROOT / "docs" / "replication" / name
    shutil.copytree(src, tmp_path / "run")
    write_study_report(tmp_path / "run")
    committed = (src / "report.md").read_text().splitlines()
    raw = (tmp_path / "run" / "report.md").read_text().splitlines()
    assert "### Order effects at one strength, editing × compression: counterfact" in raw
    rebuilt = drop_order_effects(raw)
    header = [ln for ln in rebuilt if ln.startswith("- base checkpoint:")]
    assert header == [
        "- base checkpoint: not recorded in these rows (written before rows carried `base_format`); the named model "
        "`smollm2-135m` is loaded from a `gguf:Q4_1` checkpoint (docs/models.md)"
    ]
    note = [ln for ln in rebuilt if "no per-edit scores" in ln]
    assert len(note) == 1 and "rerun the study into a new folder" in note[0]
    i = rebuilt.index(note[0])
    rebuilt = rebuilt[:i] + rebuilt[i + 2 :]  # the note and the blank line after it
    rebuilt.remove(header[0])
    locality = [ln for ln in rebuilt if ln.startswith("> note: rows scored locality with f1 (lmcompose before 0.4)")]
    assert len(locality) == 1
    i = rebuilt.index(locality[0])
    rebuilt = rebuilt[:i] + rebuilt[i + 2 :]  # the note and the blank line after it
    fig3 = [ln for ln in rebuilt if ln.startswith("> note: Figure 3 (top-30 next-token logits) is not drawn")]
    assert len(fig3) == 1 and "written by lmcompose before 0.4" in fig3[0]
    i = rebuilt.index(fig3[0])
    rebuilt = rebuilt[:i] + rebuilt[i + 2 :]  # the note and the blank line after it
    fig5 = [ln for ln in rebuilt if ln.startswith("Fig. 5:")]
    assert len(fig5) == 1 and "This figure has no control" in fig5[0]
    rebuilt[rebuilt.index(fig5[0])] = next(ln for ln in committed if ln.startswith("Fig. 5:"))
    captions = [ln for ln in rebuilt if "P ÷ w: P divided by the width w of the x interval, in [0, 1]" in ln]
    assert captions and len(captions) == sum(ln.startswith("### Table 1") for ln in rebuilt)
    tables = [ln for ln in rebuilt if ln.startswith("| ") and ln.count(" / ") >= 8]
    assert tables and all(ln.count(" / ") % 2 == 0 for ln in tables)  # A / P / P ÷ w in each criterion cell
    for ln in captions:  # the caption as it was, the new sentences removed
        rebuilt[rebuilt.index(ln)] = (
            ln.replace("A / P / P ÷ w (mean", "A / P (mean")
            .replace("A and P integrated over each row's own x interval", "integrated over each row's own x interval")
            .replace(" Each cell: A / P / P ÷ w.", "")
            .replace(" " + p_width_caption(), "")
        )
    assert [without_p_per_width(ln) for ln in rebuilt] == committed


def test_order_effects_carry_e_of_and_signed_order_difference_intervals():
    """E_OF / E_OS at the middle strength, with E_OF's interval and the signed difference d
    (the editor first − the compressor first) and its interval: d's point is the mean over
    replicates of the two orders' means; orders 0.3 apart are distinguishable, identical
    orders give d = 0, n.d.; rows without per-edit lines print no interval (issue 38)."""
    from lmcompose.reports.order_effects import order_effect_cells, order_effect_tables

    labels = {"study": "s", "dataset": "cf", "family": "prune", "editor": "edit"}
    apart = noisy(200)
    same_matrix = [(np.random.default_rng(r).random((3, 200)) < 0.6).astype(float) for r in range(2)]
    same = {ORDERS[0]: same_matrix, ORDERS[1]: same_matrix}
    rows, lines = [], {}
    for entry, scores in (("apart", apart), ("same", same)):
        r, pe = synthetic(scores, labels={**labels, "entry": entry, "compressor": "prune"}, prefix=f"cf|{entry}|")
        rows += r
        lines.update(pe)
    rep = build_study_report(load_study_rows(rows), per_edit=lines)
    cells = {c.entry: c for c in order_effect_cells(rep.data, rep.composability, None, lines)}
    got = cells["apart"].intervals["edit_success"]
    want = np.mean([apart[ORDERS[0]][r][1].mean() - apart[ORDERS[1]][r][1].mean() for r in range(2)])
    assert got.d == pytest.approx(want) and got.d_interval[0] <= got.d <= got.d_interval[1]
    assert 0 < got.d_interval[0] and "n.d." not in got.d_text()  # 0.3 apart: the editor first keeps more
    e_of = cells["apart"].measures["edit_success"]["E_OF"][0]
    assert got.e_of[0] <= e_of <= got.e_of[1]
    flat = cells["same"].intervals["edit_success"]
    assert flat.d == 0 and flat.d_interval == (0.0, 0.0) and flat.d_text().endswith("n.d.")
    table = next(t for t in order_effect_tables(list(cells.values())))
    assert "d [a, b] after E_OS" in table.caption
    assert any("; d +0." in cell and "n.d." not in cell for row in table.rows for cell in row)
    plain = order_effect_tables(order_effect_cells(rep.data, rep.composability, None, None))[0]
    assert "d [a, b]" not in plain.caption and not any("; d " in cell for row in plain.rows for cell in row)


def test_an_order_difference_without_scored_edits_prints_a_dash_not_a_verdict():
    """A state with no scored edit at the strength read gives NaN ends: the cell says "–"
    instead of a number that would read as distinguishable (NaN never holds 0)."""
    from lmcompose.reports.order_effects import PairInterval

    nan = float("nan")
    assert percentile_interval(np.array([nan, nan])) == pytest.approx((nan, nan), nan_ok=True)
    blank = PairInterval((nan, nan), nan, (nan, nan))
    assert blank.d_text() == "; d –" and blank.e_of_text() == " [–]"
    assert PairInterval((0.1, 0.3), 0.0, (-0.1, 0.1)).d_text().endswith("n.d.")
