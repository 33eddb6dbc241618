"""One driver under run, sweep and study (lmcompose.engine.driver): one run-id recipe, so a
run or sweep started from the CLI resumes from Python and the reverse; sweeps run as shards
(merged like a study's) and on Ray; the committed study folders keep their ids."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from lmcompose.compose import RunSettings, compose, load_edits
from lmcompose.engine.driver import WHERE_KEYS, run_id
from lmcompose.engine.schema import CELL_KEYS, CELL_LAYOUT, LABELS, ROW_KINDS, RUN_LAYOUT, VALUES, row_keys
from lmcompose.models.loading import load_model
from lmcompose.models.tiny import tiny_model
from lmcompose.results import read_rows, read_yaml
from lmcompose.studies import Study
from lmcompose.studies.runner import merge_studies
from lmcompose.sweep import SweepSettings, sweep
from lmcompose_cli.main import app
from typer.testing import CliRunner

REPO = Path(__file__).parent.parent
FAST = ["--ppl-tokens", "128", "--ppl-seqlen", "64", "--metrics", "perplexity,avg_bits"]
FAST_OPTIONS = {"perplexity": {"max_tokens": 128, "seqlen": 64}}
METRICS = ["perplexity", "avg_bits"]
STEPS = ["magnitude:sparsity=0.5", "rtn:bits=4,group_size=32"]
VARY = "magnitude.sparsity=0.25,0.5"


def invoke(*args):
    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    return res


def key(row):
    return (row.get("cell"), row["position"])


def numbers(row):
    return {k: row.get(k) for k in ("perplexity", "avg_bits", "sparsity")}


def drop_last_row(folder: Path) -> dict:
    """Remove the last row of ``folder``'s results.jsonl (as a kill would leave it); return it."""
    lines = (folder / "results.jsonl").read_text().splitlines()
    (folder / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    return json.loads(lines[-1])


def test_one_recipe_leaves_out_where_a_run_happens():
    settings = RunSettings(model="m", steps=["magnitude"])
    assert settings.run_id() == run_id(settings.identity())
    moved = RunSettings(model="m", steps=["magnitude"], out="elsewhere", device="cuda", dtype="float32")
    assert moved.run_id() == settings.run_id()
    assert {"out", "device", "data_dir", "snapshots", "resources"} <= WHERE_KEYS
    # the edits are the run's by their content, not by the settings that load them
    edits = {(None, 0): load_edits("records", limit=2)}
    named = RunSettings(model="m", steps=["magnitude"], dataset="records", edits=2)
    assert named.run_id(edits) == settings.run_id(edits) != settings.run_id()
    other = {(None, 0): load_edits("records", limit=2, seed=1)}
    assert settings.run_id(other) != settings.run_id(edits)


def test_a_run_started_with_the_cli_resumes_from_python_and_the_reverse(tiny_folder, tmp_path):
    cli = tmp_path / "cli"
    invoke("run", tiny_folder, *STEPS, "--dataset", "records", "--edits", "2", "--out", cli, *FAST)
    written = read_rows(cli / "results.jsonl")
    lost = drop_last_row(cli)
    lm = load_model(tiny_folder)
    edits = load_edits("records", limit=2)
    kw = {"edits": edits, "metrics": METRICS, "metric_options": FAST_OPTIONS}
    again = compose(lm, STEPS, out=cli, **kw)
    assert [r["position"] for r in again] == [lost["position"]] and again[0]["run_id"] == written[0]["run_id"]
    assert numbers(again[0]) == numbers(lost)
    assert compose(load_model(tiny_folder), STEPS, out=cli, **kw) == []
    # and the reverse: Python first, the CLI resumes what is left
    py = tmp_path / "py"
    first = compose(load_model(tiny_folder), STEPS, out=py, **kw)
    drop_last_row(py)
    res = invoke("run", tiny_folder, *STEPS, "--dataset", "records", "--edits", "2", "--out", py, *FAST)
    rows = read_rows(py / "results.jsonl")
    assert [r["position"] for r in rows] == [0, 1, 2] and {r["run_id"] for r in rows} == {first[0]["run_id"]}
    assert numbers(rows[-1]) == numbers(first[-1]), res.output
    assert read_yaml(py / "config.yaml")["run_id"] == read_yaml(cli / "config.yaml")["run_id"]


def test_a_sweep_started_with_the_cli_resumes_from_python_and_the_reverse(tiny_folder, tmp_path):
    cli = tmp_path / "cli"
    invoke("sweep", tiny_folder, "magnitude", "rtn", "--vary", VARY, "--out", cli, *FAST, "--no-plots")
    written = read_rows(cli / "results.jsonl")
    lost = drop_last_row(cli)
    kw = {"vary": VARY, "metrics": METRICS, "metric_options": FAST_OPTIONS}
    again = sweep(load_model(tiny_folder), ["magnitude", "rtn"], out=cli, **kw)
    assert [key(r) for r in again] == [key(lost)] and again[0]["run_id"] == written[0]["run_id"]
    assert numbers(again[0]) == numbers(lost)
    assert sweep(load_model(tiny_folder), ["magnitude", "rtn"], out=cli, **kw) == []
    py = tmp_path / "py"
    first = sweep(load_model(tiny_folder), ["magnitude", "rtn"], out=py, **kw)
    lost = drop_last_row(py)
    res = invoke("sweep", tiny_folder, "magnitude", "rtn", "--vary", VARY, "--out", py, *FAST, "--no-plots")
    rows = read_rows(py / "results.jsonl")
    assert len(rows) == len(first) and {r["run_id"] for r in rows} == {first[0]["run_id"]}, res.output
    assert numbers(rows[-1]) == numbers(lost) and key(rows[-1]) == key(lost)


def test_sweep_shards_merge_into_the_sweep_one_run_writes(tiny_folder, tmp_path):
    whole = tmp_path / "whole"
    args = ["sweep", tiny_folder, "magnitude", "rtn", "--vary", VARY, *FAST, "--threads", "1", "--no-plots"]
    invoke(*args, "--out", whole)
    parts = [tmp_path / "s1", tmp_path / "s2"]
    for i, part in enumerate(parts, start=1):
        res = invoke(*args, "--out", part, "--shard", f"{i}/2")
        assert "combine the shard folders with `lmcompose merge`" in res.output
        assert not (part / "report.md").exists()
        assert read_yaml(part / "config.yaml")["shard"] == f"{i}/2"
    one, two = ({key(r) for r in read_rows(p / "results.jsonl")} for p in parts)
    assert one and two and not (one & two)
    res = invoke("merge", *parts, "--out", tmp_path / "merged", "--no-plots")
    assert "Composability" in res.output
    merged = {key(r): numbers(r) for r in read_rows(tmp_path / "merged" / "results.jsonl")}
    assert merged == {key(r): numbers(r) for r in read_rows(whole / "results.jsonl")}
    assert read_yaml(tmp_path / "merged" / "config.yaml")["kind"] == "sweep"
    assert (tmp_path / "merged" / "report.md").read_text().startswith("# Sweep report")
    assert merge_studies(parts, tmp_path / "merged", plots=False)[0] == 0  # merging again adds nothing
    # the Python API cuts the same shards
    lm = load_model(tiny_folder)
    kw = {"vary": VARY, "metrics": METRICS, "metric_options": FAST_OPTIONS, "threads": 1}
    rows = sweep(lm, ["magnitude", "rtn"], out=tmp_path / "py1", shard="1/2", **kw)
    assert {key(r) for r in rows} == one and read_yaml(tmp_path / "py1" / "config.yaml")["shard"] == "1/2"


def test_a_sweep_on_ray_gives_the_rows_of_the_local_executor(tiny_folder, tmp_path):
    pytest.importorskip("ray")
    args = ["sweep", tiny_folder, "magnitude", "rtn", "--vary", VARY, *FAST, "--no-plots"]
    invoke(*args, "--out", tmp_path / "local", "--threads", "1")
    res = invoke(*args, "--out", tmp_path / "ray", "--executor", "ray", "--cpus-per-task", "1")
    local = {key(r): numbers(r) for r in read_rows(tmp_path / "local" / "results.jsonl")}
    rows = read_rows(tmp_path / "ray" / "results.jsonl")
    assert len(rows) == len(local) and {key(r): numbers(r) for r in rows} == local, res.output
    assert read_yaml(tmp_path / "ray" / "config.yaml")["executor"] == "ray"


def test_the_sweep_flags_of_a_study_are_checked_before_anything_is_written(tiny_folder, tmp_path):
    out = tmp_path / "out"
    for extra, message in [
        (["--cpus-per-task", "2"], "are for --executor ray"),
        (["--executor", "dask"], "is not one of local, ray"),
        (["--shard", "3/2"], "I must be between 1 and N"),
    ]:
        res = CliRunner().invoke(
            app, ["sweep", tiny_folder, "magnitude", "--vary", VARY, "--out", str(out), *extra], env={"COLUMNS": "300"}
        )
        assert res.exit_code == 2 and message in res.output, res.output
        assert not out.exists()


@pytest.mark.parametrize("name", ["run", "editors-run"])  # protocol-run: the protocol's fields have changed since
def test_the_committed_study_folders_keep_their_ids(name):
    config = yaml.safe_load((REPO / "docs" / "replication" / name / "config.yaml").read_text())
    assert Study.from_mapping(config["study"], name=config["name"]).id == config["run_id"]


def test_python_sweep_settings_are_the_cli_settings():
    """What the Python door hashes is what the CLI's settings resolve to."""
    cli = SweepSettings(model="m", steps=["magnitude", "rtn"], vary=VARY, metrics=METRICS, metric_options=FAST_OPTIONS)
    same = SweepSettings(
        model="m",
        steps=["magnitude", "rtn"],
        vary=VARY,
        orders=[["magnitude", "rtn"], ["rtn", "magnitude"]],
        metrics=METRICS,
        metric_options=FAST_OPTIONS,
        calibration_samples=128,
        snapshots="disk",
    )
    assert cli.run_id() == same.run_id()


def documented_row_keys() -> dict[str, set[str]]:
    """docs/sweeps.md's table of row keys: key -> the kinds of row (run, sweep, study) it is in."""
    text = (REPO / "docs" / "sweeps.md").read_text()
    section = text.split("### The rows of results.jsonl", 1)[1].split("\n### ", 1)[0]
    out: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([a-z_]+)`", cells[0]):
            out[name] = {k.strip() for k in cells[1].split(",")}
    return out


def test_the_docs_describe_the_row_schema():
    documented = documented_row_keys()
    assert documented, "docs/sweeps.md has no table of row keys"
    for kind in ROW_KINDS:
        assert {k for k, kinds in documented.items() if kind in kinds} == set(row_keys(kind)), kind


def test_the_key_order_of_each_row_shape_holds_its_types_keys():
    assert set(RUN_LAYOUT) - {VALUES} | {"eval_s"} == row_keys("run", required=True)
    assert set(CELL_LAYOUT) - {LABELS, VALUES} | {"eval_s"} == row_keys("sweep", required=True)


def test_every_row_holds_its_schemas_keys(tmp_path):
    lm = tiny_model("llama")
    kw = {"metrics": ["avg_bits"]}
    run_rows = compose(lm, ["magnitude:sparsity=0.5"], **kw)
    sweep_rows = sweep(tiny_model("llama"), ["magnitude"], vary="magnitude.sparsity=0.25,0.5", **kw)
    for kind, rows in (("run", run_rows), ("sweep", sweep_rows)):
        for row in rows:
            assert row_keys(kind, required=True) <= set(row), (kind, row_keys(kind, required=True) - set(row))
    assert not CELL_KEYS & set(run_rows[0]) and CELL_KEYS - {"topk"} <= set(sweep_rows[0])
