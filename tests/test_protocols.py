"""Protocols: ``protocol: paper`` sets the paper's choices in one place; what a user writes wins."""

from __future__ import annotations

import pytest
import yaml
from lmcompose.compose import RunSettings
from lmcompose.engine.policy import rerun_after
from lmcompose.errors import UsageError
from lmcompose.protocols import MODEL_SEQLEN, get_protocol
from lmcompose.steps import build_intervention, parse_step
from lmcompose.studies import Study
from lmcompose.sweep import SweepSettings
from lmcompose_cli.main import app
from typer.testing import CliRunner


def test_paper_fills_the_fields_a_step_leaves_unset():
    s = RunSettings(
        model="m",
        steps=["gptq:bits=3,symmetric=false", "memit", "awq:bits=4", "wanda"],
        metric_options={"perplexity": {"max_tokens": 4096}},
        protocol="paper",
    ).with_protocol()
    assert s.steps == [
        "gptq:bits=3,symmetric=false,act_order=true,true_sequential=true",  # written wins
        "memit:stats_from=base",
        "awq:bits=4,recompress=false,clip_qk=false",
        "wanda",
    ]
    assert s.policy == "recompress"
    assert s.metric_options["perplexity"] == {"max_tokens": 4096, "seqlen": MODEL_SEQLEN}  # given option wins
    s.validate()  # every filled field is a real field of its step
    assert s.resolved()["protocol"] == "paper"


def test_the_default_protocol_changes_nothing_and_keeps_old_run_ids():
    s = RunSettings(model="m", steps=["gptq"])
    assert s.with_protocol() is s and "protocol" not in s.resolved()
    assert RunSettings(model="m", steps=["gptq"], protocol="paper").run_id() != s.run_id()


def test_a_varied_field_is_left_to_the_sweep():
    paper = get_protocol("paper")
    assert paper.steps(["gptq"], varied=[("gptq", "act_order")]) == ["gptq:symmetric=true,true_sequential=true"]
    s = SweepSettings(model="m", steps=["awq", "memit"], vary="awq.n_grid=10,20", protocol="paper").with_protocol()
    assert s.steps == ["awq:recompress=false,clip_qk=false", "memit:stats_from=base"]
    assert s.varied_fields() == [("awq", "n_grid")]
    s.validate()
    assert s.cell_count() == 2 * 2


def test_awq_is_not_reapplied_under_the_papers_recompress():
    awq = build_intervention(parse_step("awq:recompress=false"))
    gptq = build_intervention(parse_step("gptq"))
    memit = build_intervention(parse_step("memit"))
    kinds = [awq.kind, memit.kind]
    assert rerun_after(kinds, [awq.reruns_on_recompress(), memit.reruns_on_recompress()], "recompress") == []
    assert rerun_after([gptq.kind, memit.kind], [gptq.reruns_on_recompress(), False], "recompress") == [0]
    assert build_intervention(parse_step("awq")).reruns_on_recompress()  # the default re-runs it


def test_a_study_takes_the_protocol():
    base = {
        "model": "m",
        "datasets": ["records"],
        "editors": ["memit"],
        "edits": 2,
        "compressors": [{"step": "gptq", "vary": {"bits": [8, 4]}}, {"step": "awq", "vary": {"bits": [4]}}],
    }
    plain = Study.from_mapping(base)
    assert Study.from_mapping({**base, "protocol": "default"}).id == plain.id  # old ids stay
    paper = Study.from_mapping({**base, "protocol": "paper", "budgets": {"ppl_tokens": 2048}})
    assert paper.policy == "recompress" and paper.id != plain.id and paper.resolved()["protocol"] == "paper"
    gptq_entry, awq_entry = paper.entries
    assert gptq_entry.steps[0].overrides == {"stats_from": "base"}
    assert gptq_entry.steps[1].overrides == {"symmetric": True, "act_order": True, "true_sequential": True}
    assert awq_entry.steps[1].overrides == {"recompress": False, "clip_qk": False}
    # a budget the file gives wins over the protocol's whole-split perplexity
    assert paper.resolved_metric_options["perplexity"] == {"max_tokens": 2048, "seqlen": MODEL_SEQLEN}
    with pytest.raises(UsageError, match="protocol"):
        Study.from_mapping({**base, "protocol": "papr"})


def test_cli_validate_and_a_bad_protocol(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": "smollm2-135m", "steps": ["gptq:bits=4"], "protocol": "paper"}))
    res = CliRunner().invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 0, res.output
    cfg.write_text(yaml.safe_dump({"model": "smollm2-135m", "steps": ["gptq:bits=4"], "protocol": "papr"}))
    res = CliRunner().invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 2 and "Traceback" not in res.output and "paper" in res.output, res.output
    with pytest.raises(UsageError):
        get_protocol(5)
