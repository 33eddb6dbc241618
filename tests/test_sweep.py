"""Sweeps: cells, reuse of model states, resume after a kill, --vary/--orders parsing."""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field

import pytest
import torch
from lmcompose import Intervention, StrengthKnob, hookimpl
from lmcompose.compose import compose, load_edits
from lmcompose.errors import ConfigError, UnknownNameError, UsageError
from lmcompose.models.tiny import tiny_model
from lmcompose.results import read_rows
from lmcompose.sweep import StepSpec, parse_orders, parse_vary, sweep

FAST = {"perplexity": {"seqlen": 64, "max_tokens": 128}}
METRICS = ["perplexity", "avg_bits", "edit"]
METRIC_KEYS = (
    "perplexity",
    "general_nll",
    "avg_bits",
    "sparsity",
    "edit_success",
    "generalization",
    "locality",
    "edit_nll",
    "locality_drift",
)


@dataclass
class RankOneConfig:
    n_edits: int = field(default=0, metadata={"help": "edits to apply (0 = all of the run's edits)"})
    scale: float = field(default=0.5, metadata={"help": "size of each rank-one update"})


class RankOneEdit(Intervention):
    """A test editor: one seeded rank-one update of the last projection per edit request, so
    the model depends on the replicate's edits (and on nothing else)."""

    name = "rankone"
    kind = "edit"
    Config = RankOneConfig
    strength = StrengthKnob("n_edits", 0, 1000, integer=True)
    calls = 0
    explode_after: int | None = None

    def apply(self, lm, ctx):
        type(self).calls += 1
        if self.explode_after is not None and type(self).calls > self.explode_after:
            raise KeyboardInterrupt("simulated kill")
        records = ctx.edits[: self.config.n_edits or None]
        name = lm.linear_layers()[-1][0]
        with torch.no_grad():
            w = lm.weight(name)
            for r in records:
                g = torch.Generator().manual_seed(int(hashlib.sha1(r.case_id.encode()).hexdigest()[:8], 16))
                w.add_(
                    self.config.scale
                    * torch.randn(w.shape[0], 1, generator=g)
                    @ torch.randn(1, w.shape[1], generator=g)
                )
        return self.report(edits=len(records))


class RankOnePlugin:
    @hookimpl
    def register_interventions(self, register):
        register(RankOneEdit, name="rankone", summary="test editor (kind edit)")


@pytest.fixture(scope="module")
def editor():
    from lmcompose.plugins import register_plugin, unregister_plugin

    register_plugin(RankOnePlugin(), "rankone", "lmcompose-test")
    try:
        yield RankOneEdit
    finally:
        unregister_plugin("rankone")


@pytest.fixture
def calls(editor):
    RankOneEdit.calls = 0
    RankOneEdit.explode_after = None
    yield RankOneEdit
    RankOneEdit.explode_after = None


@pytest.fixture(scope="module")
def full(editor, tmp_path_factory):
    """One sweep shared by the tests that only read it: (rows, edit calls it made)."""
    RankOneEdit.calls = 0
    rows = small_sweep(tmp_path_factory.mktemp("full"))
    return rows, RankOneEdit.calls


def small_sweep(out, **kw):
    kw.setdefault("metric_options", FAST)
    kw.setdefault("metrics", METRICS)
    kw.setdefault("edits", load_edits("records", limit=4, seed=0))
    kw.setdefault("replicates", 2)
    return sweep(tiny_model("llama"), ["rankone", "magnitude"], vary="magnitude.sparsity=0.25,0.75", out=out, **kw)


def numbers(row):
    return {k: row.get(k) for k in METRIC_KEYS} | {"topk": row.get("topk")}


def test_every_cell_matches_an_independent_compose(full):
    rows, _ = full
    # 2 orders x 2 strengths x 2 replicates cells, 3 positions each
    assert len(rows) == 24
    assert len({(r["cell"], r["position"]) for r in rows}) == 24
    edits = load_edits("records", limit=4, seed=0)
    for order in (["rankone", "magnitude:sparsity=0.75"], ["magnitude:sparsity=0.75", "rankone"]):
        ref = compose(tiny_model("llama"), order, edits=edits[2:], metrics=METRICS, metric_options=FAST, replicate=1)
        names = [s.split(":")[0] for s in order]
        got = sorted(
            (r for r in rows if r["order"] == names and r["strength"] == 0.75 and r["replicate"] == 1),
            key=lambda r: r["position"],
        )
        for a, b in zip(ref, got, strict=True):
            for k in METRIC_KEYS:
                assert a.get(k) == pytest.approx(b.get(k), rel=1e-5, abs=1e-6), (order, a["position"], k)


