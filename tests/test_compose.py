from __future__ import annotations

import json

import pytest
import torch
from lmcompose.api import Context, Intervention, Metric
from lmcompose.compose import compose, load_edits
from lmcompose.errors import UsageError
from lmcompose.models.tiny import tiny_model
from lmcompose.results import append_row, read_rows

FAST = {"perplexity": {"seqlen": 64, "max_tokens": 128}, "flops": {"latency_repeats": 0}}


def run(lm, steps, **kw):
    kw.setdefault("metric_options", FAST)
    return compose(lm, steps, **kw)


def test_length_one(tmp_path):
    rows = run(tiny_model("llama"), ["magnitude:sparsity=0.5"], out=tmp_path)
    assert [r["position"] for r in rows] == [0, 1]
    assert rows[0]["step"] is None and rows[1]["step"]["name"] == "magnitude"
    assert rows[1]["strength"] == 0.5 and rows[1]["strength_normalized"] == 0.5
    assert read_rows(tmp_path / "results.jsonl") == json.loads(json.dumps(rows))


def test_length_two_measures_each_criterion_after_each_step():
    rows = run(tiny_model("gpt2"), ["magnitude:sparsity=0.5", "rtn:bits=4,group_size=32"])
    assert [r["avg_bits"] for r in rows] == pytest.approx([16.0, 8.5, 3.5], abs=1e-3)
    assert rows[2]["order"] == ["magnitude", "rtn"]
    assert rows[2]["strength_normalized"] == pytest.approx((8 - 4) / 6)
    assert all(r["policy"] == "project" for r in rows)


def test_length_three_with_edits_and_every_metric():
    edits = load_edits("records", limit=3)
    rows = run(
        tiny_model("llama"),
        ["rtn:bits=8,group_size=32", "magnitude:structure=2:4", "rtn:bits=4,group_size=32"],
        edits=edits,
    )
    assert len(rows) == 4
    for r in rows:
        for key in (
            "perplexity",
            "avg_bits",
            "flops",
            "edit_success",
            "generalization",
            "locality",
            "edit_nll",
            "locality_preservation",
        ):
            assert key in r and r[key] is not None, key
    assert rows[0]["locality_preservation"] == 1.0


class Bump(Intervention):
    """Adds 1 to every decoder projection weight (moves pruned weights off zero)."""

    name = "bump"
    kind = "edit"

    def apply(self, lm, ctx):
        with torch.no_grad():
            for n, _ in lm.linear_layers():
                lm.weight(n).add_(1.0)
        return self.report()


@pytest.mark.parametrize("policy,expect_sparse", [("project", True), ("none", False)])
def test_constraint_policies(policy, expect_sparse):
    lm = tiny_model("llama")
    edits = load_edits("records", limit=2)
    rows = run(lm, ["magnitude:sparsity=0.5", Bump()], edits=edits, policy=policy, metrics=["avg_bits"])
    assert rows[-1]["policy"] == policy
    assert (rows[-1]["sparsity"] == pytest.approx(0.5, abs=1e-3)) is expect_sparse


def test_recompress_reruns_compressors_that_ran_before_an_editor():
    lm = tiny_model("llama")
    rows = run(
        lm,
        ["magnitude:sparsity=0.5", Bump(), "rtn:bits=4"],
        edits=load_edits("records", limit=2),
        policy="recompress",
        metrics=["avg_bits"],
    )
    assert [r["position"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[2]["sparsity"] < 0.01  # no projection in between
    assert rows[4]["step"]["name"] == "magnitude" and rows[4]["step"]["recompress"]
    assert rows[4]["sparsity"] >= 0.5


def test_an_edit_step_without_edits_is_a_usage_error():
    with pytest.raises(UsageError, match="--dataset"):
        run(tiny_model("llama"), [Bump()])


def test_resume_skips_recorded_positions(tmp_path):
    steps = ["magnitude:sparsity=0.3", "rtn:bits=4,group_size=32"]
    first = run(tiny_model("llama"), steps, out=tmp_path, run_id="r1")
    # simulate a kill after position 1: drop the last row and leave a torn line
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:40])
    again = run(tiny_model("llama"), steps, out=tmp_path, run_id="r1")
    assert [r["position"] for r in again] == [2]
    rows = read_rows(path)
    assert [r["position"] for r in rows] == [0, 1, 2]
    assert rows[2]["perplexity"] == pytest.approx(first[2]["perplexity"])
    assert run(tiny_model("llama"), steps, out=tmp_path, run_id="r1") == []


def test_append_row_is_whole_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    append_row(path, {"a": 1, "nan": float("nan")})
    with open(path, "a") as f:
        f.write('{"torn": ')
    append_row(path, {"b": 2})
    assert read_rows(path) == [{"a": 1, "nan": None}, {"b": 2}]


def test_config_yaml_is_fully_resolved(tmp_path):
    import yaml

    run(tiny_model("llama"), ["magnitude:structure=2:4"], out=tmp_path, seed=7)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert cfg["seed"] == 7 and cfg["policy"] == "project"
    assert cfg["steps_resolved"][0]["config"]["sparsity"] == 0.5
    assert len(cfg["model_fingerprint"]) == 32
    assert {"torch", "transformers", "lmcompose", "python"} <= set(cfg["versions"])


class NaNMetric(Metric):
    name = "nan_metric"
    keys = ("nan_value",)

    def compute(self, lm, ctx):
        return {"nan_value": float("nan")}


def test_a_nan_metric_is_flagged_and_stored_as_unknown():
    rows = compose(tiny_model("llama"), ["rtn"], metrics=[NaNMetric()], ctx=Context())
    for row in rows:  # the base model and after rtn: no NaN in the row, a flag naming the value
        assert row["nan_value"] is None and row["nonfinite"] == {"nan_value": "nan"}
