"""The lm-eval metric: the bundled task runs offline on the in-memory model, rows carry the
task's metric names, unknown tasks are one message with lm-eval's closest names."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
import torch
from lmcompose.api import Context
from lmcompose.errors import ConfigError
from lmcompose.models.tiny import tiny_model

pytest.importorskip("lm_eval")

from lmcompose_lmeval.metric import LMEval, LMEvalConfig, flatten  # noqa: E402


def test_bundled_task_runs_on_the_model_in_memory():
    lm = tiny_model("llama")
    got = LMEval(LMEvalConfig(limit=8)).compute(lm, Context())
    assert {"lmcompose_facts/acc", "lmcompose_facts/acc_norm", "lmcompose_facts/acc_stderr"} <= set(got)
    assert 0.0 <= got["lmcompose_facts/acc"] <= 1.0
    # every logit zero: each token has probability 1/V, so a choice's log-likelihood is
    # -len(tokens)·log V and lm-eval picks the shortest choice (the first of equals) -- the
    # accuracy that follows is reached only if the metric scores the weights in memory
    with torch.no_grad():
        lm.model.get_output_embeddings().weight.zero_()
    docs = [json.loads(x) for x in (files("lmcompose_lmeval") / "tasks" / "facts.jsonl").read_text().splitlines()[:8]]
    lengths = [[len(lm.tokenizer(" " + c, add_special_tokens=False).input_ids) for c in d["choices"]] for d in docs]
    expected = sum(ls.index(min(ls)) == d["answer"] for ls, d in zip(lengths, docs, strict=True)) / len(docs)
    assert LMEval(LMEvalConfig(limit=8)).compute(lm, Context())["lmcompose_facts/acc"] == pytest.approx(expected)


def test_unknown_task_names_the_closest():
    with pytest.raises(
        ConfigError, match=r"task 'lmcompose_fact' is not in lm-eval's registry \(did you mean 'lmcompose_facts'"
    ):
        LMEval(LMEvalConfig(tasks="lmcompose_fact"))
    with pytest.raises(ConfigError, match="tasks is empty"):
        LMEval(LMEvalConfig(tasks=" , "))
    with pytest.raises(ConfigError, match="include_path '/no/such/tasks' is not a folder of task YAMLs"):
        LMEval(LMEvalConfig(include_path="/no/such/tasks"))


def test_flatten_keeps_the_task_metric_names():
    got = flatten(
        {
            "mmlu": {"alias": "mmlu", "acc,none": 0.5, "acc_stderr,none": 0.01},
            "gsm8k": {"exact_match,strict-match": 0.25, "acc_stderr,none": "N/A"},
        }
    )
    assert got == {"gsm8k/exact_match,strict-match": 0.25, "mmlu/acc": 0.5, "mmlu/acc_stderr": 0.01}


def test_cli_run_with_lmeval_rows_and_a_bad_task(tmp_path):
    from lmcompose_cli.main import app
    from typer.testing import CliRunner

    tiny_model("llama").save(tmp_path / "base")
    (tmp_path / "opts.yaml").write_text("metric_options: {lmeval: {limit: 4}}\n")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "run",
            str(tmp_path / "base"),
            "magnitude:sparsity=0.5",
            "--metrics",
            "lmeval",
            "-c",
            str(tmp_path / "opts.yaml"),
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("lmcompose_facts/acc" in r for r in rows)
    (tmp_path / "bad.yaml").write_text("metric_options: {lmeval: {tasks: mmlu_nope_xyz}}\n")
    res = runner.invoke(
        app,
        [
            "run",
            str(tmp_path / "base"),
            "magnitude",
            "--metrics",
            "lmeval",
            "-c",
            str(tmp_path / "bad.yaml"),
            "--out",
            str(tmp_path / "run2"),
        ],
    )
    assert res.exit_code == 2 and "is not in lm-eval's registry" in res.output
    assert not (tmp_path / "run2").exists()


def test_not_run_unless_named():
    from lmcompose.steps import build_metrics

    assert "lmeval" not in [m.name for m in build_metrics(None, None)]