def test_work_is_shared_between_cells(full):
    rows, n_calls = full
    # edit->compress: one edit per replicate (2); compress->edit: one edit per (strength, replicate) (4)
    assert n_calls == 2 + 4
    after_edit = [r for r in rows if r["order"] == ["rankone", "magnitude"] and r["position"] == 1]
    assert {r["shared_by_cells"] for r in after_edit} == {2}  # both strengths
    after_prune = [r for r in rows if r["order"] == ["magnitude", "rankone"] and r["position"] == 1]
    assert {r["shared_by_cells"] for r in after_prune} == {2}  # both replicates
    # the compressed model is shared by replicates: its edit-free metrics are the same
    for s in (0.25, 0.75):
        same = [r["perplexity"] for r in after_prune if r["strength"] == s]
        assert len(same) == 2 and same[0] == same[1]
    # replicates use disjoint edits
    ids = {r["replicate"]: set(r["edit_ids"]) for r in rows}
    assert ids[0].isdisjoint(ids[1])


def test_disk_snapshots_give_the_same_numbers(editor, tmp_path):
    kw = {"replicates": 1, "metrics": ["perplexity", "avg_bits"], "edits": load_edits("records", limit=1)}
    mem = small_sweep(tmp_path / "mem", **kw)
    disk = small_sweep(tmp_path / "disk", snapshots="disk", **kw)
    key = lambda r: (r["cell"], r["position"])  # noqa: E731
    assert [numbers(r) for r in sorted(mem, key=key)] == [numbers(r) for r in sorted(disk, key=key)]
    assert not (tmp_path / "disk" / ".snapshots").exists()


def test_resume_after_a_kill_mid_sweep(full, calls, tmp_path):
    full = {(r["cell"], r["position"]): numbers(r) for r in full[0]}
    RankOneEdit.explode_after = 4
    with pytest.raises(KeyboardInterrupt):
        small_sweep(tmp_path / "killed")
    path = tmp_path / "killed" / "results.jsonl"
    before = read_rows(path)
    assert 0 < len(before) < 24
    with open(path, "a") as f:  # a torn last line, as a kill during a write leaves
        f.write('{"run_id": "x", "cel')
    RankOneEdit.explode_after = None
    RankOneEdit.calls = 0
    again = small_sweep(tmp_path / "killed")
    assert len(before) + len(again) == 24
    rows = read_rows(path)
    keys = [(r["cell"], r["position"]) for r in rows]
    assert len(keys) == len(set(keys)) == 24
    assert {k: numbers(r) for k, r in zip(keys, rows, strict=True)} == full
    assert RankOneEdit.calls < 6  # finished cells were not recomputed
    assert small_sweep(tmp_path / "killed") == []


def test_a_folder_of_another_sweep_is_refused(editor, tmp_path):
    small_sweep(tmp_path, replicates=1, metrics=["avg_bits"])
    with pytest.raises(UsageError, match="another run"):
        sweep(tiny_model("llama"), ["magnitude", "rtn"], vary="rtn.bits=4,8", out=tmp_path, metrics=["avg_bits"])


def test_three_steps_all_orders_and_recompress(editor, tmp_path):
    rows = sweep(
        tiny_model("llama"),
        ["rankone", "magnitude", "rtn:group_size=32"],
        vary="rtn.bits=4,8",
        edits=load_edits("records", limit=2),
        policy="recompress",
        metrics=["avg_bits"],
    )
    orders = {tuple(r["order"]) for r in rows}
    assert len(orders) == 6
    # magnitude before rankone is re-run at the end under recompress
    cell = [r for r in rows if r["order"] == ["magnitude", "rankone", "rtn"] and r["strength"] == 4]
    assert [r["position"] for r in cell] == [0, 1, 2, 3, 4]
    assert cell[-1]["step"]["recompress"] and cell[-1]["last_position"] == 4


def test_parse_vary_and_orders():
    steps = [StepSpec("magnitude"), StepSpec("rtn", {"group_size": "32"})]
    v = parse_vary("rtn.bits=8,4,2", steps)
    assert (v.index, v.field, v.values, v.is_strength) == (1, "bits", (8, 4, 2), True)
    assert parse_orders("all", steps) == [(0, 1), (1, 0)]
    assert parse_orders("rtn,magnitude", steps) == [(1, 0)]
    assert parse_orders([["magnitude", "rtn"]], steps) == [(0, 1)]
    assert len(parse_orders("all", [StepSpec("a"), StepSpec("b"), StepSpec("c")])) == 6


@pytest.mark.parametrize(
    "text,error,match",
    [
        ("rtn.bits", ConfigError, "STEP.FIELD=v1"),
        ("rtnbits=4", ConfigError, "STEP.FIELD=v1"),
        ("rnt.bits=4", UnknownNameError, "Did you mean 'rtn'"),
        ("rtn.bist=4", UnknownNameError, "Did you mean 'bits'"),
        ("rtn.bits=4,,8", ConfigError, "comma-separated"),
        ("rtn.bits=4,99", ConfigError, "out of range"),
        ("rtn.bits=4,four", ConfigError, "not an integer"),
        ("rtn.bits=4,4", ConfigError, "given twice"),
    ],
)
def test_bad_vary(text, error, match):
    with pytest.raises(error, match=match):
        parse_vary(text, [StepSpec("magnitude"), StepSpec("rtn")])


@pytest.mark.parametrize(
    "text,match",
    [
        ("magnitude,rnt", "Did you mean 'rtn'"),
        ("magnitude", "not a permutation"),
        ("magnitude,rtn,rtn", "not a permutation"),
        ("magnitude,rtn;magnitude,rtn", "given twice"),
        (";", "'all' or orders"),
    ],
)
def test_bad_orders(text, match):
    with pytest.raises(UsageError, match=match):
        parse_orders(text, [StepSpec("magnitude"), StepSpec("rtn")])


def test_a_sweep_over_the_cell_cap_is_refused_from_its_sizes_before_a_value_is_built(monkeypatch):
    sweep_module = importlib.import_module("lmcompose.sweep")  # the package's `sweep` is the function

    def never(*args, **kwargs):
        raise AssertionError("a value of a sweep over the cap was built")

    monkeypatch.setattr(sweep_module, "make_vary", never)
    nine = ["magnitude", "rtn", "wanda", "sparsegpt", "gptq", "awq", "memit", "alphaedit", "ft"]
    with pytest.raises(ConfigError, match=r"^orders: this asks for 725,760 cells.*give fewer orders"):
        sweep_module.SweepSettings(model="m", steps=nine, vary="rtn.bits=8,4").validate()
    many = ",".join(str((i + 1) / 100_003) for i in range(100_001))
    with pytest.raises(ConfigError, match=r"^vary: this asks for 200,002 cells.*give fewer values"):
        sweep(tiny_model("llama"), ["magnitude", "rtn"], vary=f"magnitude.sparsity={many}")
    # steps with one name are one order, found without walking the 12! permutations of their places
    assert parse_orders("all", [StepSpec("magnitude")] * 12) == [tuple(range(12))]


def test_public_api_names_are_functions_even_after_importing_their_modules():
    import lmcompose as lc
    import lmcompose.composability
    import lmcompose.compose
    import lmcompose.sweep  # noqa: F401

    assert callable(lc.compose) and callable(lc.sweep) and callable(lc.composability)
    assert lc.sweep.__module__ == "lmcompose.sweep"


def check_per_edit(folder, rows):
    """per_edit.jsonl holds, for every row, one line keyed as the row with the replicate's
    edits, whose scores average to the row's values."""
    from lmcompose.results import read_per_edit

    lines = read_per_edit(folder)
    assert set(lines) == {(r["cell"], r["position"]) for r in rows}
    for r in rows:
        line = lines[(r["cell"], r["position"])]
        assert (line["run_id"], line["replicate"], line["dataset"]) == (r["run_id"], r["replicate"], r.get("dataset"))
        assert line["case_ids"][:50] == r["edit_ids"]
        assert {"edit_success", "generalization", "locality", "edit_nll", "locality_drift"} <= set(line["scores"])
        for key, scores in line["scores"].items():
            got = [s for s in scores if s is not None]
            assert len(scores) == len(line["case_ids"]) and r[key] == (sum(got) / len(got) if got else None), key
    return lines


def test_per_edit_scores_are_written_beside_each_row_and_a_resume_keeps_one_per_row(calls, tmp_path):
    from lmcompose.results import PER_EDIT_FILE

    RankOneEdit.explode_after = 4
    with pytest.raises(KeyboardInterrupt):
        small_sweep(tmp_path / "run")
    assert 0 < len(read_rows(tmp_path / "run" / PER_EDIT_FILE)) == len(read_rows(tmp_path / "run" / "results.jsonl"))
    RankOneEdit.explode_after = None
    small_sweep(tmp_path / "run")
    rows = read_rows(tmp_path / "run" / "results.jsonl")
    lines = check_per_edit(tmp_path / "run", rows)
    assert len(read_rows(tmp_path / "run" / PER_EDIT_FILE)) == len(rows) == 24  # the resume duplicated nothing
    # a kill between a per-edit line and its row: the resume writes both again, the last line wins
    text = (tmp_path / "run" / "results.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "run" / "results.jsonl").write_text("".join(text[:-1]))
    assert len(small_sweep(tmp_path / "run")) == 1
    again = check_per_edit(tmp_path / "run", read_rows(tmp_path / "run" / "results.jsonl"))
    assert len(read_rows(tmp_path / "run" / PER_EDIT_FILE)) == 25
    assert {k: v["scores"] for k, v in again.items()} == {k: v["scores"] for k, v in lines.items()}
